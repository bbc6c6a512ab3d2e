"""Shared checks of the reliability tests: error shape, untouched inputs, fuzz settings."""

from __future__ import annotations

import hashlib
import os
import subprocess
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, settings

#: ``nox -s fuzz`` sets MISCORE_FUZZ=1: many more examples per reader (minutes, not seconds)
settings.register_profile(
    "miscore-reliability",
    max_examples=15,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.register_profile(
    "miscore-fuzz",
    max_examples=int(os.environ.get("MISCORE_FUZZ_EXAMPLES", "1000")),
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FUZZ = settings.get_profile(
    "miscore-fuzz" if os.environ.get("MISCORE_FUZZ") == "1" else "miscore-reliability"
)


def assert_error_last(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The CLI failed with ``code``; its error is one ``miscore: error:`` line and the last one.

    Progress lines before it are allowed (``cache build`` reports every case); a traceback
    is not.
    """
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result.stderr
    assert lines[-1].startswith("miscore: error: "), result.stderr
    assert sum(line.startswith("miscore: error:") for line in lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[-1]


def tree_hash(root: Path) -> str:
    """A digest of every file's relative path and bytes under ``root`` (or of one file)."""
    digest = hashlib.sha256()
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in paths:
        digest.update(str(path.relative_to(root if root.is_dir() else root.parent)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def files_under(root: Path) -> list[str]:
    """Every file below ``root`` (relative), hidden temporary ones included."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
