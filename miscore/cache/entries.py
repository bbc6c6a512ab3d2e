"""A cache entry: what a preprocessed case is stored as, and how it is read back.

An entry is a zarr v3 group (``case.zarr``): ``image``, ``label`` and ``foreground/<class>``
arrays, with the geometry, ``Case.meta`` (the steps' inverse state) and the class voxel counts
as attributes. ``prepare_entry`` turns a ``Case`` into exactly what is stored, identical for
every store; ``read_entry`` gives it back as a ``CachedCase`` whose arrays read only the chunks
a patch touches. Its completion marker (``completion_marker``) is written last and vouches for
the entry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from miscore.cache.chunkread import window_reader
from miscore.cache.keys import FORMAT_VERSION, CacheKey, CacheSettings
from miscore.core.errors import PipelineError
from miscore.core.volume import Case, Volume

#: The zarr group of an entry, under the entry's folder or data prefix.
STORE = "case.zarr"
#: The folder of complete entries (local) or of their markers (object stores).
ENTRIES = "entries"
#: The lookup counts (hits and misses).
STATS = "stats"
#: Spatial chunk length per axis when none is given: 64^3 for 3D, 256^2 for 2D.
DEFAULT_CHUNK = {3: 64, 2: 256}
#: How an entry's arrays are written, in its completion marker: every chunk is stored, those
#: holding only the fill value too (zarr omits them by default). A chunk missing from a
#: published entry then always means the entry was removed or damaged, and reading it is an
#: error (``miscore.cache.zarrstores``), never zeros. Entries without it (written before)
#: are not trusted: they are built again.
LAYOUT = "every-chunk"
#: zarr's array config for the cache's arrays (see ``LAYOUT``).
ARRAY_CONFIG = {"write_empty_chunks": True}
FLOAT16_MAX = float(np.finfo(np.float16).max)


class SliceableArray(Protocol):
    """What the loader reads: a numpy array or a zarr array (slicing reads only needed chunks)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, key: Any) -> Any: ...


# --- what is read back ------------------------------------------------------------------


@dataclass(eq=False)
class CachedCase:
    """A preprocessed case as the loader reads it.

    ``image`` and ``label`` are zarr arrays (from the disk cache) or
    ``miscore.cache.chunkread.CompressedArray`` (on-the-fly mode); both slice the same way and
    return numpy arrays, ``(*spatial, C)``.
    ``foreground`` maps each class present (1, 2, ...) to an ``(n, ndim)`` int32 array of
    voxel coordinates (a random subset); ``class_voxels`` counts every class's voxels.
    """

    id: str
    key: str
    image: SliceableArray
    label: SliceableArray | None
    affine: npt.NDArray[np.float64]
    label_affine: npt.NDArray[np.float64] | None
    meta: dict[str, Any]
    image_meta: dict[str, Any]
    label_meta: dict[str, Any]
    foreground: dict[int, npt.NDArray[np.int32]]
    class_voxels: dict[int, int]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.image.shape[:-1])

    @property
    def channels(self) -> int:
        return int(self.image.shape[-1])

    def to_case(self) -> Case:
        """Read everything into memory as a ``Case`` (for inference and postprocessing)."""
        image = Volume(np.array(self.image[...]), self.affine.copy(), dict(self.image_meta))
        label = None
        if self.label is not None:
            label_affine = self.affine if self.label_affine is None else self.label_affine
            label = Volume(np.array(self.label[...]), label_affine.copy(), dict(self.label_meta))
        return Case(self.id, image, label, json.loads(json.dumps(self.meta)))


def cached_case(
    attributes: Mapping[str, Any],
    image: SliceableArray,
    label: SliceableArray | None,
    foreground: dict[int, npt.NDArray[np.int32]],
) -> CachedCase:
    """A ``CachedCase`` from an entry's stored attributes and its arrays."""
    label_affine = attributes.get("label_affine")
    return CachedCase(
        id=str(attributes["case_id"]),
        key=str(attributes["key"]),
        image=image,
        label=label,
        affine=np.asarray(attributes["affine"], dtype=np.float64),
        label_affine=None if label_affine is None else np.asarray(label_affine, np.float64),
        meta=json.loads(json.dumps(attributes["meta"])),
        image_meta=dict(attributes["image_meta"]),
        label_meta=dict(attributes["label_meta"]),
        foreground=foreground,
        class_voxels={int(k): int(n) for k, n in attributes["class_voxels"].items()},
    )


def read_entry(group: Any) -> CachedCase:
    """A ``CachedCase`` from an entry's zarr group (local folder or object store), opened
    through a ``miscore.cache.zarrstores`` store so that a missing chunk is an error."""
    import zarr

    attributes = dict(group.attrs)
    # One listing of all members, nested ones included (arrays() then groups() would read
    # every member's metadata twice: a request each on an object store).
    members = dict(group.members(max_depth=None))
    arrays = {n: m for n, m in members.items() if isinstance(m, zarr.Array)}
    foreground: dict[int, npt.NDArray[np.int32]] = {}
    for name, coords in arrays.items():
        if name.startswith("foreground/"):
            # window_reader: a local entry's chunk file is decoded directly (chunkread.py)
            values = np.asarray(window_reader(coords), dtype=np.int32)
            foreground[int(name.removeprefix("foreground/"))] = values
    return cached_case(attributes, arrays["image"], arrays.get("label"), foreground)


