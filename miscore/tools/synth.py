"""Synthetic CT-like phantoms with labels, for demos, tests and tutorials.

A phantom is a body (soft tissue, about 40 HU, in air at -1000 HU) holding an organ-like
ellipsoid (class 1, about 60 HU) and tumour-like blobs inside it (classes 2..K-1, each
brighter or darker than the organ), with Gaussian noise, a smooth multiplicative bias field,
a random anisotropic spacing and, optionally, an oblique orientation. Everything is drawn from
one seed::

    case = phantom_case("case_000", seed=0, shape=(64, 64, 64), classes=3)
    write_dataset("demo", registry, n_cases=10, fmt="nifti", layout="msd", seed=0)

Files are written through the registry's IO components, so any format with a writer works.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from miscore.core.atomic import write_text_atomic
from miscore.core.errors import InputError, PipelineError
from miscore.core.registry import Registry
from miscore.core.volume import Case, Volume

Format = Literal["nifti", "dicom", "png", "sitk"]
SynthLayout = Literal["msd", "cases", "image2d"]

#: file ending per format; dicom writes a series folder
SUFFIXES = {"nifti": ".nii.gz", "png": ".png", "sitk": ".mha", "dicom": ""}
#: the IO component each format is written with
IO_NAMES = {"nifti": "nifti", "png": "image2d", "sitk": "sitk", "dicom": "dicom"}

# soft tissue and a contrast-enhanced organ: far enough apart to learn in minutes on a CPU
AIR_HU, BODY_HU, ORGAN_HU = -1000.0, 20.0, 100.0


def _rotation(rng: np.random.Generator, max_deg: float) -> npt.NDArray[np.float64]:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rotation: npt.NDArray[np.float64] = rz @ ry @ rx
    return rotation


def phantom_affine(
    rng: np.random.Generator, shape: Sequence[int], oblique: bool
) -> npt.NDArray[np.float64]:
    """A random anisotropic grid centred near the world origin; oblique and LPS-stored if asked.

    3D: in-plane spacing 0.6-1.0 mm, slices 1.5-3.0 mm. 2D: 0.5-1.0 mm pixels.
    """
    if len(shape) == 2:
        spacing = np.array([*np.repeat(rng.uniform(0.5, 1.0), 2), 1.0])
    else:
        spacing = np.array([*np.repeat(rng.uniform(0.6, 1.0), 2), rng.uniform(1.5, 3.0)])
    linear = np.diag(spacing)
    if oblique and len(shape) == 3:
        linear = _rotation(rng, 20.0) @ np.diag([-1.0, -1.0, 1.0]) @ linear
    affine = np.eye(4)
    affine[:3, :3] = linear
    centre = (np.array([*shape, 1][:3], float) - 1) / 2
    affine[:3, 3] = -linear @ centre + rng.uniform(-20, 20, size=3)
    if len(shape) == 2:
        affine[2, 3] = 0.0  # a 2D image lies in the plane z = 0
    return affine


def phantom_arrays(
    rng: np.random.Generator, shape: Sequence[int], classes: int
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8]]:
    """The image (HU, int16) and label (uint8) arrays of one phantom, spatial axes only."""
    if classes < 2:
        raise InputError(f"classes: a phantom needs at least 2 classes; got {classes}")
    # coordinates -1..1 along each axis: the phantom fills the grid whatever the spacing
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)
    extent = np.ones(len(shape))

    def ellipsoid(centre: npt.NDArray[np.float64], radii: npt.NDArray[np.float64]) -> Any:
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))

    label = np.zeros(tuple(shape), np.uint8)
    body = ellipsoid(np.zeros(len(shape)), extent * rng.uniform(0.8, 0.95, len(shape))) <= 1
    organ_radii = extent * rng.uniform(0.4, 0.55, len(shape))
    organ_centre = extent * rng.uniform(-0.15, 0.15, len(shape))
    organ_r = ellipsoid(organ_centre, organ_radii)
    label[organ_r <= 1] = 1
    image = np.where(body, BODY_HU, AIR_HU) + np.where(organ_r <= 1, ORGAN_HU - BODY_HU, 0.0)
    for k in range(2, classes):
        # a blob: a sphere whose radius wobbles with direction, inside the organ
        radius = organ_radii.min() * rng.uniform(0.3, 0.45) / np.sqrt(k - 1)
        offset = organ_radii * rng.uniform(-0.35, 0.35, len(shape))
        centre = organ_centre + offset
        dist = np.sqrt(ellipsoid(centre, np.full(len(shape), radius)))
        phase = rng.uniform(0, 2 * np.pi, len(shape))
        wobble = 1 + 0.15 * sum(
            np.sin((g - c) / radius * 2 + p) for g, c, p in zip(grid, centre, phase, strict=True)
        ) / len(shape)
        blob = (dist <= wobble) & (organ_r <= 1)
        label[blob] = k
        image = np.where(blob, ORGAN_HU + rng.choice([-1, 1]) * rng.uniform(25, 60), image)
    # a smooth multiplicative bias field on tissue, then noise
    coords = list(grid)
    bias = (
        1
        + sum(rng.uniform(-0.03, 0.03) * c for c in coords)
        + sum(rng.uniform(-0.015, 0.015) * c**2 for c in coords)
    )
    tissue = image > AIR_HU / 2
    image = np.where(tissue, (image + 1000) * bias - 1000, image)
    image = image + rng.normal(0.0, 12.0, size=tuple(shape))
    return np.clip(np.round(image), -1024, 3071).astype(np.int16), label


def phantom_case(
    case_id: str,
    seed: int,
    shape: Sequence[int] = (64, 64, 64),
    classes: int = 3,
    oblique: bool = False,
) -> Case:
    """One phantom: image in HU (int16, one channel) and label (uint8) on the same grid.

    ``shape`` has 3 entries (a volume) or 2 (a 2D image; its affine's column 2 is the normal).
    The same ``seed`` always gives the same case.
    """
    if len(shape) not in (2, 3) or any(int(n) < 4 for n in shape):
        raise InputError(f"shape: give 2 or 3 sizes of at least 4 voxels; got {list(shape)}")
    rng = np.random.default_rng(seed)
    affine = phantom_affine(rng, shape, oblique)
    image, label = phantom_arrays(rng, shape, classes)
    meta = {"synthetic": {"seed": seed, "classes": classes}}
    return Case(
        case_id,
        Volume(image[..., None], affine, dict(meta)),
        Volume(label[..., None], affine, dict(meta)),
    )


def to_display(volume: Volume, window: tuple[float, float] = (-200.0, 300.0)) -> Volume:
    """An 8-bit version of a HU image (window ``low..high`` -> 0..255), for PNG and JPEG."""
    low, high = window
    scaled = (volume.array.astype(np.float64) - low) / (high - low) * 255.0
    return volume.with_array(np.clip(np.round(scaled), 0, 255).astype(np.uint8))


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a dataset generated with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def write_dataset(
    out: Path | str,
    registry: Registry,
    n_cases: int = 10,
    shape: Sequence[int] = (64, 64, 64),
    classes: int = 3,
    layout: SynthLayout = "msd",
    fmt: Format = "nifti",
    seed: int = 0,
    oblique: bool = False,
) -> list[Case]:
    """Write ``n_cases`` phantoms as a dataset that ``Dataset.discover`` reads back.

    Layouts: ``msd`` (``imagesTr/<id>_0000`` + ``labelsTr/<id>`` + ``dataset.json``),
    ``cases`` (``<id>/imaging`` + ``<id>/segmentation``), ``image2d`` (``images/`` +
    ``masks/``). ``fmt="dicom"`` writes each image as a DICOM series folder through the
    ``dicom`` IO and its label as NIfTI beside it (cases layout). Returns the cases written.
    """
    out = Path(out)
    if n_cases < 1:
        raise InputError(f"cases: give at least 1 case; got {n_cases}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not an empty folder; choose a new output folder")
    if fmt not in IO_NAMES:
        raise InputError(f"format: unknown format {fmt!r}; use {', '.join(IO_NAMES)}")
    if fmt == "png" and len(shape) != 2:
        raise InputError("format png writes 2D images: use --2d (or a shape of two sizes)")
    if fmt == "dicom" and len(shape) != 3:
        raise InputError("format dicom writes 3D series: give a 3D shape")
    if layout not in ("msd", "cases", "image2d"):
        raise InputError(f"layout: unknown layout {layout!r}; use msd, cases or image2d")
    if fmt == "dicom" and layout != "cases":
        raise InputError("format dicom writes the cases layout: use --layout cases")
    if layout == "image2d" and len(shape) != 2:
        raise InputError("layout image2d holds 2D images: use --2d")
    image_io_name = IO_NAMES[fmt]
    if image_io_name not in registry.names("io"):
        raise InputError(
            f"format {fmt}: no IO named {image_io_name!r} is installed (it comes with the "
            f"miscore_{image_io_name} plugin); installed IO: {', '.join(registry.names('io'))}"
        )
    image_io = registry.get_io(image_io_name)()
    # labels of a DICOM series go to NIfTI
    label_fmt = "nifti" if fmt == "dicom" else fmt
    label_io = registry.get_io(IO_NAMES[label_fmt])()
    suffix, label_suffix = SUFFIXES[fmt], SUFFIXES[label_fmt]
    width = max(3, len(str(n_cases - 1)))
    cases = []
    for index in range(n_cases):
        case_id = f"case_{index:0{width}d}"
        case = phantom_case(case_id, case_seed(seed, index), shape, classes, oblique)
        assert case.label is not None
        image = to_display(case.image) if fmt == "png" else case.image
        if layout == "msd":
            image_path = out / "imagesTr" / f"{case_id}_0000{suffix}"
            label_path = out / "labelsTr" / f"{case_id}{label_suffix}"
        elif layout == "cases":
            image_path = out / case_id / f"imaging{suffix}"
            label_path = out / case_id / f"segmentation{label_suffix}"
        else:
            image_path = out / "images" / f"{case_id}{suffix}"
            label_path = out / "masks" / f"{case_id}{label_suffix}"
        try:
            image_io.write(image, image_path)
        except NotImplementedError:
            raise PipelineError(
                f"format {fmt}: the {image_io_name!r} IO cannot write images yet"
            ) from None
        label_io.write(case.label, label_path, reference=image)
        cases.append(Case(case_id, image, case.label, case.meta))
    if layout == "msd":
        _write_dataset_json(out, fmt, classes, n_cases, suffix, seed)
    return cases


def class_names(classes: int) -> list[str]:
    """``background, organ, tumour, lesion3, ...``."""
    names = ["background", "organ", "tumour"][:classes]
    return names + [f"lesion{k}" for k in range(3, classes)]


def _write_dataset_json(
    out: Path, fmt: str, classes: int, n_cases: int, suffix: str, seed: int
) -> None:
    """An nnU-Net v2 style dataset.json (no file lists: the folders are the truth)."""
    info = {
        "name": "miscore-synthetic",
        "description": f"synthetic CT-like phantoms written by miscore synth (seed {seed})",
        "channel_names": {"0": "CT" if fmt != "png" else "grey"},
        "labels": {name: k for k, name in enumerate(class_names(classes))},
        "numTraining": n_cases,
        "file_ending": suffix,
    }
    write_text_atomic(out / "dataset.json", json.dumps(info, indent=2) + "\n")
