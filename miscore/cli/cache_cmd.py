"""``miscore cache``: build, inspect and clear the cache of preprocessed cases."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import typer

from miscore.cli.state import print_json, state
from miscore.core.errors import InputError, MiscoreError, PipelineError
from miscore.core.progress import progress_bar

if TYPE_CHECKING:
    from miscore.cache import CaseCache
    from miscore.core.components import Subfunction
    from miscore.core.config import Config
    from miscore.core.plugins import PluginManager
    from miscore.data.dataset import Dataset

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


class BuildResult(NamedTuple):
    """One case's build: a hit, or built in ``seconds``; a failure has an error and exit code."""

    case_id: str
    hit: bool
    seconds: float
    error: str
    exit_code: int


@dataclass
class _BuildJob:
    """What building needs, opened once per process (the CLI's, or each worker's)."""

    config: Config
    manager: PluginManager
    dataset: Dataset
    steps: list[Subfunction]
    store: CaseCache

    @classmethod
    def open(
        cls,
        config_path: Path,
        data: Path | None,
        cache: str | None,
        manager: PluginManager,
    ) -> _BuildJob:
        from miscore.cache import CaseCache, open_cache
        from miscore.core.config import load_config
        from miscore.data.dataset import Dataset
        from miscore.data.preprocess import build_steps

        config = load_config(config_path)
        if not config.cache.enabled:
            raise InputError(
                f"{config_path}: cache.enabled is false, so there is nothing to build; "
                "set it to true (cases are then preprocessed once, here)"
            )
        data = data if data is not None else (Path(config.data.path) if config.data.path else None)
        if data is None:
            raise InputError("no dataset: give --data DATA or set data.path in the config")
        registry = manager.registry
        steps = build_steps(config.preprocessing, registry)
        manager.configure(config)
        dataset = Dataset.discover(data, registry, config.data.layout, config.data.io)
        store = open_cache(config, cache)
        assert isinstance(store, CaseCache)  # cache.enabled is true
        return cls(config, manager, dataset, steps, store)

    def build(self, case_id: str) -> BuildResult:
        """Build one case; errors are returned, so one case cannot stop the others."""
        from miscore.cache import cache_dataset_case

        start = time.perf_counter()
        try:
            _entry, hit = cache_dataset_case(
                self.store, self.dataset, case_id, self.steps, self.manager, self.config
            )
        except MiscoreError as exc:
            return BuildResult(case_id, False, time.perf_counter() - start, str(exc), exc.exit_code)
        return BuildResult(case_id, hit, time.perf_counter() - start, "", 0)


_WORKER: dict[str, _BuildJob] = {}
#: why this worker process could not start: raised by every case asked of it
_START_FAILURE: list[str] = []


def _worker_init(
    config_path: str, data: str | None, cache: str | None, local_plugins: Sequence[str]
) -> None:
    """Each worker process builds its own plugin manager and opens the job once. A failure
    is kept and raised by the cases asked of this worker, naming it: an initializer that
    raises would break the pool with ``BrokenProcessPool`` and no reason."""
    import multiprocessing

    from miscore.core.plugins import PluginManager

    try:
        manager = PluginManager(local_plugins=local_plugins)
        _WORKER["job"] = _BuildJob.open(
            Path(config_path), None if data is None else Path(data), cache, manager
        )
    except Exception as exc:
        process = multiprocessing.current_process()
        reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        _START_FAILURE.append(
            f"cache build worker {process.name} (pid {process.pid}) failed to start: "
            f"{type(exc).__name__}: {reason} (--workers 1 builds in this process)"
        )


def _worker_build(case_id: str) -> BuildResult:
    if "job" not in _WORKER:
        raise PipelineError(_START_FAILURE[0] if _START_FAILURE else "worker not started")
    return _WORKER["job"].build(case_id)


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
    cache: CacheOption = None,
) -> None:
    """Preprocess the labelled cases of a dataset into the cache (done once, reused by train)."""
    cli = state(ctx)
    index, count = _parse_shard(shard)
    job = _BuildJob.open(config, data, cache, cli.plugins)
    ids = job.dataset.labelled_ids[index::count]
    cli.log(f"cache {job.store.location}: {len(ids)} cases to check (shard {index}/{count})")
    results: list[BuildResult] = []

    with progress_bar(len(ids), "preprocessing", cli.interactive) as advance:

        def report(result: BuildResult) -> None:
            results.append(result)
            built = "cached" if result.hit else f"built in {result.seconds:.1f} s"
            status = f"failed: {result.error}" if result.error else built
            cli.log(f"[{len(results)}/{len(ids)}] {result.case_id}: {status}")
            advance()

        if workers == 1 or len(ids) <= 1:
            for case_id in ids:
                report(job.build(case_id))
        else:
            _build_parallel(config, data, cache, cli.local_plugins, ids, workers, report)
    failed = [r for r in results if r.error]
    hits = sum(1 for r in results if r.hit)
    cli.log(f"built {len(results) - hits - len(failed)}, cached {hits}, failed {len(failed)}")
    if failed:
        # bad input files (exit 2) unless some case failed for another reason (exit 1)
        error = InputError if all(r.exit_code == 2 for r in failed) else PipelineError
        raise error(
            f"{len(failed)} of {len(ids)} cases failed: "
            + "; ".join(f"{r.case_id}: {r.error}" for r in failed[:3])
            + ("; ..." if len(failed) > 3 else "")
        )


def _build_parallel(
    config: Path,
    data: Path | None,
    cache: str | None,
    local_plugins: Sequence[str],
    ids: Sequence[str],
    workers: int,
    report: Callable[[BuildResult], None],
) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # "spawn": a fresh interpreter per worker (no forked zarr/TensorFlow threads); each
    # worker loads the plugins and opens the dataset and cache itself.
    with ProcessPoolExecutor(
        max_workers=min(workers, len(ids)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(
            str(config.absolute()),
            None if data is None else str(data.absolute()),
            cache,
            tuple(local_plugins),
        ),
    ) as pool:
        futures = [pool.submit(_worker_build, case_id) for case_id in ids]
        try:
            for future in as_completed(futures):
                report(future.result())
        except BrokenProcessPool:
            raise PipelineError(
                "a cache build worker process ended abruptly (killed, or out of memory?); "
                "--workers 1 builds in this process"
            ) from None
