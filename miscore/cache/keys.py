"""Cache keys: everything an entry depends on, hashed.

The key (``make_key``) hashes the input files' identity (``file_identity``), the deterministic
pipeline (``pipeline_fingerprint``: preprocessing entries with their defaults, the versions of
the plugins involved, miscore's version) and the cache's own settings (``CacheSettings``).
A plugin whose code can change under one version (a local ``--plugin`` file, an editable
install) enters with the hash of its source (``PluginInfo.key_version``).
Change any of them and a new entry is made; nothing stale is ever served.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from miscore.core.errors import InputError

if TYPE_CHECKING:
    from miscore.core.components import Subfunction
    from miscore.core.config import CacheConfig
    from miscore.core.plugins import PluginManager

#: Bumped when the entry layout changes; part of every key.
FORMAT_VERSION = 1
#: Foreground voxel coordinates kept per class (a uniform random subset).
DEFAULT_FOREGROUND_SAMPLES = 10_000

Compression = Literal["zstd", "lz4", "none"]


@dataclass(frozen=True)
class CacheSettings:
    """How entries are stored; every field enters the key.

    Args:
        compression: Blosc codec (``lz4`` reads fastest, ``zstd`` is smaller) or ``none``.
        float16: store images as float16 (half the bytes; values beyond +-65504 are refused).
        content_hash: identify input files by a SHA-256 of their bytes instead of
            path + size + mtime (slower to key, survives copies and ``touch``).
        chunks: spatial chunk shape; None gives 64 per axis (3D) or 256 (2D). The patch
            shape, or half of it, is a good choice.
        foreground_samples: foreground coordinates kept per class.
        seed: seed of the foreground subset (mixed with each entry's key).
    """

    compression: Compression = "lz4"
    float16: bool = False
    content_hash: bool = False
    chunks: tuple[int, ...] | None = None
    foreground_samples: int = DEFAULT_FOREGROUND_SAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.compression not in ("zstd", "lz4", "none"):
            raise InputError(
                f"cache.compression: {self.compression!r} is not one of zstd, lz4, none"
            )
        if self.chunks is not None and any(int(n) < 1 for n in self.chunks):
            raise InputError(f"cache chunks must be positive; got {list(self.chunks)}")
        if self.foreground_samples < 0:
            raise InputError("cache foreground_samples must be >= 0")

    @classmethod
    def from_config(
        cls,
        cache: CacheConfig,
        chunks: Sequence[int] | None = None,
        foreground_samples: int = DEFAULT_FOREGROUND_SAMPLES,
        seed: int = 0,
    ) -> CacheSettings:
        return cls(
            compression=cache.compression,
            float16=cache.float16,
            content_hash=cache.content_hash,
            chunks=None if chunks is None else tuple(int(n) for n in chunks),
            foreground_samples=foreground_samples,
            seed=seed,
        )

    def key_part(self) -> dict[str, Any]:
        return {
            "compression": self.compression,
            "image_dtype": "float16" if self.float16 else "float32",
            "content_hash": self.content_hash,
            "foreground_samples": self.foreground_samples,
            "seed": self.seed,
        }


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path: Path | str, content_hash: bool = False) -> dict[str, Any]:
    """What identifies an input: absolute path, size and mtime_ns (or a SHA-256 of the bytes).

    A folder (a DICOM series) is identified by every file below it.
    """
    path = Path(path).absolute()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    parts: list[dict[str, Any]] = []
    for file in files:
        name = file.relative_to(path).as_posix() if path.is_dir() else ""
        if content_hash:
            parts.append({"name": name, "sha256": _sha256_file(file)})
        else:
            stat = file.stat()
            parts.append({"name": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    # With a content hash the key does not depend on where the file lies: copies share entries.
    return {"files": parts} if content_hash else {"path": str(path), "files": parts}


def split_cacheable(
    steps: Sequence[Subfunction],
) -> tuple[list[Subfunction], list[Subfunction]]:
    """``(cached, on_access)``: the deterministic steps up to the first that is not, and the
    rest, which the loader runs on every read of the cached case."""
    for i, step in enumerate(steps):
        if not step.deterministic:
            return list(steps[:i]), list(steps[i:])
    return list(steps), []


def pipeline_fingerprint(
    steps: Sequence[Subfunction],
    manager: PluginManager,
    *,
    training: bool,
    classes: int | None = None,
    io: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The deterministic part of the pipeline a cache entry depends on.

    Args:
        steps: the cached preprocessing steps, in order (each must be deterministic).
        manager: gives the version of the plugin that registers each step and reader (with
            its source hash for local plugins and editable installs: ``key_version``).
        training: whether steps ran in training mode (a step may treat labels differently).
        classes: ``data.classes``.
        io: names of the IO components that read the inputs.
        extra: anything else the caller's preprocessing depends on (JSON-able).
    """
    entries = []
    plugins: dict[str, str] = {}
    for step in steps:
        if not step.deterministic:
            raise InputError(
                f"preprocessing step {step.name!r} is not deterministic and cannot be cached; "
                "cache only the steps before it"
            )
        entries.append(step.config())  # validated params, defaults filled in
        info = manager.plugin_of("subfunction", step.name)
        plugins[info.name] = info.key_version
    for name in io:
        info = manager.plugin_of("io", name)
        plugins[info.name] = info.key_version
    return {
        "preprocessing": entries,
        "plugins": dict(sorted(plugins.items())),
        "training": training,
        "classes": classes,
        "io": sorted(io),
        "extra": dict(extra or {}),
    }


@dataclass(frozen=True)
class CacheKey:
    """A cache key: the hex digest that names the entry and the material it was hashed from."""

    digest: str
    case_id: str
    material: dict[str, Any] = field(compare=False, hash=False, repr=False)


def make_key(
    case_id: str,
    inputs: Sequence[Path | str],
    fingerprint: Mapping[str, Any],
    settings: CacheSettings,
) -> CacheKey:
    """Hash everything an entry depends on into a ``CacheKey``."""
    from miscore.core.version import __version__

    material = {
        "format": FORMAT_VERSION,
        "miscore": __version__,
        "case_id": case_id,
        "inputs": [file_identity(p, settings.content_hash) for p in inputs],
        "pipeline": dict(fingerprint),
        "settings": settings.key_part(),
    }
    try:
        text = json.dumps(material, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"cache key of case {case_id}: not JSON-able: {exc}") from None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]
    return CacheKey(digest, case_id, json.loads(text))
