"""Datasets on disk: find the cases of a folder and load them as ``Case`` objects.

Every layout gives the same thing: a list of ``CaseSource`` (case id, one image path per
channel, a label path or None, and whether the case is in a test set). ``Dataset.load`` reads
one case through the registry's IO components::

    dataset = Dataset.discover("data/Task03_Liver", registry)   # layout="auto"
    for case_id in dataset.ids:
        case = dataset.load(case_id)        # Case(id, image, label or None)

Layouts (``layout=``, the config's ``data.layout``):

- ``msd``: Medical Segmentation Decathlon / nnU-Net: ``imagesTr/``, ``labelsTr/``,
  ``imagesTs/`` (optional ``labelsTs/``, ``dataset.json``); channels as ``<case>_0000.nii.gz``,
  ``<case>_0001.nii.gz``... or one multi-channel file ``<case>.nii.gz``.
- ``cases``: MIScnn/KiTS: one folder per case holding ``imaging.*`` (a file, or a folder
  such as a DICOM series) and optionally ``segmentation.*``.
- ``dicom``: one folder per case that an IO reads as an image (a DICOM series, as the
  registry's ``io_for(folder)`` decides); the label, when present, is a file in that folder
  named ``segmentation.*``, ``label.*``, ``mask.*``, ``seg.*`` or ``rtstruct.*``.
- ``image2d``: ``images/`` and ``masks/`` (or ``labels/``), paired by file stem.
- ``files``: a flat folder of images (or one image file), no labels: for prediction.

Auto-detection tries them in that order. Case ids become file names, so they are checked with
``check_case_id``; duplicated ids, an empty dataset and image/label pairs whose grids differ
are ``InputError`` naming the case and the files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from miscore.core.components import ImageIO
from miscore.core.errors import InputError
from miscore.core.registry import Registry
from miscore.core.volume import Case, CaseSource, Volume, check_case_id

Layout = Literal["auto", "msd", "cases", "dicom", "image2d", "files"]
LAYOUTS: tuple[str, ...] = ("msd", "cases", "dicom", "image2d", "files")

#: names (before the first dot) of label files in a case folder
LABEL_STEMS = ("segmentation", "label", "labels", "mask", "seg", "rtstruct")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class Dataset:
    """The cases of a dataset folder and how to load them."""

    root: Path
    layout: str
    cases: list[CaseSource]
    registry: Registry
    io: str | None = None
    #: dataset.json (MSD/nnU-Net) when present: labels, channel names, modality...
    info: dict[str, Any] = field(default_factory=dict)
    #: image/label grids may differ by this much (mm) in the affine and still match
    geometry_atol: float = 1e-3

    # --- discovery ----------------------------------------------------------------------

    @classmethod
    def discover(
        cls,
        path: Path | str,
        registry: Registry,
        layout: Layout | str = "auto",
        io: str | None = None,
    ) -> Dataset:
        """Find the cases under ``path``.

        Args:
            path: the dataset folder, or a single image file or series folder.
            registry: the loaded plugins' components (``PluginManager().registry``).
            layout: one of ``auto``, ``msd``, ``cases``, ``dicom``, ``image2d``, ``files``.
            io: an IO name to read every file with; None picks one per file by its name.
        """
        root = Path(path)
        if layout != "auto" and layout not in LAYOUTS:
            raise InputError(
                f"data.layout: unknown layout {layout!r}; use auto or {', '.join(LAYOUTS)}"
            )
        if not root.exists():
            raise InputError(f"{root}: no such file or folder")
        finder = _Finder(root, registry, io)
        if layout == "auto":
            layout = finder.detect()
        info: dict[str, Any] = {}
        if layout == "msd":
            cases, info = finder.msd()
        elif layout == "cases":
            cases = finder.case_folders()
        elif layout == "dicom":
            cases = finder.dicom_folders()
        elif layout == "image2d":
            cases = finder.image_folders()
        else:
            cases = finder.files()
        if not cases:
            raise InputError(f"{root}: no cases found for layout {layout!r}")
        _check_unique(cases)
        return cls(root, str(layout), cases, registry, io, info)

    # --- access -------------------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        """Every case id, in a stable (sorted) order."""
        return [c.id for c in self.cases]

    @property
    def labelled_ids(self) -> list[str]:
        """Ids of the cases with a label (training/evaluation data)."""
        return [c.id for c in self.cases if c.label is not None]

    def source(self, case_id: str) -> CaseSource:
        """The files of one case; ``InputError`` when there is no such case."""
        for case in self.cases:
            if case.id == case_id:
                return case
        raise InputError(f"{self.root}: no case {case_id!r} in this dataset")

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[CaseSource]:
        return iter(self.cases)

    def io_for(self, path: Path) -> ImageIO:
        """The IO that reads ``path``: the forced one, or the registry's choice."""
        if self.io is not None:
            return self.registry.get_io(self.io)()
        return self.registry.io_for(path)

    def load(self, case_id: str, label: bool = True) -> Case:
        """Read one case: channels stacked (channels last), label on the image's grid.

        Args:
            case_id: which case.
            label: False skips reading the label (prediction).
        """
        source = self.source(case_id)
        image = self.load_image(source)
        label_volume = None
        if label and source.label is not None:
            io = self.io_for(source.label)
            label_volume = io.read_label(source.label, image)
            self._check_grid(source, image, source.images[0], label_volume, source.label)
        meta = {
            "source": {
                "images": [str(p) for p in source.images],
                "label": None if source.label is None else str(source.label),
                "layout": self.layout,
                "test": source.test,
            }
        }
        return Case(source.id, image, label_volume, meta)

    def load_image(self, source: CaseSource) -> Volume:
        """Read the image of a case, one file per channel stacked into one Volume."""
        volumes = [self.io_for(p).read(p) for p in source.images]
        first = volumes[0]
        if len(volumes) == 1:
            return first
        for path, volume in zip(source.images[1:], volumes[1:], strict=True):
            self._check_grid(source, first, source.images[0], volume, path)
        dtype = np.result_type(*(v.array.dtype for v in volumes))
        array = np.concatenate([v.array.astype(dtype, copy=False) for v in volumes], axis=-1)
        meta = dict(first.meta)
        meta["channel_files"] = [str(p) for p in source.images]
        return Volume(array, first.affine, meta)

    def _check_grid(
        self, source: CaseSource, first: Volume, first_path: Path, other: Volume, path: Path
    ) -> None:
        if other.spatial_shape != first.spatial_shape:
            raise InputError(
                f"case {source.id}: {path} has shape {other.spatial_shape} but {first_path} "
                f"has {first.spatial_shape}; they must share one grid"
            )
        if not np.allclose(other.affine, first.affine, rtol=0, atol=self.geometry_atol):
            worst = float(np.abs(other.affine - first.affine).max())
            raise InputError(
                f"case {source.id}: the geometry of {path} differs from {first_path} "
                f"(affines differ by up to {worst:.4g} mm); resample one onto the other"
            )


