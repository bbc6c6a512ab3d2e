"""Interruptions and faults at write time: kill -9 mid-way, a full disk during a cache write.

Faults are injected by local plugins (``--plugin fault.py``) that wrap one internal write,
so the CLI runs exactly as a user's would up to the fault.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import miscore
from tests.cli.helpers import assert_one_line_error, run_cli
from tests.reliability.helpers import assert_error_last, files_under, tree_hash

#: stalls before the completion marker of a cache entry: arrays written, entry not trusted
STALL_BEFORE_MARKER = """
import time
import miscore.cache.local

_write_marker = miscore.cache.local._write_marker

def _slow(folder, marker):
    time.sleep(60)
    _write_marker(folder, marker)

miscore.cache.local._write_marker = _slow
"""

#: the disk fills up after a few chunk writes
DISK_FULL = """
import errno
import os
import zarr.storage._local as local

_put = local._put
calls = [0]

def _full(path, value, exclusive=False):
    calls[0] += 1
    if calls[0] > 2:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return _put(path, value, exclusive)

local._put = _full
"""

#: the second prediction stalls inside its write: bytes on disk, not yet renamed into place
STALL_IN_SECOND_WRITE = """
import os
import time
import nibabel

_save = nibabel.save
calls = [0]

def _slow(image, filename, **kwargs):
    _save(image, filename, **kwargs)
    calls[0] += 1
    if calls[0] == 2:
        open(os.environ["STALL_FLAG"], "w").close()
        time.sleep(60)

nibabel.save = _slow
"""


def _popen(
    args: list[str | Path], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "miscore", *map(str, args)], cwd=cwd, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _wait_for(condition: object, process: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    process.kill()
    pytest.fail("the process ended or timed out before the moment to kill it")


def _markers(cache: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in (cache / "entries").glob("*/complete.json")]


def test_kill_during_cache_build_then_the_entry_is_rebuilt(
    reliability_root: Path, tmp_path: Path
) -> None:
    (tmp_path / "stall.py").write_text(STALL_BEFORE_MARKER)
    cache = tmp_path / "cache"
    data = reliability_root / "data"
    before = tree_hash(data)
    build = ["cache", "build", reliability_root / "config.yaml", "--data", data, "--cache", cache]
    process = _popen(["--plugin", tmp_path / "stall.py", *build], tmp_path)
    _wait_for(lambda: any((cache / "tmp").glob("*/case.zarr/image")), process)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert process.returncode == -signal.SIGKILL
    assert _markers(cache) == []  # the half-written entry is not trusted
    assert list((cache / "tmp").iterdir())  # it is left in tmp/, where no reader looks
    result = run_cli(*build)
    assert result.returncode == 0, result.stderr
    assert "built 3, cached 0, failed 0" in result.stderr
    assert sorted(str(m["case_id"]) for m in _markers(cache)) == [
        "case_000",
        "case_001",
        "case_002",
    ]
    assert tree_hash(data) == before


def test_a_full_disk_during_a_cache_write_leaves_no_trusted_entry(tmp_path: Path) -> None:
    """In-process: the write raises ENOSPC; PipelineError, and nothing under entries/."""
    import zarr.storage._local as local

    from miscore.cache import CacheSettings, CaseCache

    store = CaseCache(tmp_path / "cache", CacheSettings(chunks=(4, 4, 4)))
    case = miscore.testing.synthetic_case("full", shape=(12, 12, 12))
    key = store.key("full", [], {"pipeline": "test"})
    calls = [0]
    original = local._put

    def full(path: Path, value: object, exclusive: bool = False) -> int:
        calls[0] += 1
        if calls[0] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(path, value, exclusive)  # type: ignore[arg-type]

    local._put = full  # type: ignore[assignment]
    try:
        with pytest.raises(miscore.PipelineError, match="No space left on device"):
            store.put(key, case)
    finally:
        local._put = original
    assert calls[0] > 3
    assert store.get(key) is None
    assert list((tmp_path / "cache" / "entries").iterdir()) == []
    # zarr writes chunks concurrently: writes still in flight when the first fails may
    # recreate part of the temporary folder after it is removed. It stays under tmp/, which
    # no reader trusts and `clean_temp` empties.
    assert store.put(key, case).spatial_shape == (12, 12, 12)  # space again: it builds


def test_a_full_disk_through_the_cli_is_one_line_exit_1(
    reliability_root: Path, tmp_path: Path
) -> None:
    (tmp_path / "full.py").write_text(DISK_FULL)
    cache = tmp_path / "cache"
    result = run_cli(
        "-q", "--plugin", tmp_path / "full.py", "cache", "build", reliability_root / "config.yaml",
        "--data", reliability_root / "data", "--cache", cache,
    )  # fmt: skip
    line = assert_one_line_error(result, 1)
    assert "No space left on device" in line and "3 of 3 cases failed" in line
    assert _markers(cache) == []
    verbose = run_cli(
        "--plugin", tmp_path / "full.py", "cache", "build", reliability_root / "config.yaml",
        "--data", reliability_root / "data", "--cache", cache,
    )  # fmt: skip
    assert "No space left on device" in assert_error_last(verbose, 1)


def test_kill_during_prediction_leaves_no_partial_file(
    reliability_root: Path, tmp_path: Path
) -> None:
    (tmp_path / "stall.py").write_text(STALL_IN_SECOND_WRITE)
    out = tmp_path / "out"
    flag = tmp_path / "stalled"
    data = reliability_root / "data"
    before = tree_hash(data)
    process = _popen(
        ["--plugin", tmp_path / "stall.py", "predict", reliability_root / "model", data,
         "--out", out],
        tmp_path,
        env={"STALL_FLAG": str(flag)},
    )  # fmt: skip
    _wait_for(flag.exists, process, seconds=240)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    files = files_under(out)
    final = [name for name in files if not name.startswith(".miscore-tmp-")]
    # the first prediction complete; the second only under its temporary name
    assert final == ["case_000.nii.gz"], files
    assert any(name.endswith("case_001.nii.gz") for name in files if name not in final)
    import nibabel as nib

    assert nib.load(out / "case_000.nii.gz").shape == (16, 16, 16)
    assert tree_hash(data) == before
