"""The accuracy benchmark's datasets: real images that ship inside registry packages.

Nothing here is downloaded at product run time: the benchmark fetches two pinned
distributions once with ``pip download --no-deps`` into its data folder (default
``~/.cache/miscore-bench``, or ``$MISCORE_BENCH_DATA``) and reuses them afterwards.

- ``nilearn`` (wheel): ``nilearn/datasets/data/`` holds the ICBM 2009a symmetric MNI152
  template, 197x233x189 voxels of 1 mm: a skull-stripped T1 and grey- and white-matter
  probability maps (uint8, 0..255). The wheel has no brain mask and no CSF map.
  Two tasks share the images: ``mni-brain`` (brain extraction: GM+WM probability > 0.5, holes
  filled, largest component) and ``mni-tissue`` (0 background, 1 grey matter, 2 white
  matter: the larger of the two probabilities, background where it is < 0.5). Train: the
  template itself. Test: the same head moved in the scanner (rotated about two axes, shifted
  in world space) and resampled onto a new axis-aligned grid of 1.2x1.2x1.5 mm with another
  field of view: linear for the image, nearest for the labels.
- ``pyradiomics-bhklab`` (sdist): ``data/`` holds five lesion cases (image + label, NRRD):
  brain1, brain2 (brain MR), lung1, lung2 (lung CT) and breast1 (breast MR). Two
  leave-one-out tasks: ``radiomics-brain-mr`` and ``radiomics-lung-ct``, each held-out case
  tested by a model trained on the other one. breast1 has no partner and is left out.
- ``synth``: ``miscore synth`` phantoms, a training set and a test set of another seed.

Every task is written as miscore dataset folders: ``train/`` (msd: imagesTr, labelsTr) and
``test/`` (msd: imagesTs, labelsTs), one pair per fold.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

#: bump when a builder changes what it writes: the folders are then rebuilt
BUILD_VERSION = 1

NILEARN = "nilearn==0.14.1"
PYRADIOMICS = "pyradiomics-bhklab==3.1.4"
MNI_PREFIX = "nilearn/datasets/data/"
MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
RADIOMICS_PREFIX = "pyradiomics_bhklab-3.1.4/data/"
#: leave-one-out groups of the pyradiomics cases: task -> (modality, case names)
RADIOMICS_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "radiomics-brain-mr": ("MR", ("brain1", "brain2")),
    "radiomics-lung-ct": ("CT", ("lung1", "lung2")),
}
RADIOMICS_LEFT_OUT = {"breast1": "the only breast MR case: nothing to train on for it"}

#: how the MNI test head moves: degrees about the world x (left-right) and y
#: (posterior-anterior) axes, about the brain's centroid, then a shift in mm
MOVE_DEGREES = (12.0, -10.0)
MOVE_SHIFT_MM = (7.0, -9.0, 5.0)
TEST_SPACING_MM = (1.2, 1.2, 1.5)
#: margins (mm) of the test field of view around the moved head: low and high side per axis
TEST_MARGIN_MM = ((10.0, 14.0), (22.0, 8.0), (6.0, 18.0))

SYNTH_TRAIN = {"cases": 8, "shape": 64, "classes": 3, "seed": 0}
SYNTH_TEST = {"cases": 4, "shape": 64, "classes": 3, "seed": 1000}


@dataclass
class Fold:
    """One train/predict/score run of a task."""

    name: str
    train: Path
    test: Path


@dataclass
class Task:
    """A dataset of the benchmark: its folds, classes and how its intensities are read.

    Args:
        modality: ``CT`` (the threshold baseline works on raw HU) or ``MR``/other
            (intensities rescaled per image first).
    """

    name: str
    modality: str
    classes: dict[int, str]
    folds: list[Fold]
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["folds"] = [
            {"name": f.name, "train": str(f.train), "test": str(f.test)} for f in self.folds
        ]
        return out


# --- fetching -----------------------------------------------------------------------------


def fetch(requirement: str, cache: Path, sdist: bool = False) -> Path:
    """The wheel (or sdist) of a pinned ``name==version``, downloaded once into ``cache``."""
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_')}-{version}"
    pattern = f"{stem}.tar.gz" if sdist else f"{stem}-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(cache)]
    # only this package from source: ":all:" would also build its build dependencies
    command += ["--no-binary", name] if sdist else ["--only-binary", ":all:"]
    print(f"fetching {requirement} into {cache}", file=sys.stderr)
    result = subprocess.run([*command, requirement], capture_output=True, text=True, check=False)
    found = sorted(cache.glob(pattern))
    if result.returncode != 0 or not found:
        raise RuntimeError(
            f"`{' '.join(command)} {requirement}` failed (exit {result.returncode}):\n"
            f"{result.stderr[-2000:]}"
        )
    return found[0]


def _extract(archive: Path, members: dict[str, Path]) -> None:
    """Copy archive members (path inside -> destination) out of a wheel or a tar.gz."""
    missing = [m for m, dest in members.items() if not dest.is_file()]
    if not missing:
        return
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            for member in missing:
                _write(members[member], wheel.read(member))
        return
    with tarfile.open(archive, "r:gz") as sdist:
        for member in missing:
            handle = sdist.extractfile(member)
            if handle is None:
                raise RuntimeError(f"{archive}: {member} is not a file")
            _write(members[member], handle.read())


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(data)
    partial.replace(path)


def archive_listing(archive: Path, prefix: str) -> list[str]:
    """Names of the files under ``prefix`` in a wheel or sdist (what the package ships)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            names = wheel.namelist()
    else:
        with tarfile.open(archive, "r:gz") as sdist:
            names = [m.name for m in sdist.getmembers() if m.isfile()]
    return sorted(n[len(prefix) :] for n in names if n.startswith(prefix))


