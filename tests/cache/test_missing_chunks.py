"""A cache entry whose chunk files are gone is an error naming the entry, never zeros.

The cache writes every chunk, empty ones included, so a missing chunk file (or a missing
entry folder) always means the entry was removed or damaged after it was published.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import miscore
from miscore.cache import CacheKey, CacheSettings, CaseCache
from miscore.cache.chunkread import ChunkFileReader, window_reader
from miscore.cache.entries import STORE
from miscore.core.errors import CacheError
from miscore.testing import synthetic_case


def build(cache: CaseCache, case_id: str = "case_a") -> miscore.cache.CachedCase:
    # 32^3 with a label that is background in most 8^3 chunks: empty chunks exist
    case = synthetic_case(case_id, shape=(32, 32, 32), classes=2)
    return cache.put(CacheKey("a" * 40 if case_id == "case_a" else "b" * 40, case_id, {}), case)


@pytest.fixture
def cache(tmp_path: Path) -> CaseCache:
    return CaseCache(tmp_path / "cache", CacheSettings(chunks=(8, 8, 8)))


def test_every_chunk_is_written_even_all_background(cache: CaseCache) -> None:
    cached = build(cache)
    label = cache.entry_path(cached.key) / STORE / "label" / "c"
    files = [p for p in label.rglob("*") if p.is_file()]
    assert len(files) == 4 * 4 * 4  # 32^3 in 8^3 chunks, most of them only background
    np.testing.assert_array_equal(cached.label[0:8, 0:8, 0:8], 0)  # type: ignore[index]


def test_a_removed_chunk_is_an_error_naming_the_case(cache: CaseCache) -> None:
    cached = build(cache)
    reader = window_reader(cached.image)
    assert isinstance(reader, ChunkFileReader)
    (cache.entry_path(cached.key) / STORE / "image" / "c" / "0" / "0" / "0" / "0").unlink()
    with pytest.raises(CacheError) as caught:
        reader[0:8, 0:8, 0:8]
    message = str(caught.value)
    assert "case_a" in message and cached.key in message and "\n" not in message
    assert "run again" in message
    # the same through zarr's own indexing (what to_case and non-slice keys use)
    with pytest.raises(CacheError, match="case_a"):
        cached.image[0:8, 0:8, 0:8]


def test_a_removed_entry_folder_is_an_error_not_zeros(cache: CaseCache) -> None:
    cached = build(cache)
    reader = window_reader(cached.label)
    assert cache.clear() == 1  # what `miscore cache clear` does while a run reads the entry
    with pytest.raises(CacheError, match="case_a"):
        reader[8:16, 8:16, 8:16]
    with pytest.raises(CacheError, match="case_a"):
        cached.to_case()


def test_arrays_outside_the_cache_keep_zarr_fill_semantics(tmp_path: Path) -> None:
    # a plain zarr array (empty chunks omitted, as zarr writes by default) reads its fill value
    array = zarr.create_array(
        str(tmp_path / "plain.zarr"), shape=(16, 16, 16, 1), chunks=(8, 8, 8, 1), dtype="f4"
    )
    array[...] = 0.0
    np.testing.assert_array_equal(window_reader(array)[0:8, 0:8, 0:8], 0.0)


def test_object_store_entry_removed_is_an_error(tmp_path: Path) -> None:
    url = f"memory://missing-chunks-{tmp_path.name}"
    cache = CaseCache(url, CacheSettings(chunks=(8, 8, 8)))
    cached = build(cache)
    np.testing.assert_array_equal(cached.label[0:8, 0:8, 0:8], 0)  # type: ignore[index]
    chunks = [p for p in cache.fs.find(cache.path) if "/label/c/" in p]
    assert len(chunks) == 4 * 4 * 4  # empty chunks written on object stores too
    assert cache.clear() == 1
    with pytest.raises(CacheError, match="case_a"):
        cached.label[0:8, 0:8, 0:8]  # type: ignore[index]


def test_an_entry_written_before_every_chunk_was_stored_is_rebuilt(cache: CaseCache) -> None:
    # older entries omitted empty chunks: a missing file there is no evidence of removal, so
    # such an entry is not trusted (a miss; built again) rather than read as an error
    cached = build(cache)
    marker_path = cache.entry_path(cached.key) / "complete.json"
    marker = json.loads(marker_path.read_text())
    marker.pop("layout")
    marker_path.write_text(json.dumps(marker))
    assert cache.get(CacheKey(cached.key, "case_a", {})) is None
    rebuilt = build(cache)
    assert cache.get(CacheKey(rebuilt.key, "case_a", {})) is not None


def test_a_damaged_entry_found_at_open_is_a_miss_and_rebuilt(cache: CaseCache) -> None:
    cached = build(cache)
    foreground = cache.entry_path(cached.key) / STORE / "foreground" / "1" / "c"
    shutil.rmtree(foreground)  # read when the entry is opened
    assert cache.get(CacheKey(cached.key, "case_a", {})) is None
    rebuilt = build(cache)
    assert set(rebuilt.foreground) == {1}
