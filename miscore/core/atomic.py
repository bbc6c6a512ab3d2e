"""Write outputs under a temporary name and rename them into place."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from miscore.core.errors import InputError

TEMP_PREFIX = ".miscore-tmp-"


def temporary_sibling(final: Path) -> Path:
    """A unique hidden name beside ``final`` that keeps its full suffix (``x.nii.gz``)."""
    return final.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{final.name}")


@contextmanager
def atomic_output(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write to; on success rename it to ``final``.

    On any error the temporary file or folder is removed and ``final`` is left as it was, so
    no half-written output ever stands under a final name. Works for files and folders; an
    existing folder at ``final`` is replaced.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"{final}: cannot create its folder ({exc.strerror or exc}); choose another place"
        ) from None
    temp = temporary_sibling(final)
    try:
        yield temp
        if temp.is_dir() and final.is_dir():
            old = temporary_sibling(final)
            final.rename(old)
            temp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, final)
    except BaseException:
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write a text file atomically and return its path."""
    with atomic_output(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(path)