# --- geometry -----------------------------------------------------------------------------


def rotation(axis: int, degrees: float) -> npt.NDArray[np.float64]:
    """4x4 rotation about world axis 0, 1 or 2."""
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(4)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def translation(shift: npt.ArrayLike) -> npt.NDArray[np.float64]:
    matrix = np.eye(4)
    matrix[:3, 3] = np.asarray(shift, dtype=np.float64)
    return matrix


def resample(
    array: npt.NDArray[Any],
    source_affine: npt.NDArray[np.float64],
    target_shape: tuple[int, ...],
    target_affine: npt.NDArray[np.float64],
    order: int,
    world_motion: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[Any]:
    """``array`` (3D) seen on another grid through world coordinates.

    Args:
        world_motion: a 4x4 world transform applied to the anatomy first (the head moved):
            target voxel -> world -> undo the motion -> source voxel.
        order: 1 linear (images), 0 nearest (labels); outside the source is 0.
    """
    from scipy import ndimage

    back = np.eye(4) if world_motion is None else np.linalg.inv(world_motion)
    mapping = np.linalg.inv(source_affine) @ back @ target_affine
    out_dtype = np.float32 if order > 0 else array.dtype
    moved: npt.NDArray[Any] = ndimage.affine_transform(
        array,
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=target_shape,
        order=order,
        mode="constant",
        cval=0.0,
        output=out_dtype,
    )
    return moved


def world_box(shape: tuple[int, ...], affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """World bounding box (2x3: low, high corners) of a grid's voxel centres."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape[:3]], indexing="ij"))
    points = corners.reshape(3, -1)
    world = affine[:3, :3] @ points + affine[:3, 3:4]
    return np.stack([world.min(axis=1), world.max(axis=1)])


def boxes_overlap(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> bool:
    return bool(np.all(np.minimum(a[1], b[1]) > np.maximum(a[0], b[0])))


# --- MNI152 (nilearn) ---------------------------------------------------------------------


def _save_nifti(array: npt.NDArray[Any], affine: npt.NDArray[np.float64], path: Path) -> None:
    import nibabel as nib

    image: Any = nib.Nifti1Image(array, affine)  # type: ignore[no-untyped-call]
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def mni_labels(
    gm: npt.NDArray[Any], wm: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Brain mask and tissue labels from the template's probability maps (0..255)."""
    from scipy import ndimage

    grey = gm.astype(np.float32) / 255.0
    white = wm.astype(np.float32) / 255.0
    brain = ndimage.binary_fill_holes((grey + white) > 0.5)
    parts, count = ndimage.label(brain)
    if count > 1:  # a few specks of the probability maps outside the brain
        sizes = np.bincount(parts.ravel())
        sizes[0] = 0
        brain = parts == int(sizes.argmax())
    tissue = np.zeros(grey.shape, np.uint8)
    strongest = np.maximum(grey, white)
    tissue[(strongest >= 0.5) & (grey >= white)] = 1
    tissue[(strongest >= 0.5) & (white > grey)] = 2
    return brain.astype(np.uint8), tissue


def build_mni(cache: Path, root: Path) -> list[Task]:
    """``mni-brain`` and ``mni-tissue``: train on the template, test on the moved head."""
    import nibabel as nib

    wheel = fetch(NILEARN, cache)
    raw = cache / "raw" / wheel.stem
    _extract(wheel, {MNI_PREFIX + f: raw / f for f in MNI_FILES.values()})
    t1_path = raw / MNI_FILES["t1"]
    source = {
        "package": wheel.name,
        "folder": MNI_PREFIX,
        "files_in_package": [
            f for f in archive_listing(wheel, MNI_PREFIX) if "/" not in f and f.endswith(".gz")
        ],
        "used": sorted(MNI_FILES.values()),
    }
    names = {"mni-brain": {0: "background", 1: "brain"}}
    names["mni-tissue"] = {0: "background", 1: "grey matter", 2: "white matter"}
    tasks = [
        Task(
            name,
            "MR",
            classes,
            [Fold("template->moved", root / name / "train", root / name / "test")],
            source,
        )
        for name, classes in names.items()
    ]
    tasks[0].notes.append(
        "label: GM+WM probability > 0.5, holes filled, largest component (the wheel has no "
        "brain mask); the T1 is skull-stripped, so a threshold separates brain from the "
        "remaining CSF and background well"
    )
    tasks[1].notes.append(
        "label: the larger of the GM and WM probabilities, background where it is < 0.5"
    )
    marker = root / "mni.json"
    if _built(marker):
        _add_mni_notes(tasks, json.loads(marker.read_text()))
        return tasks

    t1: Any = nib.load(str(t1_path))
    affine = t1.affine.astype(np.float64)
    image = np.asarray(t1.dataobj)
    gm = np.asarray(nib.load(str(raw / MNI_FILES["gm"])).dataobj)  # type: ignore[attr-defined]
    wm = np.asarray(nib.load(str(raw / MNI_FILES["wm"])).dataobj)  # type: ignore[attr-defined]
    brain, tissue = mni_labels(gm, wm)

    # the motion: rotate about the brain's centroid, then shift
    centre = affine[:3, :3] @ np.argwhere(brain).mean(axis=0) + affine[:3, 3]
    motion = (
        translation(np.asarray(MOVE_SHIFT_MM) + centre)
        @ rotation(0, MOVE_DEGREES[0])
        @ rotation(1, MOVE_DEGREES[1])
        @ translation(-centre)
    )
    # the new grid: axis-aligned, another spacing, a field of view around the moved head
    head = np.argwhere(image > 0)
    head_box = np.stack([head.min(axis=0), head.max(axis=0)])
    corners = np.array(np.meshgrid(*head_box.T, indexing="ij")).reshape(3, -1)
    moved = (motion @ affine @ np.vstack([corners, np.ones(corners.shape[1])]))[:3]
    margin = np.asarray(TEST_MARGIN_MM)
    low = moved.min(axis=1) - margin[:, 0]
    high = moved.max(axis=1) + margin[:, 1]
    spacing = np.asarray(TEST_SPACING_MM)
    shape = tuple(int(n) for n in np.ceil((high - low) / spacing) + 1)
    test_affine = np.diag([*spacing, 1.0])
    test_affine[:3, 3] = low
    test_image = resample(image, affine, shape, test_affine, 1, motion)
    for task, label in zip(tasks, (brain, tissue), strict=True):
        train, test = task.folds[0].train, task.folds[0].test
        shutil.rmtree(train, ignore_errors=True)
        shutil.rmtree(test, ignore_errors=True)
        (train / "imagesTr").mkdir(parents=True)
        shutil.copyfile(t1_path, train / "imagesTr" / "mni152_0000.nii.gz")
        _save_nifti(label, affine, train / "labelsTr" / "mni152.nii.gz")
        _save_nifti(test_image, test_affine, test / "imagesTs" / "mni152-moved_0000.nii.gz")
        moved_label = resample(label, affine, shape, test_affine, 0, motion)
        _save_nifti(moved_label, test_affine, test / "labelsTs" / "mni152-moved.nii.gz")
    facts = {
        "build": BUILD_VERSION,
        "train_shape": list(image.shape),
        "train_spacing_mm": [float(s) for s in t1.header.get_zooms()[:3]],
        "test_shape": list(shape),
        "test_spacing_mm": list(TEST_SPACING_MM),
        "test_origin_mm": [round(float(v), 2) for v in low],
        "rotation_deg_about_x_y": list(MOVE_DEGREES),
        "shift_mm": list(MOVE_SHIFT_MM),
        "rotation_centre_mm": [round(float(v), 2) for v in centre],
    }
    marker.write_text(json.dumps(facts, indent=2) + "\n")
    _add_mni_notes(tasks, facts)
    return tasks


def _add_mni_notes(tasks: list[Task], facts: dict[str, Any]) -> None:
    for task in tasks:
        task.notes.append(
            f"train: the template, {'x'.join(map(str, facts['train_shape']))} voxels of "
            f"{'x'.join(f'{s:g}' for s in facts['train_spacing_mm'])} mm; test: the head "
            f"rotated {facts['rotation_deg_about_x_y'][0]:g} deg about x and "
            f"{facts['rotation_deg_about_x_y'][1]:g} deg about y, shifted "
            f"{facts['shift_mm']} mm, resampled onto {'x'.join(map(str, facts['test_shape']))} "
            f"voxels of {'x'.join(f'{s:g}' for s in facts['test_spacing_mm'])} mm "
            f"(linear image, nearest labels)"
        )


def _built(marker: Path) -> bool:
    if not marker.is_file():
        return False
    try:
        return int(json.loads(marker.read_text()).get("build", -1)) == BUILD_VERSION
    except (OSError, ValueError):
        return False


# --- pyradiomics lesion cases -------------------------------------------------------------


def build_radiomics(cache: Path, root: Path) -> list[Task]:
    """Leave-one-out tasks over the pyradiomics test cases, one per anatomy/modality."""
    sdist = fetch(PYRADIOMICS, cache, sdist=True)
    raw = cache / "raw" / sdist.name.removesuffix(".tar.gz")
    listing = archive_listing(sdist, RADIOMICS_PREFIX)
    cases = sorted({n.rsplit("_", 1)[0] for n in listing if n.endswith("_image.nrrd")})
    wanted = [c for _, group in RADIOMICS_GROUPS.values() for c in group]
    members = {
        f"{RADIOMICS_PREFIX}{case}_{kind}.nrrd": raw / f"{case}_{kind}.nrrd"
        for case in wanted
        for kind in ("image", "label")
    }
    _extract(sdist, members)
    source = {
        "package": sdist.name,
        "folder": RADIOMICS_PREFIX.split("/", 1)[1],
        "files_in_package": [n for n in listing if "/" not in n],
        "cases_in_package": cases,
        "left_out": RADIOMICS_LEFT_OUT,
    }
    tasks = []
    marker = root / "radiomics.json"
    rebuild = not _built(marker)
    for name, (modality, group) in RADIOMICS_GROUPS.items():
        folds = []
        for held_out in group:
            fold = Fold(held_out, root / name / held_out / "train", root / name / held_out / "test")
            folds.append(fold)
            if not rebuild:
                continue
            shutil.rmtree(fold.train.parent, ignore_errors=True)
            for case in group:
                if case == held_out:
                    _copy_case(raw, case, fold.test, "imagesTs", "labelsTs")
                else:
                    _copy_case(raw, case, fold.train, "imagesTr", "labelsTr")
        tasks.append(
            Task(
                name,
                modality,
                {0: "background", 1: "lesion"},
                folds,
                {**source, "used": [f"{c}_{k}.nrrd" for c in group for k in ("image", "label")]},
                [f"leave-one-out over {', '.join(group)} (NRRD, read by the sitk plugin)"],
            )
        )
    if rebuild:
        marker.write_text(json.dumps({"build": BUILD_VERSION}) + "\n")
    return tasks


def _copy_case(raw: Path, case: str, root: Path, images: str, labels: str) -> None:
    (root / images).mkdir(parents=True, exist_ok=True)
    (root / labels).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(raw / f"{case}_image.nrrd", root / images / f"{case}_0000.nrrd")
    shutil.copyfile(raw / f"{case}_label.nrrd", root / labels / f"{case}.nrrd")


# --- synthetic phantoms -------------------------------------------------------------------


def build_synth(root: Path) -> list[Task]:
    """``miscore synth`` training and test sets (different seeds)."""
    folder = root / "synth"
    fold = Fold("seed0->seed1000", folder / "train", folder / "test")
    marker = folder / "synth.json"
    if not _built(marker):
        shutil.rmtree(folder, ignore_errors=True)
        for where, spec in ((fold.train, SYNTH_TRAIN), (fold.test, SYNTH_TEST)):
            size = str(spec["shape"])
            command = [
                sys.executable, "-m", "miscore", "-q", "synth", str(where),
                "--cases", str(spec["cases"]), "--shape", size, size, size,
                "--classes", str(spec["classes"]), "--seed", str(spec["seed"]),
            ]  # fmt: skip
            subprocess.run(command, check=True, capture_output=True)
        marker.write_text(json.dumps({"build": BUILD_VERSION}) + "\n")
    return [
        Task(
            "synth",
            "CT",
            {0: "background", 1: "organ", 2: "tumour"},
            [fold],
            {"generator": "miscore synth", "train": SYNTH_TRAIN, "test": SYNTH_TEST},
            ["synthetic CT-like phantoms: a sanity check, not a measure of real accuracy"],
        )
    ]


def _build_synth(cache: Path, root: Path) -> list[Task]:
    del cache  # nothing to fetch
    return build_synth(root)


#: builder name -> builder (package cache, data root) -> tasks; tasks may share a builder
BUILDERS: dict[str, Callable[[Path, Path], list[Task]]] = {
    "mni": build_mni,
    "radiomics": build_radiomics,
    "synth": _build_synth,
}
TASK_BUILDER = {
    "mni-brain": "mni",
    "mni-tissue": "mni",
    "radiomics-brain-mr": "radiomics",
    "radiomics-lung-ct": "radiomics",
    "synth": "synth",
}


def build_tasks(data: Path, only: list[str] | None = None) -> list[Task]:
    """Fetch, unpack and write every task's folders under ``data`` (reused when present)."""
    wanted = only or list(TASK_BUILDER)
    cache = data / "packages"
    root = data / "datasets"
    tasks: list[Task] = []
    for builder in dict.fromkeys(TASK_BUILDER[name] for name in wanted):
        tasks += [t for t in BUILDERS[builder](cache, root) if t.name in wanted]
    return tasks
