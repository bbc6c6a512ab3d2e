"""The cache at an object store: ``ObjectStoreCache`` (what ``CaseCache(url)`` returns).

Object stores (a URL location: ``s3://``, ``gs://``, ``az://``, ``memory://``, any scheme
fsspec knows; ``file://`` is a local folder) have no rename, so entries are published
differently from the local cache. Layout under the URL::

    data/<key>.<unix_s>.<pid>.<hex>/case.zarr  one writer's arrays (a unique prefix per build)
    entries/<key>.json       the marker: written last, names the data prefix it vouches for
    stats/<ms>.<h|m>.<key>.<hex>  one empty object per counted lookup (hit or miss)

A writer writes its arrays under its own data prefix, then PUTs the marker (one PUT is atomic
on object stores) with "create only" semantics where the store has them (S3 ``If-None-Match``;
elsewhere check-then-write): the first complete writer of a key wins and later ones delete
their own prefix and read the winner's. A reader trusts only a marker whose key and format
match and opens the prefix it names. A writer killed mid-build leaves a prefix that no marker
names: never read, and removed by ``clean_temp`` once older than the stale threshold (its age
is the time in its name). Object timestamps cannot be touched, so the last use of an entry is
the newest hit recorded under ``stats/`` (or its creation).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy.typing as npt

from miscore.cache.entries import (
    ENTRIES,
    STATS,
    STORE,
    CachedCase,
    completion_marker,
    prepare_entry,
    read_entry,
    trusted_marker,
)
from miscore.cache.keys import CacheKey, CacheSettings
from miscore.cache.local import CacheEntry, CaseCache
from miscore.cache.store import CaseStore
from miscore.core.errors import CacheError, InputError, PipelineError
from miscore.core.volume import Case

#: The folder of per-writer data prefixes.
DATA = "data"
#: Tries of a create-only marker PUT that S3 answers with 409 (a race).
_CREATE_ATTEMPTS = 5


def _prefix_parts(name: str) -> tuple[str, float] | None:
    """``(digest, unix time)`` of a data prefix name ``<key>.<unix_s>.<pid>.<hex>``, else None."""
    parts = name.split(".")
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    return parts[0], float(parts[1])


def _storage_options(url: str) -> dict[str, Any]:
    """Options for the filesystem of ``url``: on S3 one GET per object. (s3fs with its default
    ``max_concurrency`` of 10 sends a HEAD before every whole-object GET, to split large objects;
    cache objects are chunks and markers, so that doubled the requests.) A value configured
    through fsspec (``FSSPEC_S3_MAX_CONCURRENCY``) is kept."""
    from fsspec.config import conf
    from fsspec.core import split_protocol

    protocol = split_protocol(url)[0]
    if protocol in ("s3", "s3a") and "max_concurrency" not in conf.get(protocol, {}):
        return {"max_concurrency": 1}
    return {}


class ObjectStoreCache(CaseCache, opens_urls=True):
    """The cache at a URL that fsspec opens (``s3://bucket/prefix``, ``gs://``, ``az://``,
    ``memory://``, ...); see the module docstring for the layout and the publish protocol.

    Construct it as ``CaseCache(url, settings)``. Credentials and endpoints come from the
    filesystem's usual configuration (for S3: ``AWS_*`` environment variables or
    ``~/.aws``; ``FSSPEC_S3_*`` variables for s3fs options).
    """

    def __init__(
        self,
        location: Path | str,
        settings: CacheSettings | None = None,
        *,
        stale_temp_hours: float = 6.0,
    ) -> None:
        CaseStore.__init__(self, settings)
        self.url = str(location).rstrip("/")
        try:
            from fsspec.core import url_to_fs

            self._options = _storage_options(self.url)
            self.fs, path = url_to_fs(self.url, **self._options)
        except (ImportError, ValueError) as exc:
            raise InputError(
                f"cache location {self.url}: cannot open it ({exc}); install the fsspec "
                "package of its scheme (s3fs for s3://, gcsfs for gs://, adlfs for az://)"
            ) from None
        self.path = str(path).rstrip("/")
        self._zarr_fs: Any = None
        try:
            self.clean_temp(stale_temp_hours * 3600.0)
        except Exception as exc:  # botocore's credential errors are not OSErrors
            raise InputError(
                f"cache location {self.url}: cannot list it ({type(exc).__name__}: {exc}); "
                "check the URL and the storage credentials"
            ) from None

    @property
    def location(self) -> str:
        return self.url

    # --- paths and small objects --------------------------------------------------------

    def _abs(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def _marker_path(self, digest: str) -> str:
        return self._abs(ENTRIES, f"{digest}.json")

    def _names(self, folder: str) -> list[str]:
        """Names directly under ``folder`` (fresh: other processes write meanwhile)."""
        full = self._abs(folder)
        self.fs.invalidate_cache(full)
        try:
            listed = self.fs.ls(full, detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(name).rstrip("/").rsplit("/", 1)[-1] for name in listed)

    def _parse_marker(self, raw: bytes, digest: str) -> dict[str, Any] | None:
        try:
            marker = trusted_marker(json.loads(raw), digest)
        except ValueError:
            return None
        if marker is None:
            return None
        data = marker.get("data")
        # Only a prefix of this key under data/ is trusted (never a path elsewhere).
        if (
            not isinstance(data, str)
            or "/" in data.removeprefix(f"{DATA}/")
            or _prefix_parts(data.removeprefix(f"{DATA}/")) is None
            or not data.startswith(f"{DATA}/{digest}.")
        ):
            return None
        return marker

    def _read_marker(self, digest: str) -> dict[str, Any] | None:
        try:
            raw = self.fs.cat_file(self._marker_path(digest))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise PipelineError(
                f"cache {self.url}: cannot read the entry marker of {digest} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return self._parse_marker(bytes(raw), digest)

    def _markers(self) -> dict[str, tuple[dict[str, Any] | None, int]]:
        """Every marker under entries/: ``{digest: (marker or None if invalid, bytes)}``."""
        digests = self._published()
        paths = [self._marker_path(d) for d in digests]
        raw = self.fs.cat(paths, on_error="omit") if paths else {}
        found: dict[str, tuple[dict[str, Any] | None, int]] = {}
        for digest, path in zip(digests, paths, strict=True):
            content = raw.get(path)
            if content is None:  # removed meanwhile
                continue
            found[digest] = (self._parse_marker(bytes(content), digest), len(content))
        return found

    def _store(self, prefix: str, read_only: bool) -> Any:
        """The zarr store of the entry under the data ``prefix`` (read only: one for which a
        missing chunk is an error, ``miscore.cache.zarrstores``)."""
        from zarr.storage import FsspecStore

        from miscore.cache.zarrstores import EntryFsspecStore

        if self._zarr_fs is None:
            # zarr needs an async filesystem; it makes one (or wraps a sync one) from the URL.
            self._zarr_fs = FsspecStore.from_url(self.url, storage_options=self._options).fs
        kind = EntryFsspecStore if read_only else FsspecStore
        return kind(self._zarr_fs, path=self._abs(prefix, STORE), read_only=read_only)

    def _open_prefix(self, prefix: str, case_id: str) -> CachedCase:
        import zarr

        from miscore.cache.zarrstores import entry_name

        # zarr_format=3: no probing for zarr v2 metadata (three requests more).
        store = self._store(prefix, True)
        store.entry = entry_name(case_id, f"{self.url}/{prefix}")
        return read_entry(zarr.open_group(store, mode="r", zarr_format=3))

    def _remove(self, *parts: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._abs(*parts), recursive=True)

    # --- lookups ------------------------------------------------------------------------

    def get(self, key: CacheKey) -> CachedCase | None:
        """The complete entry of ``key``, or None (no marker, or a marker not trusted)."""
        marker = self._read_marker(key.digest)
        if marker is None:
            return None
        try:
            return self._open_prefix(marker["data"], key.case_id)
        except (FileNotFoundError, KeyError, CacheError):  # removed (or being removed)
            return None
        except Exception as exc:  # botocore and aiohttp errors are not all OSErrors
            raise PipelineError(
                f"cache {self.url}: cannot open the entry {marker['data']} "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def _record(self, hit: bool, key: CacheKey | None = None) -> None:
        # Objects cannot be appended to: one empty object per counted lookup. Its name holds
        # the time and key, so it is also the entry's last use.
        digest = "-" if key is None else key.digest
        name = f"{time.time_ns() // 1_000_000}.{'h' if hit else 'm'}.{digest}"
        with contextlib.suppress(Exception):  # a count is not worth failing a run for
            self.fs.pipe_file(self._abs(STATS, f"{name}.{secrets.token_hex(4)}"), b"")

    def _lookups(self) -> list[tuple[float, bool, str]]:
        """``(unix time, hit, digest)`` of every recorded lookup."""
        found = []
        for name in self._names(STATS):
            parts = name.split(".")
            if len(parts) == 4 and parts[0].isdigit() and parts[1] in ("h", "m"):
                found.append((int(parts[0]) / 1000.0, parts[1] == "h", parts[2]))
        return found

    def _last_hits(self) -> dict[str, float]:
        last: dict[str, float] = {}
        for when, hit, digest in self._lookups():
            if hit:
                last[digest] = max(when, last.get(digest, 0.0))
        return last

    # --- writing ------------------------------------------------------------------------

    def put(
        self,
        key: CacheKey,
        case: Case,
        foreground: Mapping[int, npt.ArrayLike] | None = None,
    ) -> CachedCase:
        """Store ``case`` under its own data prefix, then publish the marker (see the module
        docstring); return the published entry (this writer's, or a winner's)."""
        import zarr

        prepared = prepare_entry(key, case, self.settings, foreground)
        prefix = f"{DATA}/{key.digest}.{int(time.time())}.{os.getpid()}.{secrets.token_hex(4)}"
        marker = {**completion_marker(key, prepared), "data": prefix}
        try:
            group = zarr.open_group(
                self._store(prefix, False),
                mode="w-",
                zarr_format=3,
                attributes=prepared.attributes,
            )
            self._write_arrays(group, prepared)
        except Exception as exc:  # botocore and aiohttp errors are not all OSErrors
            with contextlib.suppress(Exception):
                self._remove(prefix)  # no marker names it yet
            raise PipelineError(
                f"case {case.id}: cannot write the cache entry under {self.url}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        try:
            return self._publish_marker(key.digest, marker)
        except PipelineError:
            raise
        except Exception as exc:
            raise PipelineError(
                f"case {case.id}: cannot publish the cache entry under {self.url}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _put_new(self, path: str, body: bytes) -> None:
        """Write ``body`` unless ``path`` exists (FileExistsError); as atomic as the store
        allows: S3's conditional PUT, else check then write."""
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                self.fs.pipe_file(path, body, mode="create")
                return
            except FileExistsError:
                raise
            except (TypeError, NotImplementedError):  # no create mode: check, then write
                break
            except OSError as exc:
                # S3 answers 409 (s3fs: EBUSY) when conditional writes of one object race;
                # asked again, the loser gets 412 (FileExistsError). Never fall back to a
                # blind write here: the other writer's marker may be landing.
                if exc.errno != errno.EBUSY or attempt == _CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        try:
            self.fs.cat_file(path)
        except FileNotFoundError:
            self.fs.pipe_file(path, body)
            return
        raise FileExistsError(path)

    def _publish_marker(self, digest: str, marker: dict[str, Any]) -> CachedCase:
        path = self._marker_path(digest)
        body = json.dumps(marker, sort_keys=True).encode("utf-8")
        try:
            self._put_new(path, body)
        except FileExistsError:
            winner = self._read_marker(digest)
            if winner is not None and winner["data"] != marker["data"]:
                try:
                    cached = self._open_prefix(winner["data"], str(marker["case_id"]))
                except (FileNotFoundError, KeyError, CacheError):
                    pass  # a marker whose data is gone (or going): ours replaces it
                else:
                    self._remove(marker["data"])  # never referenced, so nobody reads it
                    return cached
            # an untrusted marker, or one whose data is gone: ours replaces it
            self.fs.pipe_file(path, body)
            return self._adopt_published(digest, marker)
        return self._open_prefix(marker["data"], str(marker["case_id"]))

    def _adopt_published(self, digest: str, marker: dict[str, Any]) -> CachedCase:
        """After replacing a marker without create-only semantics: open what the marker
        names now. Another writer replacing it at the same moment may have won; its entry
        then serves this process too, so that no process keeps reading a prefix that no
        marker names (``clean_temp`` removes those once stale). Ours is left to
        ``clean_temp``: a reader may have opened it in between."""
        final = self._read_marker(digest)
        case_id = str(marker["case_id"])
        if final is not None and final["data"] != marker["data"]:
            with contextlib.suppress(FileNotFoundError, KeyError, CacheError):
                return self._open_prefix(final["data"], case_id)
        return self._open_prefix(marker["data"], case_id)

    # --- housekeeping -------------------------------------------------------------------

    def _published(self) -> list[str]:
        """The keys that have a marker object under entries/ (one listing, no marker read)."""
        return [n.removesuffix(".json") for n in self._names(ENTRIES) if n.endswith(".json")]

    def _prefixes(self) -> dict[str, list[tuple[str, float]]]:
        """Every data prefix by key: ``{digest: [(name, unix time), ...]}`` (one listing)."""
        found: dict[str, list[tuple[str, float]]] = {}
        for name in self._names(DATA):
            parts = _prefix_parts(name)
            if parts is not None:
                found.setdefault(parts[0], []).append((name, parts[1]))
        return found

    def clean_temp(self, older_than_s: float = 0.0) -> int:
        """Remove data prefixes that no marker names (crashed or lost builds) and that are
        older than ``older_than_s`` seconds; return how many."""
        now = time.time()
        published = set(self._published())
        removed = 0
        for digest, prefixes in self._prefixes().items():
            stale = [name for name, created in prefixes if now - created >= older_than_s]
            if not stale:
                continue
            named: str | None = None
            if digest in published:
                if len(prefixes) == 1:
                    continue  # the usual case: the one prefix of a published entry (no GET)
                marker = self._read_marker(digest)
                named = None if marker is None else marker["data"].removeprefix(f"{DATA}/")
            for name in stale:
                if name != named:
                    self._remove(DATA, name)
                    removed += 1
        return removed

    def _temp_count(self) -> int:
        """Data prefixes that no marker names, from two listings (no marker is read): every
        prefix of a key without a marker, and all but one of a key with one."""
        published = set(self._published())
        return sum(len(p) - (d in published) for d, p in self._prefixes().items())

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, oldest first."""
        markers = self._markers()
        sizes: dict[str, int] = {}
        data_root = self._abs(DATA) + "/"
        self.fs.invalidate_cache(self._abs(DATA))
        try:
            listed = self.fs.find(self._abs(DATA), detail=True)
        except FileNotFoundError:
            listed = {}
        for name, info in listed.items():
            prefix = str(name).removeprefix(data_root).split("/", 1)[0]
            sizes[prefix] = sizes.get(prefix, 0) + int(info.get("size") or 0)
        last_hits = self._last_hits()
        found = []
        for digest, (marker, marker_bytes) in markers.items():
            if marker is None:
                continue
            created = float(marker.get("created", 0.0))
            found.append(
                CacheEntry(
                    key=digest,
                    case_id=str(marker.get("case_id", "")),
                    created=created,
                    last_used=max(created, last_hits.get(digest, 0.0)),
                    stored_bytes=sizes.get(marker["data"].removeprefix(f"{DATA}/"), 0)
                    + marker_bytes,
                    raw_float32_bytes=int(marker.get("raw_float32_bytes", 0)),
                )
            )
        return sorted(found, key=lambda e: e.created)

    def stats(self) -> tuple[int, int]:
        """(hits, misses) recorded since the cache was last cleared."""
        lookups = self._lookups()
        hits = sum(1 for _t, hit, _d in lookups if hit)
        return hits, len(lookups) - hits

    def clear(self, older_than_days: float | None = None) -> int:
        """Remove entries (all, or those not used for ``older_than_days``); return how many.

        The marker goes first, so no reader trusts an entry whose data is being removed.
        Clearing everything also removes the lookup records, markers that are not trusted,
        and data prefixes no marker names that are older than an hour.
        """
        cutoff = None if older_than_days is None else time.time() - older_than_days * 86400.0
        last_hits = self._last_hits() if cutoff is not None else {}
        removed = 0
        for digest, (marker, _size) in self._markers().items():
            if marker is None:
                if cutoff is None:
                    self._remove(ENTRIES, f"{digest}.json")
                continue
            if cutoff is not None:
                created = float(marker.get("created", 0.0))
                if max(created, last_hits.get(digest, 0.0)) >= cutoff:
                    continue
            self._remove(ENTRIES, f"{digest}.json")
            self._remove(marker["data"])
            removed += 1
        if cutoff is None:
            self._remove(STATS)
            self.clean_temp(3600.0)
        return removed
