"""The cache of preprocessed cases: one zarr v3 group per case, keyed by all it depends on.

A case is read and preprocessed (the deterministic steps) once; its image and label are stored
chunked and compressed, with the geometry, ``Case.meta`` (the steps' inverse state) and a small
random subset of foreground voxel coordinates per class for the patch sampler. Reading gives
zarr arrays, so a patch reads only the chunks it touches.

The rooms, one module each:

- ``location``: where the cache lives (``--cache``, ``$MISCORE_CACHE_DIR``, ``cache.path``);
- ``keys``: what an entry depends on (``CacheSettings``, ``pipeline_fingerprint``, ``make_key``);
- ``entries``: what an entry holds and how it is read back (``CachedCase``);
- ``store``: what every store shares (``CaseStore.get_or_build``) and ``MemoryCache``;
- ``local``: the disk cache at a folder (``CaseCache``), atomic by rename;
- ``objectstore``: the cache at an fsspec URL (``ObjectStoreCache``), atomic by marker PUT;
- ``cases``: a dataset's cases in the cache (``cache_dataset_case``), as build and train key them;
- ``chunkread``: window reads that decode a local array's chunk files directly.

This module gives their public names and ``open_cache``, the store a config asks for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from miscore.cache.cases import cache_dataset_case, dataset_key
from miscore.cache.entries import (
    DEFAULT_CHUNK,
    CachedCase,
    SliceableArray,
    foreground_coordinates,
)
from miscore.cache.keys import (
    DEFAULT_FOREGROUND_SAMPLES,
    FORMAT_VERSION,
    CacheKey,
    CacheSettings,
    Compression,
    file_identity,
    make_key,
    pipeline_fingerprint,
    split_cacheable,
)
from miscore.cache.local import CacheEntry, CacheInfo, CaseCache
from miscore.cache.location import (
    CACHE_ENV,
    default_cache_location,
    is_url,
    resolve_cache_location,
)
from miscore.cache.objectstore import ObjectStoreCache
from miscore.cache.store import CaseStore, MemoryCache

if TYPE_CHECKING:
    from miscore.core.config import Config

__all__ = [
    "CACHE_ENV",
    "DEFAULT_CHUNK",
    "DEFAULT_FOREGROUND_SAMPLES",
    "FORMAT_VERSION",
    "CacheEntry",
    "CacheInfo",
    "CacheKey",
    "CacheSettings",
    "CachedCase",
    "CaseCache",
    "CaseStore",
    "Compression",
    "MemoryCache",
    "ObjectStoreCache",
    "SliceableArray",
    "cache_dataset_case",
    "dataset_key",
    "default_cache_location",
    "file_identity",
    "foreground_coordinates",
    "is_url",
    "make_key",
    "open_cache",
    "pipeline_fingerprint",
    "resolve_cache_location",
    "split_cacheable",
]


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
