"""Datasets on disk: find the cases of a folder and load them as ``Case`` objects.

Every layout gives the same thing: a list of ``CaseSource`` (case id, one image path per
channel, a label path or None, and whether the case is in a test set). ``Dataset.load`` reads
one case through the registry's IO components::

    dataset = Dataset.discover("data/Task03_Liver", registry)   # layout="auto"
    for case_id in dataset.ids:
        case = dataset.load(case_id)        # Case(id, image, label or None)

Layouts are components (``DatasetLayout``, registered with ``miscore_register_layouts``);
``layout=`` (the config's ``data.layout``) names one, or ``auto`` asks each installed layout's
``detect``, highest ``detect_priority`` first, ties by name. The bundled ones
(``miscore_layouts``) are ``msd``, ``image2d``, ``cases``, ``dicom`` and ``files``, tried in
that order. A layout finds files with the ``DatasetFinder`` it is given: the kernel's file
helpers (which reader reads a path, the images of a folder, checked case ids, paths confined
to the dataset folder).

Case ids become file names, so they are checked with ``check_case_id``; duplicated ids, an
empty dataset and image/label pairs whose grids differ are ``InputError`` naming the case and
the files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from miscore.core.components import DatasetLayout, ImageIO
from miscore.core.errors import ComponentNotFoundError, InputError, PluginError
from miscore.core.registry import Registry
from miscore.core.volume import Case, CaseSource, Volume, check_case_id

#: what ``data.layout`` says to have the layout detected
AUTO = "auto"

#: compression endings stripped from a file name before its format suffix
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")


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
        layout: str = AUTO,
        io: str | None = None,
    ) -> Dataset:
        """Find the cases under ``path``.

        Args:
            path: the dataset folder, or a single image file or series folder.
            registry: the loaded plugins' components (``PluginManager().registry``).
            layout: ``auto``, or the name of an installed layout (bundled: ``msd``, ``cases``,
                ``dicom``, ``image2d``, ``files``).
            io: an IO name to read every file with; None picks one per file by its name.
        """
        root = Path(path)
        chosen = None if layout == AUTO else _layout(registry, layout)
        if not root.exists():
            raise InputError(f"{root}: no such file or folder")
        finder = DatasetFinder(root, registry, io)
        if chosen is None:
            chosen = _detect(root, registry, finder)
        cases, info = _find(chosen, root, finder)
        if not cases:
            raise InputError(f"{root}: no cases found for layout {chosen.name!r}")
        _check_unique(cases)
        return cls(root, chosen.name, cases, registry, io, info)

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


def _detection_order(registry: Registry) -> list[DatasetLayout]:
    """The installed layouts in the order ``auto`` asks them: ``detect_priority``, then name."""
    classes = [info.cls for info in registry.components("layout")]
    ordered = sorted(classes, key=lambda c: (-getattr(c, "detect_priority", 0), c.name))
    layouts = []
    for layout_class in ordered:
        layout = layout_class()
        assert isinstance(layout, DatasetLayout)
        layouts.append(layout)
    return layouts


def _layout(registry: Registry, name: str) -> DatasetLayout:
    try:
        layout_class = registry.get("layout", name)
    except ComponentNotFoundError as exc:
        raise ComponentNotFoundError(f"data.layout: {exc}; or {AUTO!r} to detect it") from None
    layout = layout_class()
    assert isinstance(layout, DatasetLayout)
    return layout


def _detect(root: Path, registry: Registry, finder: DatasetFinder) -> DatasetLayout:
    """The first installed layout whose ``detect`` recognises ``root``."""
    layouts = _detection_order(registry)
    for layout in layouts:
        try:
            if layout.detect(root, finder):
                return layout
        except InputError:  # the data's fault, not the plugin's
            raise
        except Exception as exc:
            raise PluginError(
                f"layout {layout.name!r} failed to inspect {root}: {type(exc).__name__}: {exc}"
            ) from exc
    expected = [f"{type(x).looks_like} ({x.name})" for x in layouts if type(x).looks_like]
    if not expected:
        installed = ", ".join(x.name for x in layouts) or "none (no layout plugin is installed)"
        expected = [f"a folder one of the installed layouts recognises ({installed})"]
    listed = expected[0] if len(expected) == 1 else f"{', '.join(expected[:-1])} or {expected[-1]}"
    raise InputError(
        f"{root}: no dataset layout recognised: expected {listed}; set data.layout to choose one"
    )


def _find(
    layout: DatasetLayout, root: Path, finder: DatasetFinder
) -> tuple[list[CaseSource], dict[str, Any]]:
    """``layout.find``, its result checked: a plugin that breaks the contract is named."""
    try:
        cases, info = layout.find(root, finder)
    except (InputError, OSError):
        raise
    except Exception as exc:
        raise PluginError(
            f"layout {layout.name!r} failed to read {root}: {type(exc).__name__}: {exc}"
        ) from exc
    cases = list(cases)
    wrong = next((c for c in cases if not isinstance(c, CaseSource)), None)
    if wrong is not None or not isinstance(info, dict):
        got = type(wrong if wrong is not None else info).__name__
        raise PluginError(
            f"layout {layout.name!r}: find() must return (list of miscore.CaseSource, dict); "
            f"got a {got}"
        )
    return cases, info


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


# --- the helpers a layout is given ---------------------------------------------------------


class DatasetFinder:
    """The kernel's file helpers a dataset layout uses in ``detect`` and ``find``.

    ``Dataset.discover`` creates one per dataset and hands it to the layouts; it knows the
    dataset folder, the installed readers (or the one forced by ``data.io``) and the rules for
    case ids, so a layout only says which files make which case.

    Args:
        root: the dataset folder, or a single image file or series folder.
        registry: the installed components (the readers).
        io: an IO name to read every file with (``data.io``); None: the registry's choice.
    """

    def __init__(self, root: Path, registry: Registry, io: str | None = None) -> None:
        self.root = root
        self.registry = registry
        self.io = registry.get_io(io)() if io is not None else None
        # layouts ask about the same paths (the root, its folders): answer each once
        self._readers: dict[Path, ImageIO | None] = {}

    def reader(self, path: Path) -> ImageIO | None:
        """The IO that reads ``path`` (a file, or a folder such as a DICOM series), or None.

        The reader ``data.io`` forces, else the registry's choice (``Registry.reader_for``:
        the highest ``priority`` of those that can read it).
        """
        if path not in self._readers:
            self._readers[path] = self._find_reader(path)
        return self._readers[path]

    def _find_reader(self, path: Path) -> ImageIO | None:
        if self.io is not None:
            return self.io if (path.is_file() or self.io.can_read(path)) else None
        return self.registry.reader_for(path)

    def is_image(self, path: Path) -> bool:
        """True when ``path`` is one image: a file, or a folder a reader reads whole (a series).

        A dataset given as a single image is the ``files`` layout's; other layouts say no.
        """
        return path.is_file() or self.reader(path) is not None

    def entries(self, folder: Path) -> list[Path]:
        """A folder's entries, sorted, without hidden files (``._x.nii.gz`` of macOS archives)."""
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))

    def images_in(self, folder: Path) -> list[tuple[Path, ImageIO]]:
        """The entries of ``folder`` some reader reads, each with that reader, sorted."""
        out = []
        for path in self.entries(folder):
            io = self.reader(path)
            if io is not None:
                out.append((path, io))
        return out

    def named(self, folder: Path, stems: Sequence[str]) -> Path | None:
        """The first entry of ``folder`` named ``stem`` or ``stem.*`` (any case), trying
        ``stems`` in order: ``named(case, ("segmentation", "label"))``."""
        entries = self.entries(folder)
        for stem in stems:
            for path in entries:
                name = path.name.lower()
                if name == stem or name.startswith(stem + "."):
                    return path
        return None

    def case_id(self, case_id: str, path: Path) -> str:
        """``case_id`` checked (it becomes a file name); the error names ``path``."""
        try:
            return check_case_id(case_id)
        except InputError:
            raise InputError(
                f"{path}: gives case id {case_id!r}, which is not allowed; rename it using "
                f"letters, digits, '.', '_' or '-' only"
            ) from None

    def file_stem(self, path: Path, io: ImageIO | None = None) -> str:
        """A file's name without its format's suffix (``a.nii.gz`` -> ``a``): a case id to be.

        ``io``: the reader of ``path`` (default: ``reader(path)``); a reader forced onto files
        whose suffix it does not list (``data.io: sitk`` for ``.nii.gz``) still gets ``a``.
        """
        io = io if io is not None else self.reader(path)
        name = path.name.lower()
        if io is not None and (path.is_dir() or any(name.endswith(s) for s in io.suffixes)):
            return io.case_id(path)
        stem = path.name
        for compression in _COMPRESSION:
            if name.endswith(compression):
                stem = stem[: -len(compression)]
        return Path(stem).stem

    def confined(self, relative: str, where: str) -> Path:
        """A path an index file (``dataset.json``) gives, which must stay inside the dataset.

        Args:
            relative: the path as written, relative to the dataset folder.
            where: what gave it, for the error (``dataset.json: training entry 3``).
        """
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
