"""Atomic outputs are durable: fsync of the data before the rename, of the folder after it;
a replaced folder is swapped whole, and an interrupted write leaves the old output intact."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

import miscore
from miscore.core import atomic
from miscore.core.atomic import TEMP_PREFIX, atomic_output, write_text_atomic


class Journal:
    """Records fsync calls (what was synced: file or folder, and its inode) and renames."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str, int]] = []
        real_fsync, real_replace, real_rename = os.fsync, os.replace, Path.rename

        def fsync(fd: int) -> None:
            info = os.fstat(fd)
            self.events.append(
                ("fsync", "dir" if stat.S_ISDIR(info.st_mode) else "file", info.st_ino)
            )
            real_fsync(fd)

        def replace(src: object, dst: object) -> None:
            self.events.append(("rename", str(dst), os.stat(src).st_ino))  # type: ignore[arg-type]
            real_replace(src, dst)  # type: ignore[arg-type]

        def rename(self_: Path, target: object) -> Path:
            self.events.append(("rename", str(target), os.stat(self_).st_ino))
            return real_rename(self_, target)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(Path, "rename", rename)

    def index(self, event: tuple[str, str, int]) -> int:
        assert event in self.events, (event, self.events)
        return self.events.index(event)


def test_a_file_is_synced_before_the_rename_and_its_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(monkeypatch)
    final = tmp_path / "out" / "report.json"
    write_text_atomic(final, '{"dice": 0.9}\n')
    assert final.read_text() == '{"dice": 0.9}\n'
    inode, parent = final.stat().st_ino, final.parent.stat().st_ino
    data = journal.index(("fsync", "file", inode))
    publish = journal.index(("rename", str(final), inode))
    folder = journal.index(("fsync", "dir", parent))
    assert data < publish < folder, journal.events


def test_a_folder_is_synced_file_by_file_then_swapped_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "series"
    final.mkdir()
    (final / "old.dcm").write_text("old")
    journal = Journal(monkeypatch)
    with atomic_output(final) as temp:
        (temp / "sub").mkdir(parents=True)
        (temp / "a.dcm").write_text("a")
        (temp / "sub" / "b.dcm").write_text("b")
    assert sorted(p.name for p in final.rglob("*")) == ["a.dcm", "b.dcm", "sub"]
    synced = {(kind, ino) for event, kind, ino in journal.events if event == "fsync"}
    for path in (final / "a.dcm", final / "sub" / "b.dcm"):
        assert ("file", path.stat().st_ino) in synced
    assert ("dir", (final / "sub").stat().st_ino) in synced
    assert ("dir", final.stat().st_ino) in synced
    # last, the parent folder: the new folder's name is on disk
    assert journal.events[-1] == ("fsync", "dir", tmp_path.stat().st_ino), journal.events
    assert [p.name for p in tmp_path.iterdir()] == ["series"]  # no leftovers


def test_linux_swaps_a_folder_in_one_step(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux's")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "from_a").touch()
    if not atomic._exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this file system cannot exchange (the two-rename path is tested below)")
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["from_a"]
    assert list((tmp_path / "a").iterdir()) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_an_interrupted_folder_write_leaves_the_old_folder_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    final = tmp_path / "series"
    final.mkdir()
    (final / "old.dcm").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_output(final) as temp:
        temp.mkdir()
        (temp / "a.dcm").write_text("half")
        raise RuntimeError("disk full")
    assert [p.name for p in final.iterdir()] == ["old.dcm"]
    assert [p.name for p in tmp_path.iterdir()] == ["series"]
    # and a completed replace works both ways, leaving nothing behind
    with atomic_output(final) as temp:
        temp.mkdir()
        (temp / "new.dcm").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.dcm"]
    assert not any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.iterdir())


def test_a_failed_rename_in_puts_the_old_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    final = tmp_path / "series"
    final.mkdir()
    (final / "old.dcm").write_text("old")
    real_rename = Path.rename

    def rename(self: Path, target: object) -> Path:
        if (
            Path(str(target)) == final
            and self.name.startswith(TEMP_PREFIX)
            and (self / "new.dcm").exists()
        ):
            raise OSError(5, "I/O error")
        return real_rename(self, target)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="I/O error"), atomic_output(final) as temp:
        temp.mkdir()
        (temp / "new.dcm").write_text("new")
    assert [p.name for p in final.iterdir()] == ["old.dcm"]
    assert [p.name for p in tmp_path.iterdir()] == ["series"]


def test_folders_that_cannot_be_synced_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")  # e.g. a network file system
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert write_text_atomic(tmp_path / "a.txt", "x").read_text() == "x"


def test_the_public_api_is_the_same_function() -> None:
    assert miscore.atomic_output is atomic_output


def test_a_metaimage_data_file_is_synced_before_it_gets_its_final_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A MetaImage is two files: the .zraw data is published under its final name before the
    header, so it is synced before that rename (a header must not point at an empty file)."""
    import numpy as np

    registry = miscore.PluginManager().registry
    volume = miscore.Volume(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6, 1))
    journal = Journal(monkeypatch)
    final = tmp_path / "image.mhd"
    registry.create("io", "sitk").write(volume, final)
    raw = final.with_suffix(".zraw")  # compressed
    assert raw.is_file() and "ElementDataFile = image.zraw" in final.read_text()
    inode = raw.stat().st_ino
    assert journal.index(("fsync", "file", inode)) < journal.index(("rename", str(raw), inode))
