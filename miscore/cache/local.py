"""The disk cache at a local (or mounted) folder: ``CaseCache``.

Layout under the cache folder::

    CACHEDIR.TAG            tells backup tools to skip the folder
    entries/<key>/case.zarr a zarr v3 group: image, label, foreground/<class>
    entries/<key>/complete.json  the completion marker, written last
    tmp/<key>.<pid>.<hex>/  entries being built; renamed into entries/ when complete
    stats                   one byte per lookup: h (hit) or m (miss)

An entry is trusted only when its ``complete.json`` (written last) names its key. Builds are
written under ``tmp/`` and renamed into place, so a killed build leaves only a temporary folder
that no reader looks at; ``clean_temp`` removes those when they are old. Before the marker is
written the entry's files are fsync'ed, and the ``entries/`` folder after the rename, so a
power cut cannot publish a marker that vouches for chunks not on disk. Two processes building
the same entry both write; the first rename wins and the other discards its copy. Old entries
stay until ``clear``.

``CaseCache(url)`` returns the object-store cache (``miscore.cache.objectstore``), which
registers itself as the class for URLs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy.typing as npt
from pydantic import BaseModel, Field

from miscore.cache.chunkread import blosc_settings
from miscore.cache.entries import (
    ARRAY_CONFIG,
    ENTRIES,
    STATS,
    STORE,
    CachedCase,
    PreparedEntry,
    completion_marker,
    prepare_entry,
    read_entry,
    trusted_marker,
)
from miscore.cache.keys import CacheKey, CacheSettings
from miscore.cache.location import CACHE_ENV, is_url
from miscore.cache.store import CaseStore
from miscore.core.atomic import fsync_directory, fsync_file, fsync_tree
from miscore.core.errors import CacheError, InputError, PipelineError
from miscore.core.volume import Case

#: The completion marker of an entry folder.
MARKER = "complete.json"
#: The folder of entries being built (and of entries being removed).
TEMP = "tmp"


class CacheEntry(BaseModel):
    """One complete entry on disk, as ``miscore cache info`` lists it."""

    key: str
    case_id: str
    created: float = Field(description="Unix time the entry was completed")
    last_used: float = Field(
        description="Unix time of the last hit (local: marker mtime; URL: newest recorded hit)"
    )
    stored_bytes: int = Field(description="bytes of the entry's files")
    raw_float32_bytes: int = Field(description="image + label as float32 arrays")


class CacheInfo(BaseModel):
    """A summary of a disk cache."""

    location: str
    entries: int
    cases: int = Field(description="distinct case ids")
    stored_bytes: int
    raw_float32_bytes: int
    ratio: float | None = Field(description="stored / raw float32; None when empty")
    temp_folders: int = Field(description="builds in progress or left by a crash")
    hits: int
    misses: int
    hit_rate: float | None


def _folder_bytes(path: Path) -> int:
    """Bytes of the files below ``path`` (files removed meanwhile count 0)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
    return total


def _write_marker(folder: Path, marker: Mapping[str, Any]) -> None:
    """Write the completion marker; it is written last, after every array is on disk (so a
    power cut never leaves a marker vouching for chunks that were not written)."""
    fsync_tree(folder / STORE)
    (folder / MARKER).write_text(json.dumps(marker, sort_keys=True), encoding="utf-8")
    fsync_file(folder / MARKER)
    fsync_directory(folder)


