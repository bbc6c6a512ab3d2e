"""Building the cache of a dataset's cases: one case at a time, in any process.

``CacheBuild`` is what building needs (config, plugins, dataset, preprocessing steps, store),
opened once per process: ``miscore cache build`` opens it in its own process, in each
``--workers`` process and in each Dask worker (``miscore.tools.scaleout``); every case goes
through ``cache_dataset_case``, so an entry built anywhere is a hit for training.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from miscore.core.errors import InputError, MiscoreError, PipelineError
from miscore.tools.scaleout import (
    dask_client,
    describe_cluster,
    describe_failure,
    job_for,
    run_cases,
    worker_plugin_specs,
)

if TYPE_CHECKING:
    from miscore.cache import CaseCache
    from miscore.core.components import Subfunction
    from miscore.core.config import Config
    from miscore.core.plugins import PluginManager
    from miscore.data.dataset import Dataset


class BuildResult(NamedTuple):
    """One case's build: a hit, or built in ``seconds``; a failure has an error and exit code."""

    case_id: str
    hit: bool
    seconds: float
    error: str
    exit_code: int


@dataclass
class CacheBuild:
    """What building needs, opened once per process (the caller's, or each worker's)."""

    config: Config
    manager: PluginManager
    dataset: Dataset
    steps: list[Subfunction]
    store: CaseCache

    @classmethod
    def open(
        cls,
        config: Config,
        data: Path | None,
        cache: str | None,
        manager: PluginManager,
        source: str = "config",
    ) -> CacheBuild:
        """Open the dataset (``data``, else ``data.path``) and the cache (``cache``, else as
        the config says). ``source`` names the config in errors (its file)."""
        from miscore.cache import CaseCache, open_cache
        from miscore.data.dataset import Dataset
        from miscore.data.preprocess import build_steps

        if not config.cache.enabled:
            raise InputError(
                f"{source}: cache.enabled is false, so there is nothing to build; "
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
        start = time.perf_counter()
        try:
            return self.build_or_raise(case_id)
        except MiscoreError as exc:
            return BuildResult(case_id, False, time.perf_counter() - start, str(exc), exc.exit_code)

    def build_or_raise(self, case_id: str) -> BuildResult:
        """Build one case; bad input (``InputError``: a damaged file, a wrong label) is
        returned as a failed result, any other error is raised (a retry may succeed)."""
        from miscore.cache import cache_dataset_case

        start = time.perf_counter()
        try:
            _entry, hit = cache_dataset_case(
                self.store, self.dataset, case_id, self.steps, self.manager, self.config
            )
        except InputError as exc:
            return BuildResult(case_id, False, time.perf_counter() - start, str(exc), exc.exit_code)
        return BuildResult(case_id, hit, time.perf_counter() - start, "", 0)


@dataclass(frozen=True)
class BuildSpec:
    """What a worker process needs to open the same ``CacheBuild``: plain, picklable values
    (the config as JSON; the dataset and cache as absolute paths or URLs)."""

    config_json: str
    data: str
    cache: str
    local_plugins: tuple[str, ...]
    disabled: tuple[str, ...]
    source: str

    def open(self) -> CacheBuild:
        """Build the plugin manager (entry points and the local plugins) and open the job."""
        import json

        from miscore.core.config import parse_config
        from miscore.core.plugins import PluginManager

        manager = PluginManager(local_plugins=self.local_plugins, disabled=self.disabled)
        config = parse_config(json.loads(self.config_json), self.source)
        return CacheBuild.open(config, Path(self.data), self.cache, manager, self.source)


def build_spec(job: CacheBuild, source: str) -> BuildSpec:
    """The spec that reopens ``job`` in another process: its plugin manager's local plugins
    (``--plugin``) and disabled plugins go with it; entry points are found there again."""
    return BuildSpec(
        job.config.model_dump_json(),
        str(Path(job.dataset.root).absolute()),
        job.store.location,
        worker_plugin_specs(job.manager.local_plugins),
        tuple(sorted(job.manager.disabled)),
        source,
    )


def check_results(results: Sequence[BuildResult]) -> None:
    """Raise naming the failed cases (up to 3): ``InputError`` when every failure was bad
    input (exit 2), else ``PipelineError`` (exit 1)."""
    failed = [r for r in results if r.error]
    if not failed:
        return
    error = InputError if all(r.exit_code == 2 for r in failed) else PipelineError
    raise error(
        f"{len(failed)} of {len(results)} cases failed: "
        + "; ".join(f"{r.case_id}: {r.error}" for r in failed[:3])
        + ("; ..." if len(failed) > 3 else "")
    )


def build_cache(
    config: Config,
    data: Path | str | None = None,
    cache: str | None = None,
    *,
    plugins: PluginManager,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
    scheduler: str | None = None,
    source: str = "config",
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    progress: bool = False,
) -> list[BuildResult]:
    """Preprocess the labelled cases of a dataset into the cache; returns one result a case.

    Cases are built here (``workers=1``), in ``workers`` local processes, or one Dask task
    a case on ``scheduler`` (``local:N`` or ``tcp://host:port``, ``miscore.tools.scaleout``).

    Args:
        shard: ``(i, n)``: only every n-th labelled case from the i-th.
        source: the config's name in errors (its file).

    Raises:
        InputError, PipelineError: some cases failed (all are tried; see ``check_results``).
    """
    from miscore.core.progress import progress_bar

    index, count = shard
    job = CacheBuild.open(config, None if data is None else Path(data), cache, plugins, source)
    ids = job.dataset.labelled_ids[index::count]
    log(f"cache {job.store.location}: {len(ids)} cases to check (shard {index}/{count})")
    results: list[BuildResult] = []

    with progress_bar(len(ids), "preprocessing", progress) as advance:

        def report(result: BuildResult) -> None:
            results.append(result)
            built = "cached" if result.hit else f"built in {result.seconds:.1f} s"
            status = f"failed: {result.error}" if result.error else built
            log(f"[{len(results)}/{len(ids)}] {result.case_id}: {status}")
            advance()

        if scheduler is not None:
            build_on_dask(build_spec(job, source), ids, scheduler, report, log)
        elif workers == 1 or len(ids) <= 1:
            for case_id in ids:
                report(job.build(case_id))
        else:
            spec = build_spec(job, source)
            _build_in_processes(spec, ids, workers, report)
    failed = sum(1 for r in results if r.error)
    hits = sum(1 for r in results if r.hit)
    log(f"built {len(results) - hits - failed}, cached {hits}, failed {failed}")
    check_results(results)
    return results


# --- Dask: one task a case -------------------------------------------------------------


def _build_task(spec: BuildSpec, case_id: str) -> BuildResult:
    """A Dask task: build one case with the job this worker opened for ``spec``."""
    job: CacheBuild = job_for(spec, spec.open)
    return job.build_or_raise(case_id)


def build_on_dask(
    spec: BuildSpec,
    ids: Sequence[str],
    scheduler: str,
    report: Callable[[BuildResult], None],
    log: Callable[[str], None],
) -> None:
    """Build the cases ``ids`` as one Dask task each; ``report`` gets every case's result
    (a task that failed twice becomes a failed result naming its case)."""
    with dask_client(scheduler) as client:
        log(f"dask: {describe_cluster(client)}")
        for outcome in run_cases(client, _build_task, spec, ids, "cache-build"):
            if outcome.error is None:
                report(outcome.value)
            else:
                reason, code = describe_failure(outcome.error)
                report(BuildResult(outcome.case_id, False, 0.0, reason, code))


# --- local worker processes (--workers N) -----------------------------------------------

_WORKER: dict[str, CacheBuild] = {}
#: why this worker process could not start: raised by every case asked of it
_START_FAILURE: list[str] = []


def _worker_init(spec: BuildSpec) -> None:
    """Each worker process builds its own plugin manager and opens the job once. A failure
    is kept and raised by the cases asked of this worker, naming it: an initializer that
    raises would break the pool with ``BrokenProcessPool`` and no reason."""
    import multiprocessing

    try:
        _WORKER["job"] = spec.open()
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


def _build_in_processes(
    spec: BuildSpec,
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
        initargs=(spec,),
    ) as pool:
        try:
            futures = [pool.submit(_worker_build, case_id) for case_id in ids]
            for future in as_completed(futures):
                report(future.result())
        except BrokenProcessPool:
            raise PipelineError(
                "a cache build worker process ended abruptly (killed, or out of memory?); "
                "--workers 1 builds in this process"
            ) from None
        except BaseException:
            # a worker that could not start, or Ctrl-C: the queued cases are not built
            pool.shutdown(wait=True, cancel_futures=True)
            raise