# --- layouts ---------------------------------------------------------------------------


def _visible(folder: Path) -> list[Path]:
    """A folder's entries, sorted, without hidden files (``._x.nii.gz`` from macOS archives)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _check_unique(cases: Sequence[CaseSource]) -> None:
    seen: dict[str, CaseSource] = {}
    for case in cases:
        if case.id in seen:
            first = seen[case.id]
            raise InputError(
                f"case id {case.id!r} appears twice: {first.images[0]} and {case.images[0]}; "
                f"rename one of them"
            )
        seen[case.id] = case


def _case_id(case_id: str, path: Path) -> str:
    try:
        return check_case_id(case_id)
    except InputError:
        raise InputError(
            f"{path}: gives case id {case_id!r}, which is not allowed; rename it using "
            f"letters, digits, '.', '_' or '-' only"
        ) from None


class _Finder:
    """Finds the cases of one folder for each layout."""

    def __init__(self, root: Path, registry: Registry, io: str | None) -> None:
        self.root = root
        self.registry = registry
        self.io = registry.get_io(io)() if io is not None else None

    def reader(self, path: Path) -> ImageIO | None:
        """The IO that reads ``path``, or None when none does."""
        if self.io is not None:
            return self.io if (path.is_file() or self.io.can_read(path)) else None
        for info in self.registry.components("io"):
            io = info.cls()
            assert isinstance(io, ImageIO)
            if io.can_read(path):
                return io
        return None

    def images_in(self, folder: Path) -> list[tuple[Path, ImageIO]]:
        out = []
        for path in _visible(folder):
            io = self.reader(path)
            if io is not None:
                out.append((path, io))
        return out

    # --- detection ----------------------------------------------------------------------

    def detect(self) -> str:
        root = self.root
        if root.is_file() or self.reader(root) is not None:
            return "files"
        names = {p.name for p in root.iterdir()}
        if names & {"imagesTr", "imagesTs", "dataset.json"}:
            return "msd"
        if "images" in names and names & {"masks", "labels"}:
            return "image2d"
        folders = [p for p in _visible(root) if p.is_dir()]
        if any(_named(folder, ("imaging",)) for folder in folders):
            return "cases"
        if any(self.reader(folder) is not None for folder in folders):
            return "dicom"
        if self.images_in(root):
            return "files"
        raise InputError(
            f"{root}: no dataset layout recognised: expected imagesTr/ (msd), case folders "
            f"with imaging.* (cases), images/ + masks/ (image2d), image folders (dicom) or "
            f"image files (files); set data.layout to choose one"
        )

    # --- msd / nnU-Net ------------------------------------------------------------------

    def msd(self) -> tuple[list[CaseSource], dict[str, Any]]:
        info: dict[str, Any] = {}
        listed: list[CaseSource] | None = None
        json_path = self.root / "dataset.json"
        if json_path.is_file():
            try:
                info = json.loads(json_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InputError(f"{json_path}: not valid JSON: {exc}") from None
            if not isinstance(info, dict):
                raise InputError(f"{json_path}: expected a JSON object")
            listed = self.msd_listed(info, json_path)
        if listed:
            return listed, info
        cases = self.msd_folder("imagesTr", "labelsTr", test=False)
        cases += self.msd_folder("imagesTs", "labelsTs", test=True)
        return cases, info

    def msd_folder(self, images: str, labels: str | None, test: bool) -> list[CaseSource]:
        folder = self.root / images
        if not folder.is_dir():
            return []
        channels: dict[str, dict[int, Path]] = {}
        single: dict[str, Path] = {}
        for path, io in self.images_in(folder):
            stem = _stem(io, path)
            match = _CHANNEL.match(stem)
            if match:
                channels.setdefault(match["case"], {})[int(match["channel"])] = path
            elif stem in single:
                raise InputError(
                    f"case id {stem!r} appears twice: {single[stem]} and {path}; "
                    "rename or remove one"
                )
            else:
                single[stem] = path
        # `subject_0001`, `subject_0002` without a `subject_0000` are cases, not channels
        for case_id in [c for c, found in channels.items() if 0 not in found]:
            for number, path in channels.pop(case_id).items():
                stem = f"{case_id}_{number:04d}"
                if stem in single:
                    raise InputError(
                        f"case id {stem!r} appears twice: {single[stem]} and {path}; "
                        "rename or remove one"
                    )
                single[stem] = path
        label_files = {}
        label_folder = self.root / labels if labels is not None else None
        if label_folder is not None and label_folder.is_dir():
            label_files = {_stem(io, p): p for p, io in self.images_in(label_folder)}
        cases = []
        counts = set()
        for case_id in sorted(set(channels) | set(single)):
            if case_id in channels and case_id in single:
                raise InputError(
                    f"case {case_id}: both {single[case_id]} and channel files "
                    f"{case_id}_0000... exist in {folder}; keep one naming"
                )
            if case_id in channels:
                found = channels[case_id]
                expected = list(range(len(found)))
                if sorted(found) != expected:
                    raise InputError(
                        f"case {case_id}: channel files {sorted(found)} in {folder} are not "
                        f"numbered 0000, 0001, ... without gaps"
                    )
                paths = tuple(found[i] for i in expected)
            else:
                paths = (single[case_id],)
            counts.add(len(paths))
            cases.append(
                CaseSource(_case_id(case_id, paths[0]), paths, label_files.pop(case_id, None), test)
            )
        if len(counts) > 1:
            raise InputError(f"{folder}: cases have different numbers of channel files {counts}")
        if label_files:
            orphan = next(iter(label_files.values()))
            raise InputError(f"{orphan}: a label without an image in {folder}")
        return cases

    def msd_listed(self, info: dict[str, Any], json_path: Path) -> list[CaseSource]:
        """Cases from dataset.json's ``training``/``test`` lists (MSD), when it has them."""
        cases = []
        training = info.get("training") or []
        test = info.get("test") or []
        if not isinstance(training, list) or not isinstance(test, list):
            raise InputError(f"{json_path}: 'training' and 'test' must be lists")
        entries: list[tuple[Any, bool]] = [(e, False) for e in training]
        entries += [(e, True) for e in test]
        for i, (entry, is_test) in enumerate(entries):
            where = f"{json_path}: {'test' if is_test else 'training'} entry {i}"
            if isinstance(entry, str):
                entry = {"image": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                raise InputError(f"{where}: expected a path or {{'image': ..., 'label': ...}}")
            image = self.confined(entry["image"], where)
            images = self.channel_files(image, where)
            label = None
            if isinstance(entry.get("label"), str):
                label = self.confined(entry["label"], where)
                if not label.exists():
                    raise InputError(f"{where}: label {label} does not exist")
            io = self.reader(images[0])
            stem = _stem(io, image) if io is not None else image.name
            cases.append(CaseSource(_case_id(stem, image), images, label, is_test))
        return cases

    def confined(self, relative: str, where: str) -> Path:
        """A path from dataset.json, which must stay inside the dataset folder."""
        candidate = Path(relative)
        if candidate.is_absolute() or ".." in candidate.parts:
            raise InputError(
                f"{where}: path {relative!r} leaves the dataset folder; use a relative path "
                f"without '..'"
            )
        path = (self.root / candidate).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise InputError(f"{where}: path {relative!r} leaves the dataset folder")
        return self.root / candidate

    def channel_files(self, image: Path, where: str) -> tuple[Path, ...]:
        """``x.nii.gz`` itself, or ``x_0000.nii.gz, x_0001.nii.gz...`` (nnU-Net renamed it)."""
        if image.exists():
            return (image,)
        name = image.name
        suffix = ".nii.gz" if name.endswith(".nii.gz") else image.suffix
        base = name[: len(name) - len(suffix)]
        found: list[Path] = []
        while (image.parent / f"{base}_{len(found):04d}{suffix}").exists():
            found.append(image.parent / f"{base}_{len(found):04d}{suffix}")
        if found:
            return tuple(found)
        raise InputError(f"{where}: image {image} does not exist")

    # --- case folders -------------------------------------------------------------------

    def case_folders(self) -> list[CaseSource]:
        cases = []
        for folder in _visible(self.root):
            if not folder.is_dir():
                continue
            image = _named(folder, ("imaging",))
            if image is None:
                continue
            label = _named(folder, ("segmentation",))
            cases.append(CaseSource(_case_id(folder.name, folder), (image,), label))
        return cases

    def dicom_folders(self) -> list[CaseSource]:
        cases = []
        for folder in _visible(self.root):
            if not folder.is_dir() or self.reader(folder) is None:
                continue
            label = _named(folder, LABEL_STEMS)
            cases.append(CaseSource(_case_id(folder.name, folder), (folder,), label))
        return cases

    # --- 2D image folders ---------------------------------------------------------------

    def image_folders(self) -> list[CaseSource]:
        images = self.root / "images"
        if not images.is_dir():
            raise InputError(f"{self.root}: the image2d layout needs an images/ folder")
        masks = next((self.root / n for n in ("masks", "labels") if (self.root / n).is_dir()), None)
        mask_files = {}
        if masks is not None:
            mask_files = {_stem(io, p): p for p, io in self.images_in(masks)}
        cases = []
        for path, io in self.images_in(images):
            stem = _stem(io, path)
            cases.append(CaseSource(_case_id(stem, path), (path,), mask_files.pop(stem, None)))
        if mask_files:
            orphan = next(iter(mask_files.values()))
            raise InputError(f"{orphan}: a mask without an image of the same name in {images}")
        return cases

    # --- plain files --------------------------------------------------------------------

    def files(self) -> list[CaseSource]:
        root = self.root
        single = self.reader(root)
        if root.is_file() or single is not None:
            if single is None:
                raise InputError(f"{root}: no installed reader handles this file")
            return [CaseSource(_case_id(_stem(single, root), root), (root,))]
        # nnU-Net channel files (<case>_0000, <case>_0001...) are one case, as in imagesTs
        return self.msd_folder(".", None, test=False)


def _stem(io: ImageIO, path: Path) -> str:
    """The case id a file gives: its name without the format's suffix."""
    name = path.name.lower()
    if path.is_dir() or any(name.endswith(s) for s in io.suffixes):
        return io.case_id(path)
    # an IO forced onto files it does not name (``io="sitk"`` for .nii.gz)
    stem = path.name
    for compression in (".gz", ".bz2", ".xz", ".zst"):
        if name.endswith(compression):
            stem = stem[: -len(compression)]
    return Path(stem).stem


def _named(folder: Path, stems: Sequence[str]) -> Path | None:
    """The first entry of ``folder`` whose name is a stem or starts with ``stem.``."""
    for stem in stems:
        for path in _visible(folder):
            name = path.name.lower()
            if name == stem or name.startswith(stem + "."):
                return path
    return None