class CaseCache(CaseStore):
    """The disk cache at a local folder (see the module docstring for layout and guarantees),
    or, given a URL, at an object store (``CaseCache(url)`` returns an ``ObjectStoreCache``).

    Args:
        location: the cache folder or URL (``resolve_cache_location`` finds it from config
            and CLI); ``location`` (the property) gives back the string that reopens it.
        settings: storage settings; they are part of every key.
        stale_temp_hours: temporary build folders older than this are removed on open (a
            crashed build's leftovers; a live build this old is unlikely).
    """

    #: What ``CaseCache(url)`` makes: the subclass declared with ``opens_urls=True``.
    _url_class: ClassVar[type[CaseCache] | None] = None

    def __init_subclass__(cls, *, opens_urls: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if opens_urls:
            CaseCache._url_class = cls

    def __new__(cls, location: Path | str, *args: Any, **kwargs: Any) -> CaseCache:
        target: type[CaseCache] = cls
        if cls is CaseCache and is_url(location):
            if CaseCache._url_class is None:  # miscore.cache imports objectstore: not seen
                raise InputError(f"cache location {location}: no cache class opens URLs")
            target = CaseCache._url_class
        return object.__new__(target)

    def __init__(
        self,
        location: Path | str,
        settings: CacheSettings | None = None,
        *,
        stale_temp_hours: float = 6.0,
    ) -> None:
        super().__init__(settings)
        self.root = Path(str(location).removeprefix("file://")).expanduser().absolute()
        self.entries_dir = self.root / ENTRIES
        self.temp_dir = self.root / TEMP
        try:
            self.entries_dir.mkdir(parents=True, exist_ok=True)
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            tag = self.root / "CACHEDIR.TAG"
            if not tag.exists():
                tag.write_text(
                    "Signature: 8a477f597d28d172789f06886806bc55\n"
                    "# miscore cache of preprocessed cases; `miscore cache clear` empties it.\n",
                    encoding="utf-8",
                )
        except OSError as exc:
            raise InputError(
                f"cache location {self.root}: cannot create it ({exc.strerror}); "
                f"choose another with --cache or {CACHE_ENV}"
            ) from None
        self.clean_temp(stale_temp_hours * 3600.0)

    @property
    def location(self) -> str:
        """The string that opens this cache again (in another process): a path or a URL."""
        return str(self.root)

    # --- lookups ------------------------------------------------------------------------

    def entry_path(self, key: CacheKey | str) -> Path:
        digest = key.digest if isinstance(key, CacheKey) else key
        return self.entries_dir / digest

    def _marker(self, folder: Path, digest: str) -> dict[str, Any] | None:
        """The marker of a complete entry named ``digest``, else None."""
        try:
            marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return trusted_marker(marker, digest)

    def get(self, key: CacheKey) -> CachedCase | None:
        """The complete entry of ``key``, or None (a missing, incomplete or damaged entry)."""
        folder = self.entry_path(key)
        if self._marker(folder, key.digest) is None:
            return None
        try:
            cached = self._open(folder, key.case_id)
        except FileNotFoundError:  # removed by `cache clear` meanwhile
            return None
        except CacheError:  # a chunk read on opening is gone: removed meanwhile, or damaged
            self._discard(folder)  # moved aside (if still there), so it is built again
            return None
        # The marker's mtime is the last use, for `cache clear --older-than`.
        with contextlib.suppress(OSError):
            os.utime(folder / MARKER)
        return cached

    def _open(self, folder: Path, case_id: str) -> CachedCase:
        import zarr

        from miscore.cache.zarrstores import EntryLocalStore, entry_name

        store = EntryLocalStore(folder / STORE, read_only=True)
        store.entry = entry_name(case_id, str(folder))
        return read_entry(zarr.open_group(store, mode="r", zarr_format=3))

    def _record(self, hit: bool, key: CacheKey | None = None) -> None:
        # One byte per lookup, appended: concurrent processes never lose a count.
        try:
            with (self.root / STATS).open("ab") as handle:
                handle.write(b"h" if hit else b"m")
        except OSError:
            pass

    # --- writing ------------------------------------------------------------------------

    def _compressors(self, itemsize: int) -> Any:
        from zarr.codecs import BloscCodec

        if self.settings.compression == "none":
            return None
        clevel, shuffle = blosc_settings(self.settings.compression, itemsize)
        return BloscCodec(
            cname=self.settings.compression, clevel=clevel, shuffle=shuffle, typesize=itemsize
        )

    def _write(self, folder: Path, key: CacheKey, prepared: PreparedEntry) -> None:
        import zarr

        group = zarr.open_group(
            str(folder / STORE), mode="w-", zarr_format=3, attributes=prepared.attributes
        )
        self._write_arrays(group, prepared)
        _write_marker(folder, completion_marker(key, prepared))

    def _write_arrays(self, group: Any, prepared: PreparedEntry) -> None:
        """Write the image, label and foreground arrays into the entry's new zarr group."""
        spatial = tuple(int(n) for n in prepared.image.shape[:-1])
        chunks = self._chunks(spatial)
        arrays = {"image": prepared.image}
        if prepared.label is not None:
            arrays["label"] = prepared.label
        for name, array in arrays.items():
            target = group.create_array(
                name,
                shape=array.shape,
                dtype=array.dtype,
                chunks=(*chunks, int(array.shape[-1])),
                compressors=self._compressors(array.dtype.itemsize),
                fill_value=0,
                config=ARRAY_CONFIG,
            )
            target[...] = array
        if prepared.foreground:
            fg_group = group.create_group("foreground")
            for k, coords in sorted(prepared.foreground.items()):
                fg_group.create_array(
                    str(k),
                    data=coords,
                    chunks=(max(1, len(coords)), coords.shape[1]),
                    config=ARRAY_CONFIG,
                )

    def put(
        self,
        key: CacheKey,
        case: Case,
        foreground: Mapping[int, npt.ArrayLike] | None = None,
    ) -> CachedCase:
        """Store ``case`` (already preprocessed) under ``key`` and return it as read back.

        ``foreground`` gives the coordinates per class; None computes a random subset.
        Safe against concurrent writers of the same key and against crashes.
        """
        prepared = prepare_entry(key, case, self.settings, foreground)
        final = self.entry_path(key)
        temp = self.temp_dir / f"{key.digest}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            self._write(temp, key, prepared)
            self._publish(temp, final, key.digest)
        except OSError as exc:
            raise PipelineError(
                f"case {case.id}: cannot write the cache entry under {self.root}: {exc}"
            ) from exc
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
        return self._open(final, key.case_id)

    def _publish(self, temp: Path, final: Path, digest: str) -> None:
        """Rename ``temp`` to ``final``; when another writer won, keep its entry."""
        for _attempt in range(3):
            try:
                os.rename(temp, final)
                fsync_directory(final.parent)  # the rename itself is on disk
                return
            except OSError:
                if not final.exists():
                    raise
            if self._marker(final, digest) is not None:
                return  # another process won the race; our temp is discarded by the caller
            # An incomplete folder stands under the final name (copied in by hand, or a
            # filesystem without atomic rename): move it aside and try again.
            self._discard(final)
        raise PipelineError(f"{final}: could not publish the cache entry")

    def _discard(self, folder: Path) -> None:
        """Remove ``folder`` by first renaming it into tmp/, so readers never see it half gone."""
        trash = self.temp_dir / f"trash-{folder.name}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            os.rename(folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    # --- housekeeping -------------------------------------------------------------------

    def clean_temp(self, older_than_s: float = 0.0) -> int:
        """Remove temporary build folders older than ``older_than_s`` seconds; return how many."""
        removed = 0
        now = time.time()
        try:
            children = list(self.temp_dir.iterdir())
        except OSError:
            return 0
        for child in children:
            try:
                age = now - child.stat().st_mtime
            except OSError:
                continue
            if age >= older_than_s:
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
                removed += 1
        return removed

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, oldest first."""
        found = []
        for folder in sorted(self.entries_dir.iterdir()) if self.entries_dir.is_dir() else []:
            marker = self._marker(folder, folder.name)
            if marker is None:
                continue
            try:
                last_used = (folder / MARKER).stat().st_mtime
            except OSError:
                continue
            found.append(
                CacheEntry(
                    key=folder.name,
                    case_id=str(marker.get("case_id", "")),
                    created=float(marker.get("created", 0.0)),
                    last_used=last_used,
                    stored_bytes=_folder_bytes(folder),
                    raw_float32_bytes=int(marker.get("raw_float32_bytes", 0)),
                )
            )
        return sorted(found, key=lambda e: e.created)

    def stats(self) -> tuple[int, int]:
        """(hits, misses) recorded since the cache was last cleared."""
        try:
            data = (self.root / STATS).read_bytes()
        except OSError:
            return 0, 0
        return data.count(b"h"), data.count(b"m")

    def info(self) -> CacheInfo:
        entries = self.entries()
        stored = sum(e.stored_bytes for e in entries)
        raw = sum(e.raw_float32_bytes for e in entries)
        hits, misses = self.stats()
        return CacheInfo(
            location=self.location,
            entries=len(entries),
            cases=len({e.case_id for e in entries}),
            stored_bytes=stored,
            raw_float32_bytes=raw,
            ratio=stored / raw if raw else None,
            temp_folders=self._temp_count(),
            hits=hits,
            misses=misses,
            hit_rate=hits / (hits + misses) if hits + misses else None,
        )

    def _temp_count(self) -> int:
        """Temporary build folders (builds running or left by a crash)."""
        try:
            return sum(1 for _ in self.temp_dir.iterdir())
        except OSError:
            return 0

    def clear(self, older_than_days: float | None = None) -> int:
        """Remove entries (all, or those not used for ``older_than_days``); return how many.

        Clearing everything also resets the hit/miss counts and removes temporary folders
        older than an hour (younger ones may be builds in progress).
        """
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400.0
        removed = 0
        for folder in list(self.entries_dir.iterdir()) if self.entries_dir.is_dir() else []:
            if cutoff is not None:
                try:
                    last_used = (folder / MARKER).stat().st_mtime
                except OSError:
                    last_used = folder.stat().st_mtime
                if last_used >= cutoff:
                    continue
            self._discard(folder)
            removed += 1
        if cutoff is None:
            (self.root / STATS).unlink(missing_ok=True)
            self.clean_temp(3600.0)
        return removed
