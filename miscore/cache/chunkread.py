"""Fast window reads from the cache's zarr arrays: decode the chunk files directly.

zarr v3's synchronous indexing hands every read to its event-loop thread and back, about
0.3 ms per chunk on top of the decompression itself; for a training patch that touches 8-64
chunks this is as much time as the decoding (see docs/benchmarks.md). The cache writes its
arrays in one simple, fixed form (regular chunks, ``/``-separated default chunk keys, the
``bytes`` codec, optionally Blosc or Zstandard), so for arrays in a local folder this module
reads the chunk files a window touches and decodes them with numcodecs in the calling thread.
``CompressedArray`` keeps an array as Blosc chunks in memory the same way (on-the-fly mode).

Anything else (an object-store location, another codec, a sharded or differently keyed
array) is read through zarr itself: ``window_reader`` only takes the fast path for arrays whose
metadata it fully understands, so the two paths always return the same values (the tests
compare them on every supported form).

A chunk file that is missing reads as the fill value, as zarr reads it, except for arrays of
a cache entry (opened through ``miscore.cache.zarrstores``): the cache writes every chunk, so
there a missing file means the entry was removed while the run read it, and reading it raises
``CacheError`` naming the entry instead of returning zeros.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from miscore.core.errors import PipelineError

__all__ = [
    "ChunkFileReader",
    "ChunkedArray",
    "CompressedArray",
    "blosc_settings",
    "window_reader",
]

_REMEDY = "remove the cache entry (`miscore cache clear`) and run again"


def blosc_settings(compression: str, itemsize: int) -> tuple[int, Literal["shuffle", "bitshuffle"]]:
    """The cache's Blosc level and shuffle for a codec name (``zstd``/``lz4``) and item size:
    byte shuffle groups the bytes of multi-byte values; bit shuffle suits 1-byte labels."""
    return (3 if compression == "zstd" else 5), ("shuffle" if itemsize > 1 else "bitshuffle")


class ChunkedArray:
    """A read-only, sliceable array stored as compressed chunks; subclasses say where.

    Supports what ``miscore.pipeline.patching.extract_patch`` asks: ``shape``, ``dtype`` and
    ``array[tuple of slices]`` with steps of 1 (trailing axes may be omitted), decoding only
    the chunks the window touches. Other keys read the whole array first (``_other``).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        chunk_shape: tuple[int, ...],
        dtype: np.dtype[Any],
        fill_value: Any,
        codec: str | None,
    ) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.chunk_shape = tuple(int(n) for n in chunk_shape)
        self.dtype = np.dtype(dtype)
        self.fill_value = np.asarray(fill_value, dtype=self.dtype)
        self._codec: Any = None
        if codec == "blosc":
            from numcodecs import Blosc

            self._codec = Blosc()  # decoding reads the codec settings from each chunk's header
        elif codec == "zstd":
            from numcodecs import Zstd

            self._codec = Zstd()

    def _raw(self, index: tuple[int, ...]) -> tuple[bytes | None, tuple[int, ...], str]:
        """The stored bytes of chunk ``index`` (None: never written, all fill value), the
        shape they decode to, and a name for error messages."""
        raise NotImplementedError

    def _other(self, key: Any) -> Any:
        return np.asarray(self)[key]

    def _chunk(self, index: tuple[int, ...]) -> npt.NDArray[Any] | None:
        raw, shape, where = self._raw(index)
        if raw is None:
            return None
        try:
            data = raw if self._codec is None else self._codec.decode(raw)
        except (RuntimeError, ValueError) as exc:
            raise PipelineError(f"{where}: damaged cache chunk ({exc}); {_REMEDY}") from None
        expected = int(np.prod(shape)) * self.dtype.itemsize
        if len(data) != expected:
            raise PipelineError(
                f"{where}: damaged cache chunk ({len(data)} bytes, expected {expected}); {_REMEDY}"
            )
        return np.frombuffer(data, dtype=self.dtype).reshape(shape)

    def _bounds(self, key: Any) -> list[tuple[int, int]] | None:
        """``(start, stop)`` per axis for a tuple of plain slices, else None."""
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > len(self.shape):
            return None
        bounds = []
        for axis, n in enumerate(self.shape):
            part = key[axis] if axis < len(key) else slice(None)
            if not isinstance(part, slice) or part.step not in (None, 1):
                return None
            start, stop, _ = part.indices(n)
            if stop <= start:
                return None
            bounds.append((start, stop))
        return bounds

    def __getitem__(self, key: Any) -> Any:
        bounds = self._bounds(key)
        if bounds is None:
            return self._other(key)
        out = np.empty([b - a for a, b in bounds], dtype=self.dtype)
        pairs = zip(bounds, self.chunk_shape, strict=True)
        ranges = [range(a // c, (b - 1) // c + 1) for (a, b), c in pairs]
        for index in itertools.product(*ranges):
            source, target = [], []
            for i, (a, b), c in zip(index, bounds, self.chunk_shape, strict=True):
                low, high = max(a, i * c), min(b, (i + 1) * c)
                source.append(slice(low - i * c, high - i * c))
                target.append(slice(low - a, high - a))
            chunk = self._chunk(index)
            if chunk is None:
                out[tuple(target)] = self.fill_value
            else:
                out[tuple(target)] = chunk[tuple(source)]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> npt.NDArray[Any]:
        if 0 in self.shape:
            return np.empty(self.shape, dtype=self.dtype if dtype is None else dtype)
        whole: npt.NDArray[Any] = np.asarray(self[tuple(slice(0, n) for n in self.shape)])
        return whole if dtype is None else whole.astype(dtype)


class ChunkFileReader(ChunkedArray):
    """A zarr v3 array in a local folder, read by decoding its chunk files directly.

    Only made by ``window_reader``, which checks that the array's form is one this reads
    exactly (edge chunks are stored full size). Keys other than slices go to zarr.
    ``entry`` (a cache entry's name) makes a missing chunk file a ``CacheError``; without it
    a missing chunk reads as the fill value, as zarr reads it.
    """

    def __init__(
        self,
        array: Any,
        folder: Path,
        chunk_shape: tuple[int, ...],
        dtype: np.dtype[Any],
        fill_value: Any,
        codec: str | None,
        entry: str | None = None,
    ) -> None:
        super().__init__(tuple(array.shape), chunk_shape, dtype, fill_value, codec)
        self.array = array
        self.folder = folder
        self.entry = entry

    def _raw(self, index: tuple[int, ...]) -> tuple[bytes | None, tuple[int, ...], str]:
        path = self.folder.joinpath("c", *(str(i) for i in index))
        try:
            return path.read_bytes(), self.chunk_shape, str(path)
        except (FileNotFoundError, NotADirectoryError):
            # No extra stat on the hot path: only a chunk that is not there costs anything.
            if self.entry is not None:
                from miscore.cache.zarrstores import missing_chunk_error

                chunk = "/".join(["c", *(str(i) for i in index)])
                raise missing_chunk_error(self.entry, f"{self.array.path}/{chunk}") from None
            return None, self.chunk_shape, str(path)

    def _other(self, key: Any) -> Any:
        return self.array[key]


class CompressedArray(ChunkedArray):
    """An array held in memory as Blosc-compressed chunks (on-the-fly mode's store).

    Chunks that hold only the fill value are not kept; edge chunks keep their own size.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        chunk_shape: tuple[int, ...],
        dtype: np.dtype[Any],
        fill_value: Any,
        chunks: dict[tuple[int, ...], bytes],
        codec: str | None,
    ) -> None:
        super().__init__(shape, chunk_shape, dtype, fill_value, codec)
        self._chunks = chunks

    @classmethod
    def from_array(
        cls,
        array: npt.ArrayLike,
        chunk_shape: Sequence[int],
        compression: str = "lz4",
        fill_value: Any = 0,
    ) -> CompressedArray:
        """Compress ``array`` chunk by chunk: ``compression`` is a Blosc codec name (the
        cache's ``zstd``/``lz4``, same levels and shuffle) or ``none``."""
        data = np.ascontiguousarray(array)
        dtype = data.dtype.newbyteorder("<") if data.dtype.itemsize > 1 else data.dtype
        data = data.astype(dtype, copy=False)
        chunk_shape = tuple(
            max(1, min(int(c), int(n))) for c, n in zip(chunk_shape, data.shape, strict=True)
        )
        codec: Any = None
        if compression != "none":
            from numcodecs import Blosc

            level, shuffle = blosc_settings(compression, data.dtype.itemsize)
            codec = Blosc(
                cname=compression,
                clevel=level,
                shuffle=Blosc.SHUFFLE if shuffle == "shuffle" else Blosc.BITSHUFFLE,
            )
        fill = np.asarray(fill_value, dtype=dtype)
        chunks: dict[tuple[int, ...], bytes] = {}
        counts = [range(-(-n // c)) for n, c in zip(data.shape, chunk_shape, strict=True)]
        for index in itertools.product(*counts):
            pairs = zip(index, chunk_shape, strict=True)
            part = data[tuple(slice(i * c, (i + 1) * c) for i, c in pairs)]
            if np.all(part == fill):
                continue
            block = np.ascontiguousarray(part)
            chunks[index] = block.tobytes() if codec is None else bytes(codec.encode(block))
        return cls(data.shape, chunk_shape, dtype, fill, chunks, None if codec is None else "blosc")

    @property
    def nbytes_stored(self) -> int:
        """Bytes the compressed chunks take."""
        return sum(len(b) for b in self._chunks.values())

    def _raw(self, index: tuple[int, ...]) -> tuple[bytes | None, tuple[int, ...], str]:
        shape = tuple(
            min(c, n - i * c) for i, c, n in zip(index, self.chunk_shape, self.shape, strict=True)
        )
        return self._chunks.get(index), shape, f"in-memory chunk {index}"


_Form = tuple[tuple[int, ...], np.dtype[Any], str | None]


def _fast_form(metadata: dict[str, Any]) -> _Form | None:
    """``(chunk_shape, dtype, codec)`` when the metadata is a form the reader handles; codec
    is None (``bytes`` only), ``blosc`` or ``zstd``."""
    if metadata.get("zarr_format") != 3 or metadata.get("storage_transformers"):
        return None
    grid = metadata.get("chunk_grid") or {}
    encoding = metadata.get("chunk_key_encoding") or {}
    if grid.get("name") != "regular" or encoding.get("name") != "default":
        return None
    if (encoding.get("configuration") or {}).get("separator", "/") != "/":
        return None
    codecs = list(metadata.get("codecs") or ())
    if not codecs or codecs[0].get("name") != "bytes":
        return None
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    codec = None
    if len(codecs) == 2 and codecs[1].get("name") in ("blosc", "zstd"):
        codec = str(codecs[1]["name"])
    elif len(codecs) != 1:
        return None
    try:
        dtype = np.dtype(str(metadata.get("data_type")))
    except TypeError:
        return None
    if dtype.kind not in "biuf" or (dtype.itemsize > 1 and endian != "little"):
        return None
    chunk_shape = tuple(int(n) for n in (grid.get("configuration") or {}).get("chunk_shape", ()))
    if len(chunk_shape) != len(metadata.get("shape", ())) or min(chunk_shape, default=0) < 1:
        return None
    return chunk_shape, dtype.newbyteorder("<"), codec


def window_reader(array: Any) -> Any:
    """A ``ChunkFileReader`` for a zarr array in a local folder whose form it knows, else
    ``array`` itself. Anything that is not a zarr array is returned unchanged. An array of a
    cache entry (an ``EntryLocalStore``) gets a reader for which a missing chunk is an error."""
    try:
        from zarr.storage import LocalStore
    except ImportError:  # pragma: no cover - zarr is a dependency
        return array
    store = getattr(array, "store", None)
    metadata = getattr(array, "metadata", None)
    if not isinstance(store, LocalStore) or metadata is None:
        return array
    form = _fast_form(metadata.to_dict())
    if form is None:
        return array
    chunk_shape, dtype, codec = form
    folder = Path(store.root).joinpath(*str(array.path).split("/"))
    from miscore.cache.zarrstores import EntryLocalStore

    entry = store.entry if isinstance(store, EntryLocalStore) else None
    return ChunkFileReader(array, folder, chunk_shape, dtype, metadata.fill_value, codec, entry)
