"""``miscore cache``: build, inspect and clear the cache of preprocessed cases."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from miscore.cli.state import print_json, state
from miscore.core.errors import InputError

if TYPE_CHECKING:
    from miscore.cache import CaseCache

app = typer.Typer(
    help="Build, inspect and clear the cache of preprocessed cases.", no_args_is_help=True
)

CacheOption = Annotated[
    str | None,
    typer.Option(
        "--cache",
        help="Cache folder or URL (s3://bucket/prefix, ...); overrides MISCORE_CACHE_DIR "
        "and the config's cache.path.",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Read cache.path from this config file."),
]


def _open(cache_path: str | None, config_path: Path | None) -> CaseCache:
    from miscore.cache import CaseCache, resolve_cache_location
    from miscore.core.config import load_config

    config = load_config(config_path) if config_path is not None else None
    return CaseCache(resolve_cache_location(config, cache_path))


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@app.command()
def info(
    cache: CacheOption = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Show the entries, their size on disk against raw float32, and the hit rate."""
    summary = _open(cache, config).info()
    if as_json:
        print_json(summary.model_dump())
        return
    print(f"cache: {summary.location}")
    print(f"entries: {summary.entries} ({summary.cases} cases)")
    if summary.ratio is not None:
        print(
            f"stored: {_size(summary.stored_bytes)}, raw float32: "
            f"{_size(summary.raw_float32_bytes)} ({summary.ratio:.0%})"
        )
    if summary.hit_rate is not None:
        print(f"hit rate: {summary.hit_rate:.0%} ({summary.hits} hits, {summary.misses} misses)")
    if summary.temp_folders:
        print(f"temporary folders: {summary.temp_folders} (builds running or left by a crash)")


@app.command()
def clear(
    ctx: typer.Context,
    older_than: Annotated[
        float | None,
        typer.Option("--older-than", min=0.0, help="Only entries not used for this many days."),
    ] = None,
    cache: CacheOption = None,
    config: ConfigOption = None,
) -> None:
    """Remove cache entries: all of them, or those not used for --older-than DAYS."""
    store = _open(cache, config)
    removed = store.clear(older_than)
    state(ctx).log(f"removed {removed} entries from {store.location}")


def _parse_shard(shard: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None -> ``(0, 1)``."""
    if shard is None:
        return 0, 1
    try:
        index_text, count_text = shard.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise InputError(f"--shard {shard}: expected i/n, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise InputError(f"--shard {shard}: need 0 <= i < n")
    return index, count


@app.command()
def build(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="The YAML config (preprocessing, cache).")],
    data: Annotated[
        Path | None, typer.Option("--data", help="Dataset folder; default: data.path.")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Processes that preprocess cases.")
    ] = 1,
    shard: Annotated[
        str | None,
        typer.Option("--shard", help="i/n: build every n-th case from the i-th (0-based)."),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            help="Build on Dask, one task a case: local:N (N processes here) or "
            "tcp://host:8786 (a running scheduler); needs miscore[dask].",
        ),
    ] = None,
    cache: CacheOption = None,
) -> None:
    """Preprocess the labelled cases of a dataset into the cache (done once, reused by train)."""
    from miscore.core.config import load_config
    from miscore.tools.cachebuild import build_cache

    cli = state(ctx)
    shard_range = _parse_shard(shard)
    if scheduler is not None:
        from miscore.tools.scaleout import import_distributed, parse_scheduler

        parse_scheduler(scheduler)
        import_distributed()  # a missing extra fails before the dataset is read
        if workers != 1:
            raise InputError("--workers and --scheduler: give one (local:N runs N processes)")
    build_cache(
        load_config(config),
        data,
        cache,
        plugins=cli.plugins,
        shard=shard_range,
        workers=workers,
        scheduler=scheduler,
        source=str(config),
        log=cli.log,
        progress=cli.interactive,
    )