# --- what is written --------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def as_json(value: Any, what: str) -> Any:
    """``value`` as it comes back from JSON (numpy scalars become numbers, tuples lists)."""
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{what}: cannot be stored in the cache: {exc}") from None


def _image_array(case: Case, float16: bool) -> npt.NDArray[np.floating[Any]]:
    array = case.image.array
    if float16:
        finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
        if finite.size and float(np.abs(finite).max()) > FLOAT16_MAX:
            raise PipelineError(
                f"case {case.id}: image values reach {float(np.abs(finite).max()):g}, beyond "
                f"float16 (+-{FLOAT16_MAX:g}); set cache.float16: false or rescale first"
            )
        return array.astype(np.float16)
    return array.astype(np.float32, copy=False)


def foreground_coordinates(
    label: npt.NDArray[np.integer[Any]],
    samples: int,
    rng: np.random.Generator,
) -> tuple[dict[int, npt.NDArray[np.int32]], dict[int, int]]:
    """Up to ``samples`` random voxel coordinates per foreground class, and every class's count.

    Args:
        label: ``(*spatial, 1)`` or ``(*spatial)`` integer class map.
    Returns:
        ``({class: (n, ndim) int32 coordinates}, {class: voxel count})``; class 0 is counted
        but gets no coordinates.
    """
    spatial = label.shape[:-1] if label.ndim > 1 and label.shape[-1] == 1 else label.shape
    flat = label.reshape(-1)
    if flat.size and flat.min() < 0:
        raise PipelineError(f"label holds negative class ids ({flat.min()})")
    counts = np.bincount(flat) if flat.size else np.zeros(1, np.int64)
    class_voxels = {int(k): int(n) for k, n in enumerate(counts) if n}
    coordinates: dict[int, npt.NDArray[np.int32]] = {}
    for k in sorted(class_voxels):
        if k == 0:
            continue
        index = np.flatnonzero(flat == k)
        if index.size > samples:
            index = np.sort(rng.choice(index, size=samples, replace=False))
        coordinates[k] = np.stack(np.unravel_index(index, spatial), axis=1).astype(np.int32)
    return coordinates, class_voxels


def _rng_for(key: CacheKey, seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, int(key.digest[:16], 16)]))


@dataclass
class PreparedEntry:
    """A case turned into exactly what is stored, identical for disk and memory modes."""

    image: npt.NDArray[Any]
    label: npt.NDArray[Any] | None
    attributes: dict[str, Any]
    foreground: dict[int, npt.NDArray[np.int32]]


def prepare_entry(
    key: CacheKey,
    case: Case,
    settings: CacheSettings,
    foreground: Mapping[int, npt.ArrayLike] | None,
) -> PreparedEntry:
    """``case`` as it is stored under ``key``: image dtype, label check, foreground subset
    (``foreground`` given, or a random one), JSON attributes."""
    if case.id != key.case_id:
        raise PipelineError(f"cache key is for case {key.case_id}, got case {case.id}")
    image = _image_array(case, settings.float16)
    label = None if case.label is None else case.label.array
    if label is not None and label.dtype.kind not in "ub":
        raise PipelineError(
            f"case {case.id}: the preprocessed label has dtype {label.dtype}; expected "
            "unsigned integer class ids"
        )
    class_voxels: dict[int, int] = {}
    coords: dict[int, npt.NDArray[np.int32]] = {}
    if label is not None:
        computed, class_voxels = foreground_coordinates(
            label, settings.foreground_samples, _rng_for(key, settings.seed)
        )
        coords = computed
    if foreground is not None:
        coords = {}
        for k, value in foreground.items():
            array = np.asarray(value, dtype=np.int32).reshape(-1, case.image.ndim)
            coords[int(k)] = array
    attributes = {
        "case_id": case.id,
        "key": key.digest,
        "affine": case.image.affine.tolist(),
        "label_affine": None if case.label is None else case.label.affine.tolist(),
        "meta": as_json(case.meta, f"case {case.id}: Case.meta"),
        "image_meta": as_json(case.image.meta, f"case {case.id}: image meta"),
        "label_meta": as_json(
            {} if case.label is None else case.label.meta, f"case {case.id}: label meta"
        ),
        "class_voxels": {str(k): n for k, n in class_voxels.items()},
    }
    return PreparedEntry(image, label, attributes, coords)


# --- the completion marker --------------------------------------------------------------


def completion_marker(key: CacheKey, prepared: PreparedEntry) -> dict[str, Any]:
    """The completion marker of an entry (the object-store cache adds its data prefix)."""
    raw = prepared.image.size * 4 + (0 if prepared.label is None else prepared.label.size * 4)
    return {
        "format": FORMAT_VERSION,
        "layout": LAYOUT,
        "key": key.digest,
        "case_id": key.case_id,
        "created": time.time(),
        "image": {"shape": list(prepared.image.shape), "dtype": str(prepared.image.dtype)},
        "label": None
        if prepared.label is None
        else {"shape": list(prepared.label.shape), "dtype": str(prepared.label.dtype)},
        "raw_float32_bytes": int(raw),
        "key_material": key.material,
    }


def trusted_marker(marker: Any, digest: str) -> dict[str, Any] | None:
    """``marker`` if it is a complete entry's marker for ``digest`` (key, format, layout),
    else None."""
    if (
        not isinstance(marker, dict)
        or marker.get("key") != digest
        or marker.get("format") != FORMAT_VERSION
        or marker.get("layout") != LAYOUT
    ):
        return None
    return marker
