"""A cache entry is on disk before it is published: its files are fsync'ed, then the marker,
then the rename into ``entries/`` is fsync'ed (a power cut never publishes empty chunks)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from miscore.cache import CacheKey, CacheSettings, CaseCache
from miscore.cache.entries import STORE
from miscore.testing import synthetic_case


def test_entry_files_marker_and_rename_are_synced_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = CaseCache(tmp_path / "cache", CacheSettings(chunks=(8, 8, 8)))
    synced: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        synced.append(("dir" if stat.S_ISDIR(info.st_mode) else "file", info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    case = synthetic_case("durable", shape=(16, 16, 16), classes=2)
    cached = cache.put(CacheKey("d" * 40, case.id, {}), case)
    folder = cache.entry_path(cached.key)
    chunks = sorted((folder / STORE / "image" / "c").rglob("*"))
    chunk_files = [p for p in chunks if p.is_file()]
    assert len(chunk_files) == 8
    positions = {entry: i for i, entry in enumerate(synced)}
    marker = positions[("file", (folder / "complete.json").stat().st_ino)]
    for path in chunk_files:
        assert positions[("file", path.stat().st_ino)] < marker  # data before the marker
    assert synced[-1] == ("dir", cache.entries_dir.stat().st_ino)  # the rename, last
