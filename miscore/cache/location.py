"""Where the cache lives: a local folder or an fsspec URL, from the CLI, environment or config."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from miscore.core.config import CacheConfig, Config

#: Environment variable naming the cache location (below ``--cache``, above ``cache.path``).
CACHE_ENV = "MISCORE_CACHE_DIR"

_URL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*::)*[A-Za-z][A-Za-z0-9+.\-]*://")


def default_cache_location() -> str:
    """The user's cache folder for miscore (``platformdirs.user_cache_dir("miscore")``)."""
    import platformdirs

    return str(platformdirs.user_cache_dir("miscore"))


def is_url(location: Path | str) -> bool:
    """Whether ``location`` is a URL for fsspec (``s3://b/x``, ``simplecache::s3://b/x``);
    ``file://`` and plain paths are local folders."""
    text = str(location)
    return bool(_URL.match(text)) and not text.startswith("file://")


def resolve_cache_location(
    config: Config | CacheConfig | None = None, cli_value: str | None = None
) -> str:
    """Where the cache lives: ``--cache``, else ``$MISCORE_CACHE_DIR``, else ``cache.path``,
    else the user's cache folder. ``$VARS`` are expanded; a URL is kept as it is (no trailing
    ``/``), a path gets ``~`` expanded and is made absolute (``file://`` is a path)."""
    cache_config = getattr(config, "cache", config)
    configured = getattr(cache_config, "path", None)
    for value in (cli_value, os.environ.get(CACHE_ENV), configured):
        if value:
            value = os.path.expandvars(value)
            if is_url(value):
                return value.rstrip("/")
            path = Path(os.path.expanduser(value.removeprefix("file://")))
            return str(path.absolute())
    return default_cache_location()
