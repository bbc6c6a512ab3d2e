"""Write outputs under a temporary name and rename them into place, durably.

A rename alone publishes atomically against process crashes, but not against a power cut: the
file system may commit the rename before the data, leaving an empty or partial file under the
final name. So before a rename publishes, the written files (and, for a folder, its folders)
are fsync'ed; after it, the parent folder is fsync'ed so that the rename itself is on disk.
Platforms that cannot fsync a folder (Windows) skip that step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from miscore.core.errors import InputError

__all__ = [
    "TEMP_PREFIX",
    "atomic_output",
    "fsync_directory",
    "fsync_file",
    "fsync_tree",
    "replace_folder",
    "temporary_sibling",
    "write_text_atomic",
]

TEMP_PREFIX = ".miscore-tmp-"

#: errno values of a file system that does not fsync folders (or this kind of file): skipped
_CANNOT_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EROFS, errno.EPERM, errno.EACCES}


def temporary_sibling(final: Path) -> Path:
    """A unique hidden name beside ``final`` that keeps its full suffix (``x.nii.gz``)."""
    return final.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{final.name}")


def fsync_file(path: Path | str) -> None:
    """Flush a written file's data to disk (``os.fsync``)."""
    flags = os.O_RDWR if sys.platform == "win32" else os.O_RDONLY  # Windows needs write access
    _fsync_and_close(os.open(path, flags | getattr(os, "O_BINARY", 0)))


def _fsync_and_close(fd: int) -> None:
    """fsync an open descriptor (where the file system cannot, nothing) and close it."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _CANNOT_SYNC:
            raise
    finally:
        os.close(fd)


def fsync_directory(path: Path | str) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to disk.

    Skipped where a folder cannot be opened or fsync'ed: Windows, some network file systems.
    """
    if sys.platform == "win32":
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in _CANNOT_SYNC:
            return
        raise
    _fsync_and_close(fd)


def fsync_tree(path: Path | str) -> None:
    """fsync a file, or every file below a folder and then every folder, deepest first."""
    path = Path(path)
    if not path.is_dir():
        fsync_file(path)
        return
    folders = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            target = Path(root) / name
            if not target.is_symlink():
                fsync_file(target)
        folders.append(Path(root))
    for folder in reversed(folders):
        fsync_directory(folder)


@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2`` (looked up once: ``find_library`` runs ldconfig), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # no libc, or a glibc older than 2.28
        return None
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    return renameat2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the platform or file system cannot (the caller then renames twice)."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False  # not supported here: fall back
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def replace_folder(new: Path, final: Path) -> None:
    """Put the complete folder ``new`` in the place of the folder ``final``; a reader sees the
    old folder or the new one, never a mix.

    On Linux the two are swapped in one atomic step (``renameat2`` with ``RENAME_EXCHANGE``).
    Elsewhere (and on file systems without it) the old folder is renamed aside and the new one
    renamed in: between the two renames ``final`` does not exist (a reader finds nothing, never
    half a folder), and a crash exactly there leaves the old folder complete under a hidden
    ``.miscore-tmp-*`` name beside it. The old folder is removed last.
    """
    old = temporary_sibling(final)
    if _exchange(new, final):
        fsync_directory(final.parent)
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old folder
        return
    final.rename(old)
    try:
        new.rename(final)
    except BaseException:
        old.rename(final)  # put the old folder back
        raise
    fsync_directory(final.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_output(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write to; on success make it durable and rename it to
    ``final``.

    On any error the temporary file or folder is removed and ``final`` is left as it was, so
    no half-written output ever stands under a final name. Works for files and folders; an
    existing folder at ``final`` is replaced (``replace_folder``). The written files are
    fsync'ed before the rename and the parent folder after it.
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
        fsync_tree(temp)
        if temp.is_dir() and final.is_dir():
            replace_folder(temp, final)
        else:
            os.replace(temp, final)
            fsync_directory(final.parent)
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
