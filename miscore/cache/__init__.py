"""The cache of preprocessed cases: one zarr v3 group per case, keyed by all it depends on.

A case is read and preprocessed (the deterministic steps) once; its image and label are stored
chunked and compressed, with the geometry, ``Case.meta`` (the steps' inverse state) and a small
random subset of foreground voxel coordinates per class for the patch sampler. Reading gives
zarr arrays, so a patch reads only the chunks it touches.

The key (``CaseCache.key``) hashes the input files' identity, the deterministic pipeline
(``pipeline_fingerprint``: preprocessing entries with their defaults, the versions of the
plugins involved, miscore's version) and the cache's own settings. Change any of them and a
new entry is made; nothing stale is ever served. Old entries stay until ``clear``.

Layout under the cache location::

    CACHEDIR.TAG            tells backup tools to skip the folder
    entries/<key>/case.zarr a zarr v3 group: image, label, foreground/<class>
    entries/<key>/complete.json  the completion marker, written last
    tmp/<key>.<pid>.<hex>/  entries being built; renamed into entries/ when complete
    stats                   one byte per lookup: h (hit) or m (miss)

An entry is trusted only when its ``complete.json`` (written last) names its key. Builds are
written under ``tmp/`` and renamed into place, so a killed build leaves only a temporary folder
that no reader looks at; ``clean_temp`` removes those when they are old. Two processes building
the same entry both write; the first rename wins and the other discards its copy.

Object stores (a URL location: ``s3://``, ``gs://``, ``az://``, ``memory://``, any scheme
fsspec knows; ``file://`` is a local folder) have no rename, so ``ObjectStoreCache`` publishes
differently. ``CaseCache(url)`` returns one. Layout under the URL::

    data/<key>.<unix_s>.<pid>.<hex>/case.zarr  one writer's arrays (a unique prefix per build)
    entries/<key>.json       the marker: written last, names the data prefix it vouches for
    stats/<ms>.<h|m>.<key>.<hex>  one empty object per counted lookup (hit or miss)

A writer writes its arrays under its own data prefix, then PUTs the marker (one PUT is atomic
on object stores) with "create only" semantics where the store has them (S3 ``If-None-Match``;
elsewhere check-then-write): the first complete writer of a key wins and later ones delete
their own prefix and read the winner's. A reader trusts only a marker whose key and format
match and opens the prefix it names. A writer killed mid-build leaves a prefix that no marker
names: never read, and removed by ``clean_temp`` once older than the stale threshold (its age
is the time in its name). Object timestamps cannot be touched, so the last use of an entry is
the newest hit recorded under ``stats/`` (or its creation).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from miscore.cache.chunkread import CompressedArray, blosc_settings, window_reader
from miscore.core.errors import InputError, PipelineError
from miscore.core.volume import Case, Volume

if TYPE_CHECKING:
    from miscore.core.components import Subfunction
    from miscore.core.config import CacheConfig, Config
    from miscore.core.plugins import PluginManager
    from miscore.data.dataset import Dataset

#: Environment variable naming the cache location (below ``--cache``, above ``cache.path``).
CACHE_ENV = "MISCORE_CACHE_DIR"
#: Bumped when the entry layout changes; part of every key.
FORMAT_VERSION = 1
MARKER = "complete.json"
STORE = "case.zarr"
ENTRIES = "entries"
TEMP = "tmp"
STATS = "stats"
#: Object stores: the folder of per-writer data prefixes.
DATA = "data"
#: Object stores: tries of a create-only marker PUT that S3 answers with 409 (a race).
_CREATE_ATTEMPTS = 5
#: Spatial chunk length per axis when none is given: 64^3 for 3D, 256^2 for 2D.
DEFAULT_CHUNK = {3: 64, 2: 256}
#: Foreground voxel coordinates kept per class (a uniform random subset).
DEFAULT_FOREGROUND_SAMPLES = 10_000
FLOAT16_MAX = float(np.finfo(np.float16).max)

Compression = Literal["zstd", "lz4", "none"]


class SliceableArray(Protocol):
    """What the loader reads: a numpy array or a zarr array (slicing reads only needed chunks)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, key: Any) -> Any: ...


# --- where it lives ---------------------------------------------------------------------


def default_cache_location() -> str:
    """The user's cache folder for miscore (``platformdirs.user_cache_dir("miscore")``)."""
    import platformdirs

    return str(platformdirs.user_cache_dir("miscore"))


