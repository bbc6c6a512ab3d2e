"""Fast window reads from the cache's zarr arrays: decode the chunk files directly.

zarr v3's synchronous indexing hands every read to its event-loop thread and back, about
0.3 ms per chunk on top of the decompression itself; for a training patch that touches 8-64
chunks this is as much time as the decoding (see docs/benchmarks.md). The cache writes its
arrays in one simple, fixed form (regular chunks, ``/``-separated default chunk keys, the
``bytes`` codec, optionally Blosc), so for arrays in a local folder this module reads the
chunk files a window touches and decodes them with numcodecs' Blosc in the calling thread.

Anything else (an object-store location, another codec, a sharded or differently keyed
array) is read through zarr itself: ``window_reader`` only takes the fast path for arrays whose
metadata it fully understands, so the two paths always return the same values (the tests
compare them on every supported form).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from miscore.errors import PipelineError

__all__ = ["ChunkFileReader", "window_reader"]

_REMEDY = "remove the cache entry (`miscore cache clear`) and run again"


class ChunkFileReader:
    """A read-only, sliceable view of a zarr v3 array in a local folder.

    Supports what ``miscore.patching.extract_patch`` asks: ``shape``, ``dtype`` and
    ``reader[tuple of slices]`` with steps of 1 (trailing axes may be omitted). Other keys
    go to the zarr array.
    """

    def __init__(
        self,
        array: Any,
        folder: Path,
        chunk_shape: tuple[int, ...],
        dtype: np.dtype[Any],
        fill_value: Any,
        blosc: bool,
    ) -> None:
        self.array = array
        self.folder = folder
        self.chunk_shape = chunk_shape
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = dtype
        self.fill_value = fill_value
        self._codec: Any = None
        if blosc:
            from numcodecs import Blosc

            self._codec = Blosc()  # decoding reads the codec settings from each chunk's header
        self._chunk_bytes = int(np.prod(chunk_shape)) * dtype.itemsize

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

    def _chunk(self, index: tuple[int, ...]) -> npt.NDArray[Any] | None:
        path = self.folder.joinpath("c", *(str(i) for i in index))
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None  # never written: every value is the fill value
        try:
            data = raw if self._codec is None else self._codec.decode(raw)
        except (RuntimeError, ValueError) as exc:
            raise PipelineError(f"{path}: damaged cache chunk ({exc}); {_REMEDY}") from None
        if len(data) != self._chunk_bytes:
            raise PipelineError(
                f"{path}: damaged cache chunk ({len(data)} bytes, expected "
                f"{self._chunk_bytes}); {_REMEDY}"
            )
        return np.frombuffer(data, dtype=self.dtype).reshape(self.chunk_shape)

    def __getitem__(self, key: Any) -> Any:
        bounds = self._bounds(key)
        if bounds is None:
            return self.array[key]
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
        whole: npt.NDArray[Any] = np.asarray(self[tuple(slice(None) for _ in self.shape)])
        return whole if dtype is None else whole.astype(dtype)


def _fast_form(metadata: dict[str, Any]) -> tuple[tuple[int, ...], np.dtype[Any], bool] | None:
    """``(chunk_shape, dtype, blosc)`` when the metadata is a form the reader handles."""
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
    blosc = False
    if len(codecs) == 2 and codecs[1].get("name") == "blosc":
        blosc = True
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
    return chunk_shape, dtype.newbyteorder("<"), blosc


def window_reader(array: Any) -> Any:
    """A ``ChunkFileReader`` for a zarr array in a local folder whose form it knows, else
    ``array`` itself. Anything that is not a zarr array is returned unchanged."""
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
    chunk_shape, dtype, blosc = form
    folder = Path(store.root).joinpath(*str(array.path).split("/"))
    fill = np.asarray(metadata.fill_value, dtype=dtype)
    return ChunkFileReader(array, folder, chunk_shape, dtype, fill, blosc)
