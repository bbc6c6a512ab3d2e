"""The zarr stores a cache entry is read through: a missing chunk is an error, never zeros.

zarr reads a chunk that has no object as the array's fill value, because it omits chunks that
hold only the fill value (unless ``write_empty_chunks``). The cache writes every chunk (see
``entries.LAYOUT``), so a missing chunk of a published entry means the entry was removed (or
damaged) while a run read it; these stores raise ``CacheError`` naming the entry instead of
handing zarr a ``None``. Only chunk keys are checked: zarr looks for metadata objects that may
legitimately be absent. ``chunkread.window_reader`` recognises these stores, so the loader's
direct chunk-file reads fail the same way.

This module imports zarr; the cache imports it only when it opens an entry.
"""

from __future__ import annotations

from typing import Any

from zarr.storage import FsspecStore, LocalStore

from miscore.core.errors import CacheError

__all__ = [
    "EntryFsspecStore",
    "EntryLocalStore",
    "entry_name",
    "is_chunk_key",
    "missing_chunk_error",
]


def missing_chunk_error(entry: str, chunk: str) -> CacheError:
    """The error for a chunk of a published cache entry that is gone: the entry was removed
    (``miscore cache clear``, another process or machine on the same cache) while a run read
    it. ``entry`` names it (case and location), ``chunk`` is the chunk's key in the entry."""
    return CacheError(
        f"{entry}: chunk {chunk} is missing; the entry was removed while this run read it "
        "(`miscore cache clear`, or another process using the cache); run again to rebuild it "
        "(if its files were deleted by hand, `miscore cache clear` first)"
    )


def is_chunk_key(key: str) -> bool:
    """Whether ``key`` (relative to the entry's group) names a chunk: ``<array>/c/<i>/<j>...``
    with the default chunk key encoding, never a metadata object (``zarr.json``, ``.z*``)."""
    parts = key.split("/")
    return "c" in parts[:-1] and not parts[-1].endswith(".json") and not parts[-1].startswith(".z")


class EntryLocalStore(LocalStore):
    """A read-only ``LocalStore`` of one cache entry; ``entry`` names it in errors."""

    #: the entry as an error message names it (``cache entry of case X (path)``)
    entry: str = "a cache entry"

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        found = await super().get(key, prototype, byte_range)
        if found is None and is_chunk_key(key):
            raise missing_chunk_error(self.entry, key)
        return found


class EntryFsspecStore(FsspecStore):
    """A read-only ``FsspecStore`` of one cache entry at an object store; ``entry`` names it
    in errors."""

    entry: str = "a cache entry"

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        found = await super().get(key, prototype, byte_range)
        if found is None and is_chunk_key(key):
            raise missing_chunk_error(self.entry, key)
        return found


def entry_name(case_id: str, location: str) -> str:
    """How errors name an entry: its case and where it is (the folder or URL holds the key)."""
    return f"cache entry of case {case_id} ({location})"