_URL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*::)*[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(location: Path | str) -> bool:
    """Whether ``location`` is a URL for fsspec (``s3://b/x``, ``simplecache::s3://b/x``);
    ``file://`` and plain paths are local folders."""
    text = str(location)
    return bool(_URL.match(text)) and not text.startswith("file://")


def resolve_cache_location(
    config: Config | CacheConfig | None = None, cli_value: str | None = None
) -> str:
    """Where the cache lives: ``--cache``, else ``$MISCORE_CACHE_DIR``, else ``cache.path``,
    else the user's cache folder. ``$VARS`` are expanded; a URL is kept as it is (no trailing
    ``/``), a path gets ``~`` expanded and is made absolute (``file://`` is a path)."""
    cache_config = getattr(config, "cache", config)
    configured = getattr(cache_config, "path", None)
    for value in (cli_value, os.environ.get(CACHE_ENV), configured):
        if value:
            value = os.path.expandvars(value)
            if is_url(value):
                return value.rstrip("/")
            path = Path(os.path.expanduser(value.removeprefix("file://")))
            return str(path.absolute())
    return default_cache_location()


# --- the key ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheSettings:
    """How entries are stored; every field enters the key.

    Args:
        compression: Blosc codec (``lz4`` reads fastest, ``zstd`` is smaller) or ``none``.
        float16: store images as float16 (half the bytes; values beyond +-65504 are refused).
        content_hash: identify input files by a SHA-256 of their bytes instead of
            path + size + mtime (slower to key, survives copies and ``touch``).
        chunks: spatial chunk shape; None gives 64 per axis (3D) or 256 (2D). The patch
            shape, or half of it, is a good choice.
        foreground_samples: foreground coordinates kept per class.
        seed: seed of the foreground subset (mixed with each entry's key).
    """

    compression: Compression = "lz4"
    float16: bool = False
    content_hash: bool = False
    chunks: tuple[int, ...] | None = None
    foreground_samples: int = DEFAULT_FOREGROUND_SAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.compression not in ("zstd", "lz4", "none"):
            raise InputError(
                f"cache.compression: {self.compression!r} is not one of zstd, lz4, none"
            )
        if self.chunks is not None and any(int(n) < 1 for n in self.chunks):
            raise InputError(f"cache chunks must be positive; got {list(self.chunks)}")
        if self.foreground_samples < 0:
            raise InputError("cache foreground_samples must be >= 0")

    @classmethod
    def from_config(
        cls,
        cache: CacheConfig,
        chunks: Sequence[int] | None = None,
        foreground_samples: int = DEFAULT_FOREGROUND_SAMPLES,
        seed: int = 0,
    ) -> CacheSettings:
        return cls(
            compression=cache.compression,
            float16=cache.float16,
            content_hash=cache.content_hash,
            chunks=None if chunks is None else tuple(int(n) for n in chunks),
            foreground_samples=foreground_samples,
            seed=seed,
        )

    def key_part(self) -> dict[str, Any]:
        return {
            "compression": self.compression,
            "image_dtype": "float16" if self.float16 else "float32",
            "content_hash": self.content_hash,
            "foreground_samples": self.foreground_samples,
            "seed": self.seed,
        }


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path: Path | str, content_hash: bool = False) -> dict[str, Any]:
    """What identifies an input: absolute path, size and mtime_ns (or a SHA-256 of the bytes).

    A folder (a DICOM series) is identified by every file below it.
    """
    path = Path(path).absolute()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    parts: list[dict[str, Any]] = []
    for file in files:
        name = file.relative_to(path).as_posix() if path.is_dir() else ""
        if content_hash:
            parts.append({"name": name, "sha256": _sha256_file(file)})
        else:
            stat = file.stat()
            parts.append({"name": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    # With a content hash the key does not depend on where the file lies: copies share entries.
    return {"files": parts} if content_hash else {"path": str(path), "files": parts}


def split_cacheable(
    steps: Sequence[Subfunction],
) -> tuple[list[Subfunction], list[Subfunction]]:
    """``(cached, on_access)``: the deterministic steps up to the first that is not, and the
    rest, which the loader runs on every read of the cached case."""
    for i, step in enumerate(steps):
        if not step.deterministic:
            return list(steps[:i]), list(steps[i:])
    return list(steps), []


def pipeline_fingerprint(
    steps: Sequence[Subfunction],
    manager: PluginManager,
    *,
    training: bool,
    classes: int | None = None,
    io: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The deterministic part of the pipeline a cache entry depends on.

    Args:
        steps: the cached preprocessing steps, in order (each must be deterministic).
        manager: gives the version of the plugin that registers each step and reader.
        training: whether steps ran in training mode (a step may treat labels differently).
        classes: ``data.classes``.
        io: names of the IO components that read the inputs.
        extra: anything else the caller's preprocessing depends on (JSON-able).
    """
    entries = []
    plugins: dict[str, str] = {}
    for step in steps:
        if not step.deterministic:
            raise InputError(
                f"preprocessing step {step.name!r} is not deterministic and cannot be cached; "
                "cache only the steps before it"
            )
        entries.append(step.config())  # validated params, defaults filled in
        info = manager.plugin_of("subfunction", step.name)
        plugins[info.name] = info.version
    for name in io:
        info = manager.plugin_of("io", name)
        plugins[info.name] = info.version
    return {
        "preprocessing": entries,
        "plugins": dict(sorted(plugins.items())),
        "training": training,
        "classes": classes,
        "io": sorted(io),
        "extra": dict(extra or {}),
    }


@dataclass(frozen=True)
class CacheKey:
    """A cache key: the hex digest that names the entry and the material it was hashed from."""

    digest: str
    case_id: str
    material: dict[str, Any] = field(compare=False, hash=False, repr=False)


def make_key(
    case_id: str,
    inputs: Sequence[Path | str],
    fingerprint: Mapping[str, Any],
    settings: CacheSettings,
) -> CacheKey:
    """Hash everything an entry depends on into a ``CacheKey``."""
    from miscore.core.version import __version__

    material = {
        "format": FORMAT_VERSION,
        "miscore": __version__,
        "case_id": case_id,
        "inputs": [file_identity(p, settings.content_hash) for p in inputs],
        "pipeline": dict(fingerprint),
        "settings": settings.key_part(),
    }
    try:
        text = json.dumps(material, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"cache key of case {case_id}: not JSON-able: {exc}") from None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]
    return CacheKey(digest, case_id, json.loads(text))


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


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def _as_json(value: Any, what: str) -> Any:
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
class _Prepared:
    """A case turned into exactly what is stored, identical for disk and memory modes."""

    image: npt.NDArray[Any]
    label: npt.NDArray[Any] | None
    attributes: dict[str, Any]
    foreground: dict[int, npt.NDArray[np.int32]]


def _prepare(
    key: CacheKey,
    case: Case,
    settings: CacheSettings,
    foreground: Mapping[int, npt.ArrayLike] | None,
) -> _Prepared:
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
        "meta": _as_json(case.meta, f"case {case.id}: Case.meta"),
        "image_meta": _as_json(case.image.meta, f"case {case.id}: image meta"),
        "label_meta": _as_json(
            {} if case.label is None else case.label.meta, f"case {case.id}: label meta"
        ),
        "class_voxels": {str(k): n for k, n in class_voxels.items()},
    }
    return _Prepared(image, label, attributes, coords)


def _cached_from(
    attributes: Mapping[str, Any],
    image: SliceableArray,
    label: SliceableArray | None,
    foreground: dict[int, npt.NDArray[np.int32]],
) -> CachedCase:
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


# --- the two stores ---------------------------------------------------------------------


class CaseSource:
    """What both stores share: keys and ``get_or_build``; subclasses store and look up."""

    def __init__(self, settings: CacheSettings | None = None) -> None:
        self.settings = settings or CacheSettings()

    def key(
        self,
        case_id: str,
        inputs: Sequence[Path | str],
        fingerprint: Mapping[str, Any],
    ) -> CacheKey:
        """The key of ``case_id`` read from ``inputs`` through the pipeline ``fingerprint``."""
        return make_key(case_id, inputs, fingerprint, self.settings)

    def _chunks(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        chunks = self.settings.chunks
        if chunks is None:
            chunks = (DEFAULT_CHUNK.get(len(spatial), 64),) * len(spatial)
        if len(chunks) != len(spatial):
            raise InputError(
                f"cache chunks {list(chunks)} have {len(chunks)} axes; the data has "
                f"{len(spatial)} spatial axes"
            )
        return tuple(min(int(c), int(n)) for c, n in zip(chunks, spatial, strict=True))

    def get(self, key: CacheKey) -> CachedCase | None:
        raise NotImplementedError

    def put(
        self,
        key: CacheKey,
        case: Case,
        foreground: Mapping[int, npt.ArrayLike] | None = None,
    ) -> CachedCase:
        raise NotImplementedError

    def _record(self, hit: bool, key: CacheKey | None = None) -> None:
        """Count a lookup of ``key`` (the disk cache keeps a stats file)."""

    def get_or_build(self, key: CacheKey, build: Callable[[], Case]) -> CachedCase:
        """The entry of ``key``; on a miss call ``build()`` (read + preprocess) and store it."""
        found = self.get(key)
        self._record(found is not None, key)
        if found is not None:
            return found
        return self.put(key, build())


class MemoryCache(CaseSource):
    """On-the-fly mode (``cache.enabled: false``): nothing is written; cases are preprocessed
    on access and the last ``keep`` are held in memory, stored as on disk (same dtype, chunks
    and compression, as ``miscore.cache.chunkread.CompressedArray``)."""

    def __init__(self, settings: CacheSettings | None = None, keep: int = 2) -> None:
        super().__init__(settings)
        self.keep = max(0, keep)
        self._held: OrderedDict[str, CachedCase] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> CachedCase | None:
        found = self._held.get(key.digest)
        if found is not None:
            self._held.move_to_end(key.digest)
        return found

    def _record(self, hit: bool, key: CacheKey | None = None) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1

    def put(
        self,
        key: CacheKey,
        case: Case,
        foreground: Mapping[int, npt.ArrayLike] | None = None,
    ) -> CachedCase:
        prepared = _prepare(key, case, self.settings, foreground)
        # Held as compressed chunks, as on disk: a training set in memory takes the cache's
        # size on disk (0.17-0.38 of raw float32 with lz4), not its raw size.
        chunks = self._chunks(tuple(int(n) for n in prepared.image.shape[:-1]))
        compression = self.settings.compression

        def pack(array: npt.NDArray[Any]) -> CompressedArray:
            return CompressedArray.from_array(array, (*chunks, int(array.shape[-1])), compression)

        image = pack(prepared.image)
        label = None if prepared.label is None else pack(prepared.label)
        cached = _cached_from(
            _as_json(prepared.attributes, "cache attributes"),
            image,
            label,
            prepared.foreground,
        )
        if self.keep:
            self._held[key.digest] = cached
            while len(self._held) > self.keep:
                self._held.popitem(last=False)
        return cached


class CacheEntry(BaseModel):
    """One complete entry on disk, as ``miscore cache info`` lists it."""

    key: str
    case_id: str
    created: float = Field(description="Unix time the entry was completed")
    last_used: float = Field(
        description="Unix time of the last hit (local: marker mtime; URL: newest recorded hit)"
    )
    stored_bytes: int = Field(description="bytes of the entry's files")
    raw_float32_bytes: int = Field(description="image + label as float32 arrays")


class CacheInfo(BaseModel):
    """A summary of a disk cache."""

    location: str
    entries: int
    cases: int = Field(description="distinct case ids")
    stored_bytes: int
    raw_float32_bytes: int
    ratio: float | None = Field(description="stored / raw float32; None when empty")
    temp_folders: int = Field(description="builds in progress or left by a crash")
    hits: int
    misses: int
    hit_rate: float | None


def _folder_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
    return total


def _valid_marker(marker: Any, digest: str) -> dict[str, Any] | None:
    """``marker`` if it is a complete entry's marker for ``digest`` (key, format), else None."""
    if (
        not isinstance(marker, dict)
        or marker.get("key") != digest
        or marker.get("format") != FORMAT_VERSION
    ):
        return None
    return marker


def _read_group(group: Any) -> CachedCase:
    """A ``CachedCase`` from an entry's zarr group (local folder or object store)."""
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
    return _cached_from(attributes, arrays["image"], arrays.get("label"), foreground)


def _marker_of(key: CacheKey, prepared: _Prepared) -> dict[str, Any]:
    """The completion marker of an entry (the object-store cache adds its data prefix)."""
    raw = prepared.image.size * 4 + (0 if prepared.label is None else prepared.label.size * 4)
    return {
        "format": FORMAT_VERSION,
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


def _write_marker(folder: Path, marker: Mapping[str, Any]) -> None:
    """Write the completion marker; it is written last, after every array."""
    (folder / MARKER).write_text(json.dumps(marker, sort_keys=True), encoding="utf-8")


class CaseCache(CaseSource):
    """The disk cache at a local folder (see the module docstring for layout and guarantees),
    or, given a URL, at an object store (``CaseCache(url)`` returns an ``ObjectStoreCache``).

    Args:
        location: the cache folder or URL (``resolve_cache_location`` finds it from config
            and CLI); ``location`` (the property) gives back the string that reopens it.
        settings: storage settings; they are part of every key.
        stale_temp_hours: temporary build folders older than this are removed on open (a
            crashed build's leftovers; a live build this old is unlikely).
    """

    def __new__(cls, location: Path | str, *args: Any, **kwargs: Any) -> CaseCache:
        target: type[CaseCache] = cls
        if cls is CaseCache and is_url(location):
            target = ObjectStoreCache
        return object.__new__(target)

    def __init__(
        self,
        location: Path | str,
        settings: CacheSettings | None = None,
        *,
        stale_temp_hours: float = 6.0,
    ) -> None:
        super().__init__(settings)
        self.root = Path(str(location).removeprefix("file://")).expanduser().absolute()
        self.entries_dir = self.root / ENTRIES
        self.temp_dir = self.root / TEMP
        try:
            self.entries_dir.mkdir(parents=True, exist_ok=True)
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            tag = self.root / "CACHEDIR.TAG"
            if not tag.exists():
                tag.write_text(
                    "Signature: 8a477f597d28d172789f06886806bc55\n"
                    "# miscore cache of preprocessed cases; `miscore cache clear` empties it.\n",
                    encoding="utf-8",
                )
        except OSError as exc:
            raise InputError(
                f"cache location {self.root}: cannot create it ({exc.strerror}); "
                f"choose another with --cache or {CACHE_ENV}"
            ) from None
        self.clean_temp(stale_temp_hours * 3600.0)

    @property
    def location(self) -> str:
        """The string that opens this cache again (in another process): a path or a URL."""
        return str(self.root)

    # --- lookups ------------------------------------------------------------------------

    def entry_path(self, key: CacheKey | str) -> Path:
        digest = key.digest if isinstance(key, CacheKey) else key
        return self.entries_dir / digest

    def _marker(self, folder: Path, digest: str) -> dict[str, Any] | None:
        """The marker of a complete entry named ``digest``, else None."""
        try:
            marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return _valid_marker(marker, digest)

    def get(self, key: CacheKey) -> CachedCase | None:
        """The complete entry of ``key``, or None (a missing or incomplete entry)."""
        folder = self.entry_path(key)
        if self._marker(folder, key.digest) is None:
            return None
        try:
            cached = self._open(folder)
        except FileNotFoundError:  # removed by `cache clear` meanwhile
            return None
        # The marker's mtime is the last use, for `cache clear --older-than`.
        with contextlib.suppress(OSError):
            os.utime(folder / MARKER)
        return cached

    def _open(self, folder: Path) -> CachedCase:
        import zarr

        return _read_group(zarr.open_group(str(folder / STORE), mode="r"))

    def _record(self, hit: bool, key: CacheKey | None = None) -> None:
        # One byte per lookup, appended: concurrent processes never lose a count.
        try:
            with (self.root / STATS).open("ab") as handle:
                handle.write(b"h" if hit else b"m")
        except OSError:
            pass

    # --- writing ------------------------------------------------------------------------

    def _compressors(self, itemsize: int) -> Any:
        from zarr.codecs import BloscCodec

        if self.settings.compression == "none":
            return None
        clevel, shuffle = blosc_settings(self.settings.compression, itemsize)
        return BloscCodec(
            cname=self.settings.compression, clevel=clevel, shuffle=shuffle, typesize=itemsize
        )

    def _write(self, folder: Path, key: CacheKey, prepared: _Prepared) -> None:
        import zarr

        group = zarr.open_group(
            str(folder / STORE), mode="w-", zarr_format=3, attributes=prepared.attributes
        )
        self._write_arrays(group, prepared)
        _write_marker(folder, _marker_of(key, prepared))

    def _write_arrays(self, group: Any, prepared: _Prepared) -> None:
        """Write the image, label and foreground arrays into the entry's new zarr group."""
        spatial = tuple(int(n) for n in prepared.image.shape[:-1])
        chunks = self._chunks(spatial)
        arrays = {"image": prepared.image}
        if prepared.label is not None:
            arrays["label"] = prepared.label
        for name, array in arrays.items():
            target = group.create_array(
                name,
                shape=array.shape,
                dtype=array.dtype,
                chunks=(*chunks, int(array.shape[-1])),
                compressors=self._compressors(array.dtype.itemsize),
                fill_value=0,
            )
            target[...] = array
        if prepared.foreground:
            fg_group = group.create_group("foreground")
            for k, coords in sorted(prepared.foreground.items()):
                fg_group.create_array(
                    str(k), data=coords, chunks=(max(1, len(coords)), coords.shape[1])
                )

    def put(
        self,
        key: CacheKey,
        case: Case,
        foreground: Mapping[int, npt.ArrayLike] | None = None,
    ) -> CachedCase:
        """Store ``case`` (already preprocessed) under ``key`` and return it as read back.

        ``foreground`` gives the coordinates per class; None computes a random subset.
        Safe against concurrent writers of the same key and against crashes.
        """
        prepared = _prepare(key, case, self.settings, foreground)
        final = self.entry_path(key)
        temp = self.temp_dir / f"{key.digest}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            self._write(temp, key, prepared)
            self._publish(temp, final, key.digest)
        except OSError as exc:
            raise PipelineError(
                f"case {case.id}: cannot write the cache entry under {self.root}: {exc}"
            ) from exc
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
        return self._open(final)

    def _publish(self, temp: Path, final: Path, digest: str) -> None:
        """Rename ``temp`` to ``final``; when another writer won, keep its entry."""
        for _attempt in range(3):
            try:
                os.rename(temp, final)
                return
            except OSError:
                if not final.exists():
                    raise
            if self._marker(final, digest) is not None:
                return  # another process won the race; our temp is discarded by the caller
            # An incomplete folder stands under the final name (copied in by hand, or a
            # filesystem without atomic rename): move it aside and try again.
            self._discard(final)
        raise PipelineError(f"{final}: could not publish the cache entry")

    def _discard(self, folder: Path) -> None:
        """Remove ``folder`` by first renaming it into tmp/, so readers never see it half gone."""
        trash = self.temp_dir / f"trash-{folder.name}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            os.rename(folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    # --- housekeeping -------------------------------------------------------------------

    def clean_temp(self, older_than_s: float = 0.0) -> int:
        """Remove temporary build folders older than ``older_than_s`` seconds; return how many."""
        removed = 0
        now = time.time()
        try:
            children = list(self.temp_dir.iterdir())
        except OSError:
            return 0
        for child in children:
            try:
                age = now - child.stat().st_mtime
            except OSError:
                continue
            if age >= older_than_s:
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
                removed += 1
        return removed

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, oldest first."""
        found = []
        for folder in sorted(self.entries_dir.iterdir()) if self.entries_dir.is_dir() else []:
            marker = self._marker(folder, folder.name)
            if marker is None:
                continue
            try:
                last_used = (folder / MARKER).stat().st_mtime
            except OSError:
                continue
            found.append(
                CacheEntry(
                    key=folder.name,
                    case_id=str(marker.get("case_id", "")),
                    created=float(marker.get("created", 0.0)),
                    last_used=last_used,
                    stored_bytes=_folder_bytes(folder),
                    raw_float32_bytes=int(marker.get("raw_float32_bytes", 0)),
                )
            )
        return sorted(found, key=lambda e: e.created)

    def stats(self) -> tuple[int, int]:
        """(hits, misses) recorded since the cache was last cleared."""
        try:
            data = (self.root / STATS).read_bytes()
        except OSError:
            return 0, 0
        return data.count(b"h"), data.count(b"m")

    def info(self) -> CacheInfo:
        entries = self.entries()
        stored = sum(e.stored_bytes for e in entries)
        raw = sum(e.raw_float32_bytes for e in entries)
        hits, misses = self.stats()
        return CacheInfo(
            location=self.location,
            entries=len(entries),
            cases=len({e.case_id for e in entries}),
            stored_bytes=stored,
            raw_float32_bytes=raw,
            ratio=stored / raw if raw else None,
            temp_folders=self._temp_count(),
            hits=hits,
            misses=misses,
            hit_rate=hits / (hits + misses) if hits + misses else None,
        )

    def _temp_count(self) -> int:
        """Temporary build folders (builds running or left by a crash)."""
        try:
            return sum(1 for _ in self.temp_dir.iterdir())
        except OSError:
            return 0

    def clear(self, older_than_days: float | None = None) -> int:
        """Remove entries (all, or those not used for ``older_than_days``); return how many.

        Clearing everything also resets the hit/miss counts and removes temporary folders
        older than an hour (younger ones may be builds in progress).
        """
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400.0
        removed = 0
        for folder in list(self.entries_dir.iterdir()) if self.entries_dir.is_dir() else []:
            if cutoff is not None:
                try:
                    last_used = (folder / MARKER).stat().st_mtime
                except OSError:
                    last_used = folder.stat().st_mtime
                if last_used >= cutoff:
                    continue
            self._discard(folder)
            removed += 1
        if cutoff is None:
            (self.root / STATS).unlink(missing_ok=True)
            self.clean_temp(3600.0)
        return removed


def _prefix_parts(name: str) -> tuple[str, float] | None:
    """``(digest, unix time)`` of a data prefix name ``<key>.<unix_s>.<pid>.<hex>``, else None."""
    parts = name.split(".")
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    return parts[0], float(parts[1])


def _storage_options(url: str) -> dict[str, Any]:
    """Options for the filesystem of ``url``: on S3 one GET per object. (s3fs with its default
    ``max_concurrency`` of 10 sends a HEAD before every whole-object GET, to split large objects;
    cache objects are chunks and markers, so that doubled the requests.) A value configured
    through fsspec (``FSSPEC_S3_MAX_CONCURRENCY``) is kept."""
    from fsspec.config import conf
    from fsspec.core import split_protocol

    protocol = split_protocol(url)[0]
    if protocol in ("s3", "s3a") and "max_concurrency" not in conf.get(protocol, {}):
        return {"max_concurrency": 1}
    return {}


class ObjectStoreCache(CaseCache):
    """The cache at a URL that fsspec opens (``s3://bucket/prefix``, ``gs://``, ``az://``,
    ``memory://``, ...); see the module docstring for the layout and the publish protocol.

    Construct it as ``CaseCache(url, settings)``. Credentials and endpoints come from the
    filesystem's usual configuration (for S3: ``AWS_*`` environment variables or
    ``~/.aws``; ``FSSPEC_S3_*`` variables for s3fs options).
    """

    def __init__(
        self,
        location: Path | str,
        settings: CacheSettings | None = None,
        *,
        stale_temp_hours: float = 6.0,
    ) -> None:
        CaseSource.__init__(self, settings)
        self.url = str(location).rstrip("/")
        try:
            from fsspec.core import url_to_fs

            self._options = _storage_options(self.url)
            self.fs, path = url_to_fs(self.url, **self._options)
        except (ImportError, ValueError) as exc:
            raise InputError(
                f"cache location {self.url}: cannot open it ({exc}); install the fsspec "
                "package of its scheme (s3fs for s3://, gcsfs for gs://, adlfs for az://)"
            ) from None
        self.path = str(path).rstrip("/")
        self._zarr_fs: Any = None
        try:
            self.clean_temp(stale_temp_hours * 3600.0)
        except Exception as exc:  # botocore's credential errors are not OSErrors
            raise InputError(
                f"cache location {self.url}: cannot list it ({type(exc).__name__}: {exc}); "
                "check the URL and the storage credentials"
            ) from None

    @property
    def location(self) -> str:
        return self.url

    # --- paths and small objects --------------------------------------------------------

    def _abs(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def _marker_path(self, digest: str) -> str:
        return self._abs(ENTRIES, f"{digest}.json")

    def _names(self, folder: str) -> list[str]:
        """Names directly under ``folder`` (fresh: other processes write meanwhile)."""
        full = self._abs(folder)
        self.fs.invalidate_cache(full)
        try:
            listed = self.fs.ls(full, detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(name).rstrip("/").rsplit("/", 1)[-1] for name in listed)

    def _parse_marker(self, raw: bytes, digest: str) -> dict[str, Any] | None:
        try:
            marker = _valid_marker(json.loads(raw), digest)
        except ValueError:
            return None
        if marker is None:
            return None
        data = marker.get("data")
        # Only a prefix of this key under data/ is trusted (never a path elsewhere).
        if (
            not isinstance(data, str)
            or "/" in data.removeprefix(f"{DATA}/")
            or _prefix_parts(data.removeprefix(f"{DATA}/")) is None
            or not data.startswith(f"{DATA}/{digest}.")
        ):
            return None
        return marker

    def _read_marker(self, digest: str) -> dict[str, Any] | None:
        try:
            raw = self.fs.cat_file(self._marker_path(digest))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise PipelineError(
                f"cache {self.url}: cannot read the entry marker of {digest} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return self._parse_marker(bytes(raw), digest)

    def _markers(self) -> dict[str, tuple[dict[str, Any] | None, int]]:
        """Every marker under entries/: ``{digest: (marker or None if invalid, bytes)}``."""
        digests = self._published()
        paths = [self._marker_path(d) for d in digests]
        raw = self.fs.cat(paths, on_error="omit") if paths else {}
        found: dict[str, tuple[dict[str, Any] | None, int]] = {}
        for digest, path in zip(digests, paths, strict=True):
            content = raw.get(path)
            if content is None:  # removed meanwhile
                continue
            found[digest] = (self._parse_marker(bytes(content), digest), len(content))
        return found

    def _store(self, prefix: str, read_only: bool) -> Any:
        """The zarr store of the entry under the data ``prefix``."""
        from zarr.storage import FsspecStore

        if self._zarr_fs is None:
            # zarr needs an async filesystem; it makes one (or wraps a sync one) from the URL.
            self._zarr_fs = FsspecStore.from_url(self.url, storage_options=self._options).fs
        return FsspecStore(self._zarr_fs, path=self._abs(prefix, STORE), read_only=read_only)

    def _open_prefix(self, prefix: str) -> CachedCase:
        import zarr

        # zarr_format=3: no probing for zarr v2 metadata (three requests more).
        store = self._store(prefix, True)
        return _read_group(zarr.open_group(store, mode="r", zarr_format=3))

    def _remove(self, *parts: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._abs(*parts), recursive=True)

    # --- lookups ------------------------------------------------------------------------

    def get(self, key: CacheKey) -> CachedCase | None:
        """The complete entry of ``key``, or None (no marker, or a marker not trusted)."""
        marker = self._read_marker(key.digest)
        if marker is None:
            return None
        try:
            return self._open_prefix(marker["data"])
        except (FileNotFoundError, KeyError):  # removed (or being removed) by `cache clear`
            return None
        except Exception as exc:  # botocore and aiohttp errors are not all OSErrors
            raise PipelineError(
                f"cache {self.url}: cannot open the entry {marker['data']} "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def _record(self, hit: bool, key: CacheKey | None = None) -> None:
        # Objects cannot be appended to: one empty object per counted lookup. Its name holds
        # the time and key, so it is also the entry's last use.
        digest = "-" if key is None else key.digest
        name = f"{time.time_ns() // 1_000_000}.{'h' if hit else 'm'}.{digest}"
        with contextlib.suppress(Exception):  # a count is not worth failing a run for
            self.fs.pipe_file(self._abs(STATS, f"{name}.{secrets.token_hex(4)}"), b"")

    def _lookups(self) -> list[tuple[float, bool, str]]:
        """``(unix time, hit, digest)`` of every recorded lookup."""
        found = []
        for name in self._names(STATS):
            parts = name.split(".")
            if len(parts) == 4 and parts[0].isdigit() and parts[1] in ("h", "m"):
                found.append((int(parts[0]) / 1000.0, parts[1] == "h", parts[2]))
        return found

    def _last_hits(self) -> dict[str, float]:
        last: dict[str, float] = {}
        for when, hit, digest in self._lookups():
            if hit:
                last[digest] = max(when, last.get(digest, 0.0))
        return last

    # --- writing ------------------------------------------------------------------------

    def put(
        self,
        key: CacheKey,
        case: Case,
        foreground: Mapping[int, npt.ArrayLike] | None = None,
    ) -> CachedCase:
        """Store ``case`` under its own data prefix, then publish the marker (see the module
        docstring); return the published entry (this writer's, or a winner's)."""
        import zarr

        prepared = _prepare(key, case, self.settings, foreground)
        prefix = f"{DATA}/{key.digest}.{int(time.time())}.{os.getpid()}.{secrets.token_hex(4)}"
        marker = {**_marker_of(key, prepared), "data": prefix}
        try:
            group = zarr.open_group(
                self._store(prefix, False),
                mode="w-",
                zarr_format=3,
                attributes=prepared.attributes,
            )
            self._write_arrays(group, prepared)
        except Exception as exc:  # botocore and aiohttp errors are not all OSErrors
            with contextlib.suppress(Exception):
                self._remove(prefix)  # no marker names it yet
            raise PipelineError(
                f"case {case.id}: cannot write the cache entry under {self.url}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        try:
            return self._publish_marker(key.digest, marker)
        except PipelineError:
            raise
        except Exception as exc:
            raise PipelineError(
                f"case {case.id}: cannot publish the cache entry under {self.url}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _put_new(self, path: str, body: bytes) -> None:
        """Write ``body`` unless ``path`` exists (FileExistsError); as atomic as the store
        allows: S3's conditional PUT, else check then write."""
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                self.fs.pipe_file(path, body, mode="create")
                return
            except FileExistsError:
                raise
            except (TypeError, NotImplementedError):  # no create mode: check, then write
                break
            except OSError as exc:
                # S3 answers 409 (s3fs: EBUSY) when conditional writes of one object race;
                # asked again, the loser gets 412 (FileExistsError). Never fall back to a
                # blind write here: the other writer's marker may be landing.
                if exc.errno != errno.EBUSY or attempt == _CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        try:
            self.fs.cat_file(path)
        except FileNotFoundError:
            self.fs.pipe_file(path, body)
            return
        raise FileExistsError(path)

    def _publish_marker(self, digest: str, marker: dict[str, Any]) -> CachedCase:
        path = self._marker_path(digest)
        body = json.dumps(marker, sort_keys=True).encode("utf-8")
        try:
            self._put_new(path, body)
        except FileExistsError:
            winner = self._read_marker(digest)
            if winner is not None and winner["data"] != marker["data"]:
                try:
                    cached = self._open_prefix(winner["data"])
                except (FileNotFoundError, KeyError):
                    pass  # a marker whose data is gone (or going): ours replaces it
                else:
                    self._remove(marker["data"])  # never referenced, so nobody reads it
                    return cached
            # an untrusted marker, or one whose data is gone: ours replaces it
            self.fs.pipe_file(path, body)
            return self._adopt_published(digest, marker)
        return self._open_prefix(marker["data"])

    def _adopt_published(self, digest: str, marker: dict[str, Any]) -> CachedCase:
        """After replacing a marker without create-only semantics: open what the marker
        names now. Another writer replacing it at the same moment may have won; its entry
        then serves this process too, so that no process keeps reading a prefix that no
        marker names (``clean_temp`` removes those once stale). Ours is left to
        ``clean_temp``: a reader may have opened it in between."""
        final = self._read_marker(digest)
        if final is not None and final["data"] != marker["data"]:
            with contextlib.suppress(FileNotFoundError, KeyError):
                return self._open_prefix(final["data"])
        return self._open_prefix(marker["data"])

    # --- housekeeping -------------------------------------------------------------------

    def _published(self) -> list[str]:
        """The keys that have a marker object under entries/ (one listing, no marker read)."""
        return [n.removesuffix(".json") for n in self._names(ENTRIES) if n.endswith(".json")]

    def _prefixes(self) -> dict[str, list[tuple[str, float]]]:
        """Every data prefix by key: ``{digest: [(name, unix time), ...]}`` (one listing)."""
        found: dict[str, list[tuple[str, float]]] = {}
        for name in self._names(DATA):
            parts = _prefix_parts(name)
            if parts is not None:
                found.setdefault(parts[0], []).append((name, parts[1]))
        return found

    def clean_temp(self, older_than_s: float = 0.0) -> int:
        """Remove data prefixes that no marker names (crashed or lost builds) and that are
        older than ``older_than_s`` seconds; return how many."""
        now = time.time()
        published = set(self._published())
        removed = 0
        for digest, prefixes in self._prefixes().items():
            stale = [name for name, created in prefixes if now - created >= older_than_s]
            if not stale:
                continue
            named: str | None = None
            if digest in published:
                if len(prefixes) == 1:
                    continue  # the usual case: the one prefix of a published entry (no GET)
                marker = self._read_marker(digest)
                named = None if marker is None else marker["data"].removeprefix(f"{DATA}/")
            for name in stale:
                if name != named:
                    self._remove(DATA, name)
                    removed += 1
        return removed

    def _temp_count(self) -> int:
        """Data prefixes that no marker names, from two listings (no marker is read): every
        prefix of a key without a marker, and all but one of a key with one."""
        published = set(self._published())
        return sum(len(p) - (d in published) for d, p in self._prefixes().items())

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, oldest first."""
        markers = self._markers()
        sizes: dict[str, int] = {}
        data_root = self._abs(DATA) + "/"
        self.fs.invalidate_cache(self._abs(DATA))
        try:
            listed = self.fs.find(self._abs(DATA), detail=True)
        except FileNotFoundError:
            listed = {}
        for name, info in listed.items():
            prefix = str(name).removeprefix(data_root).split("/", 1)[0]
            sizes[prefix] = sizes.get(prefix, 0) + int(info.get("size") or 0)
        last_hits = self._last_hits()
        found = []
        for digest, (marker, marker_bytes) in markers.items():
            if marker is None:
                continue
            created = float(marker.get("created", 0.0))
            found.append(
                CacheEntry(
                    key=digest,
                    case_id=str(marker.get("case_id", "")),
                    created=created,
                    last_used=max(created, last_hits.get(digest, 0.0)),
                    stored_bytes=sizes.get(marker["data"].removeprefix(f"{DATA}/"), 0)
                    + marker_bytes,
                    raw_float32_bytes=int(marker.get("raw_float32_bytes", 0)),
                )
            )
        return sorted(found, key=lambda e: e.created)

    def stats(self) -> tuple[int, int]:
        """(hits, misses) recorded since the cache was last cleared."""
        lookups = self._lookups()
        hits = sum(1 for _t, hit, _d in lookups if hit)
        return hits, len(lookups) - hits

    def clear(self, older_than_days: float | None = None) -> int:
        """Remove entries (all, or those not used for ``older_than_days``); return how many.

        The marker goes first, so no reader trusts an entry whose data is being removed.
        Clearing everything also removes the lookup records, markers that are not trusted,
        and data prefixes no marker names that are older than an hour.
        """
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400.0
        last_hits = self._last_hits() if cutoff is not None else {}
        removed = 0
        for digest, (marker, _size) in self._markers().items():
            if marker is None:
                if cutoff is None:
                    self._remove(ENTRIES, f"{digest}.json")
                continue
            if cutoff is not None:
                created = float(marker.get("created", 0.0))
                if max(created, last_hits.get(digest, 0.0)) >= cutoff:
                    continue
            self._remove(ENTRIES, f"{digest}.json")
            self._remove(marker["data"])
            removed += 1
        if cutoff is None:
            self._remove(STATS)
            self.clean_temp(3600.0)
        return removed


def dataset_key(
    store: CaseSource,
    dataset: Dataset,
    case_id: str,
    steps: Sequence[Subfunction],
    manager: PluginManager,
    config: Config,
    training: bool = True,
) -> CacheKey:
    """The key of a dataset's case: its image and label files, the steps, the readers.

    ``miscore cache build`` and training both key cases with this, so that one's entries
    are the other's hits.
    """
    source = dataset.source(case_id)
    label = [source.label] if source.label is not None else []
    inputs = [*source.images, *label]
    io_names = sorted({dataset.io_for(p).name for p in inputs})
    fingerprint = pipeline_fingerprint(
        steps, manager, training=training, classes=config.data.classes, io=io_names
    )
    return store.key(case_id, inputs, fingerprint)


def cache_dataset_case(
    store: CaseSource,
    dataset: Dataset,
    case_id: str,
    steps: Sequence[Subfunction],
    manager: PluginManager,
    config: Config,
    training: bool = True,
) -> tuple[CachedCase, bool]:
    """``(entry, hit)``: a dataset's case from the cache, read and preprocessed on a miss."""
    from miscore.data.preprocess import preprocess_case

    key = dataset_key(store, dataset, case_id, steps, manager, config, training)
    found = store.get(key)
    store._record(found is not None, key)
    if found is not None:
        _check_classes(found, dataset, config.data.classes)
        return found, True
    case = preprocess_case(dataset.load(case_id), steps, training=training)
    if case.label is not None and case.label.array.size:
        top = int(case.label.array.max())
        if top >= config.data.classes:
            raise InputError(
                f"case {case_id}: the label {dataset.source(case_id).label} holds class id "
                f"{top} but data.classes is {config.data.classes}; set data.classes to the "
                "number of classes, background included"
            )
    return store.put(key, case), False


def _check_classes(entry: CachedCase, dataset: Dataset, classes: int) -> None:
    """Refuse a cached label with class ids beyond ``data.classes`` (the key holds classes,
    so a hit was checked when it was built; this keeps entries made by older versions honest)."""
    top = max(entry.class_voxels, default=0)
    if top >= classes:
        raise InputError(
            f"case {entry.id}: the label {dataset.source(entry.id).label} holds class id "
            f"{top} but data.classes is {classes}; set data.classes to the number of classes, "
            "background included"
        )


def open_cache(
    config: Config,
    cli_value: str | None = None,
    *,
    chunks: Sequence[int] | None = None,
    foreground_samples: int = DEFAULT_FOREGROUND_SAMPLES,
) -> CaseCache | MemoryCache:
    """The store a config asks for: a ``CaseCache`` at the resolved location, or a
    ``MemoryCache`` when ``cache.enabled`` is false.

    ``chunks`` defaults to the patch shape capped at 64 voxels per axis: a random patch then
    touches few chunks, and no chunk is much larger than what a patch needs.
    """
    patch = config.patching.patch_shape
    if config.patching.mode == "slice" and patch is not None:
        # in-plane patch of 3D volumes: one slice deep along the slice axis
        patch = list(patch)
        if len(patch) == 2:
            patch.insert(config.patching.slice_axis, 1)
        patch[config.patching.slice_axis] = 1
    if chunks is None and patch is not None:
        chunks = [min(DEFAULT_CHUNK[3], int(n)) for n in patch]
    settings = CacheSettings.from_config(
        config.cache,
        chunks=chunks,
        foreground_samples=foreground_samples,
        # Not training.seed: a new training seed must not throw the cache away. The subset is
        # a uniform sample; the loader draws from it with its own seeded generator.
        seed=0,
    )
    if not config.cache.enabled:
        return MemoryCache(settings)
    return CaseCache(resolve_cache_location(config, cli_value), settings)
