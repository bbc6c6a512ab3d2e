"""What every store of cached cases shares (``CaseStore``), and the store that writes nothing
(``MemoryCache``, on-the-fly mode)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy.typing as npt

from miscore.cache.chunkread import CompressedArray
from miscore.cache.entries import DEFAULT_CHUNK, CachedCase, as_json, cached_case, prepare_entry
from miscore.cache.keys import CacheKey, CacheSettings, make_key
from miscore.core.errors import InputError
from miscore.core.volume import Case


class CaseStore(ABC):
    """What every store shares: keys, chunking and ``get_or_build``; subclasses store and
    look up (``MemoryCache``, ``CaseCache``, ``ObjectStoreCache``)."""

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
        """The spatial chunk shape of arrays of shape ``spatial`` (capped at the shape)."""
        chunks = self.settings.chunks
        if chunks is None:
            chunks = (DEFAULT_CHUNK.get(len(spatial), 64),) * len(spatial)
        if len(chunks) != len(spatial):
            raise InputError(
                f"cache chunks {list(chunks)} have {len(chunks)} axes; the data has "
                f"{len(spatial)} spatial axes"
            )
        return tuple(min(int(c), int(n)) for c, n in zip(chunks, spatial, strict=True))

    @abstractmethod
    def get(self, key: CacheKey) -> CachedCase | None:
        """The complete entry of ``key``, or None."""

    @abstractmethod
    def put(
        self,
        key: CacheKey,
        case: Case,
        foreground: Mapping[int, npt.ArrayLike] | None = None,
    ) -> CachedCase:
        """Store ``case`` (already preprocessed) under ``key`` and return it as read back.

        ``foreground`` gives the coordinates per class; None computes a random subset.
        """

    @abstractmethod
    def _record(self, hit: bool, key: CacheKey | None = None) -> None:
        """Count a lookup of ``key`` (hit or miss), for ``info``'s hit rate."""

    def get_or_build(self, key: CacheKey, build: Callable[[], Case]) -> CachedCase:
        """The entry of ``key``; on a miss call ``build()`` (read + preprocess) and store it."""
        found = self.get(key)
        self._record(found is not None, key)
        if found is not None:
            return found
        return self.put(key, build())


class MemoryCache(CaseStore):
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
        prepared = prepare_entry(key, case, self.settings, foreground)
        # Held as compressed chunks, as on disk: a training set in memory takes the cache's
        # size on disk (0.17-0.38 of raw float32 with lz4), not its raw size.
        chunks = self._chunks(tuple(int(n) for n in prepared.image.shape[:-1]))
        compression = self.settings.compression

        def pack(array: npt.NDArray[Any]) -> CompressedArray:
            return CompressedArray.from_array(array, (*chunks, int(array.shape[-1])), compression)

        image = pack(prepared.image)
        label = None if prepared.label is None else pack(prepared.label)
        cached = cached_case(
            as_json(prepared.attributes, "cache attributes"),
            image,
            label,
            prepared.foreground,
        )
        if self.keep:
            self._held[key.digest] = cached
            while len(self._held) > self.keep:
                self._held.popitem(last=False)
        return cached
