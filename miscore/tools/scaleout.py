"""Per-case work on a Dask cluster (``dask.distributed``): the mechanics, and prediction.

The cache build's task is in ``miscore.tools.cachebuild`` (``build_on_dask``), prediction's
here (``predict_on_dask``); both run through ``run_cases`` and ``job_for``.

``--scheduler local:N`` starts a ``LocalCluster`` of N worker processes on this machine (one
thread each) and closes it at the end; ``--scheduler tcp://host:8786`` connects to a running
scheduler. Each case is one task. Dask is imported only here, when a scheduler is asked for;
without it installed, a one-line error says how to get it (``pip install 'miscore[dask]'``).

What a worker does: it builds its own plugin manager (entry points, the caller's local
``--plugin`` specs, the disabled plugins), then opens the job once per process and keeps it
for the next tasks (the dataset and cache for a build; the model and the input list for
prediction), so a model is loaded once per worker, not once per case. The cache location,
the dataset, the model folder, the inputs and the output folder must be the same paths on
every worker (a shared folder) or URLs (the cache on an object store).

Failures: a case whose input is bad (``InputError``: a damaged file, a label beyond
``data.classes``, the wrong channel count) fails the same way on any worker, so the task
returns the error and is not retried. Any other exception (a shared file system's hiccup, a
plugin's crash, memory) is raised, and Dask runs the task once more (``retries=1``) on any
worker; a worker process that dies is Dask's business (it reschedules its tasks, up to
``distributed.scheduler.allowed-failures``). Every failed case is reported by its id; the
others finish. Outputs are written under a temporary name and renamed into place
(``atomic_output``, in the IO plugins and the cache stores), so a failed or retried case leaves
nothing half-written.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from miscore.core.errors import InputError, MiscoreError, PipelineError

if TYPE_CHECKING:
    from miscore.core.plugins import PluginManager
    from miscore.pipeline.inference import InputCase, Predictor

DASK_MISSING = (
    "--scheduler runs on Dask, which is not installed: pip install 'miscore[dask]' "
    "(or pip install 'dask[distributed]')"
)

_ADDRESS = re.compile(r"^(tcp|tls)://[^/\s]+$")


@dataclass(frozen=True)
class Scheduler:
    """A parsed ``--scheduler``: ``local:N`` (``workers`` set) or a scheduler's address."""

    text: str
    workers: int | None = None
    address: str | None = None


def parse_scheduler(text: str) -> Scheduler:
    """``local:N`` or ``tcp://host:port`` (``tls://`` too); anything else is an InputError."""
    if text.startswith("local:"):
        count = text.removeprefix("local:")
        if count.isdigit() and int(count) >= 1:
            return Scheduler(text, workers=int(count))
    elif _ADDRESS.match(text):
        return Scheduler(text, address=text)
    raise InputError(
        f"--scheduler {text}: expected local:N (N worker processes on this machine) or "
        "tcp://host:port (a running Dask scheduler)"
    )


def import_distributed() -> Any:
    """``dask.distributed``, or the one-line error that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise InputError(DASK_MISSING) from None
    return distributed


@contextmanager
def dask_client(text: str) -> Iterator[Any]:
    """A ``distributed.Client`` for ``--scheduler text``; a LocalCluster it started is closed."""
    import logging

    scheduler = parse_scheduler(text)
    distributed = import_distributed()
    if scheduler.workers is not None:
        # one process a worker, one thread each: a worker runs one case at a time, and its
        # TensorFlow gets this machine's cores divided among the workers (predict)
        with (
            distributed.LocalCluster(
                n_workers=scheduler.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # a free port: never "8787 is already in use"
                # a task's failure is reported by its case; the workers' own log of it
                # (a traceback per try) would bury that report
                silence_logs=logging.CRITICAL,
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = distributed.Client(scheduler.address, timeout="30s")
    except (OSError, TimeoutError) as exc:
        raise PipelineError(
            f"--scheduler {text}: cannot reach the Dask scheduler ({exc}); is `dask scheduler` "
            "running there, and the port open?"
        ) from None
    with client:
        yield client


class TaskOutcome(NamedTuple):
    """A case's task: its value, or the exception it ended with (after its retry)."""

    case_id: str
    value: Any
    error: BaseException | None


def run_cases(
    client: Any, task: Callable[..., Any], spec: object, ids: Sequence[str], kind: str
) -> Iterator[TaskOutcome]:
    """Submit ``task(spec, case_id)`` for every case, retried once on an exception; yield the
    outcomes as they complete (the order of completion)."""
    distributed = import_distributed()
    run = uuid.uuid4().hex[:8]
    futures = {
        client.submit(task, spec, case_id, key=f"miscore-{kind}-{case_id}-{run}", retries=1): (
            case_id
        )
        for case_id in ids
    }
    for future in distributed.as_completed(futures):
        case_id = futures[future]
        if future.status == "finished":
            yield TaskOutcome(case_id, future.result(), None)
            continue
        try:
            error = future.exception()
        except BaseException as exc:  # cancelled: the cluster went away
            error = exc
        yield TaskOutcome(case_id, None, error or PipelineError(f"task {future.status}"))


def describe_failure(error: BaseException) -> tuple[str, int]:
    """A failed task's one-line reason and exit code (a MiscoreError's, else 1)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = "; ".join(lines) or "no message"
    name = type(error).__name__
    if name in ("KilledWorker", "CancelledError", "FutureCancelledError"):
        return f"{name}: {reason}", 1  # the worker died (again and again), or the cluster
    if not isinstance(error, MiscoreError):
        reason = f"{name}: {reason}"
    return f"{reason} (tried twice)", getattr(error, "exit_code", 1)


def worker_plugin_specs(local_plugins: Sequence[str]) -> tuple[str, ...]:
    """The local plugin specs as a worker elsewhere must see them: an existing ``.py`` file
    or folder as an absolute path (a worker's working folder may differ), a module as is."""
    return tuple(
        str(Path(spec).absolute()) if Path(spec).exists() else spec for spec in local_plugins
    )


# --- worker state: one job per worker process, reused by its next tasks ------------------

_LOCK = threading.Lock()
_JOBS: dict[object, Any] = {}


def job_for(spec: object, open_job: Callable[[], Any]) -> Any:
    """The job ``spec`` opens, opened once in this process; another spec replaces it (a
    worker of a long-lived cluster holds one model or dataset at a time, not every one)."""
    with _LOCK:
        if spec not in _JOBS:
            _JOBS.clear()
            try:
                _JOBS[spec] = open_job()
            except MiscoreError as exc:
                raise PipelineError(f"{_worker_name()} could not start: {exc}") from None
        return _JOBS[spec]


def _worker_name() -> str:
    try:
        import distributed

        return f"dask worker {distributed.get_worker().address} (pid {os.getpid()})"
    except (ImportError, ValueError):
        return f"worker pid {os.getpid()}"


def describe_cluster(client: Any) -> str:
    """``2 workers, 2 threads at tcp://...``: what the run got."""
    workers = client.scheduler_info().get("workers", {})
    threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
    address = client.scheduler.address
    if not workers:
        return f"no workers yet at {address}; the tasks start as workers join"
    return f"{len(workers)} workers, {threads} threads at {address}"


# --- prediction ----------------------------------------------------------------------------


class PredictResult(NamedTuple):
    """One case's prediction: the file written, or an error and exit code."""

    case_id: str
    path: str
    seconds: float
    error: str
    exit_code: int


@dataclass(frozen=True)
class PredictSpec:
    """What a worker needs to predict: plain, picklable values, paths absolute."""

    model_dir: str
    inputs: tuple[str, ...]
    out: str
    local_plugins: tuple[str, ...]
    disabled: tuple[str, ...]
    overlap: float | None
    blend: str | None
    tta: bool | None
    with_probabilities: bool
    writer: str | None
    #: TensorFlow's intra-op threads in each worker (None: TensorFlow's default, all cores)
    tf_threads: int | None

    def open(self) -> tuple[Predictor, dict[str, InputCase]]:
        """The model (loaded once in this worker process) and the cases by id."""
        from miscore.core.plugins import PluginManager
        from miscore.pipeline.inference import find_inputs, load_model

        _configure_tensorflow(self.tf_threads)
        plugins = PluginManager(local_plugins=self.local_plugins, disabled=self.disabled)
        predictor = load_model(self.model_dir, plugins)
        cases = find_inputs(list(self.inputs), plugins)
        return predictor, {case.id: case for case in cases}


def _configure_tensorflow(threads: int | None) -> None:
    """Start TensorFlow in this worker with ``threads`` cores (None: all of them), its C++
    start-up lines (oneDNN, CUDA probing) hidden as the CLI hides them: they go to file
    descriptor 2 before Python can filter them, so it points at /dev/null meanwhile."""
    import sys

    from miscore.core.quiet import native_stderr_silenced

    if "tensorflow" in sys.modules:
        return  # an earlier job of this worker started it; its threads stay
    with native_stderr_silenced():
        import tensorflow as tf

        if threads is not None:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        tf.constant(0.0)  # starts the runtime (and its log lines) with these threads


def _predict_task(spec: PredictSpec, case_id: str) -> PredictResult:
    from miscore.pipeline.inference import predict_and_write

    predictor, cases = job_for(spec, spec.open)
    if case_id not in cases:
        raise PipelineError(
            f"{_worker_name()} finds no case {case_id} in {', '.join(spec.inputs)}: "
            "the inputs must be the same paths on every worker (a shared folder)"
        )
    start = time.perf_counter()
    try:
        path = predict_and_write(
            predictor,
            cases[case_id],
            Path(spec.out),
            spec.overlap,
            spec.blend,
            spec.tta,
            spec.with_probabilities,
            spec.writer,
        )
    except InputError as exc:  # the same on any worker: not retried
        return PredictResult(case_id, "", time.perf_counter() - start, str(exc), exc.exit_code)
    return PredictResult(case_id, str(path), time.perf_counter() - start, "", 0)


def local_threads(scheduler: str) -> int | None:
    """TensorFlow threads per worker: this machine's cores divided among ``local:N``'s
    workers; None for a remote cluster (each worker machine decides)."""
    workers = parse_scheduler(scheduler).workers
    if workers is None:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def predict_on_dask(
    model_dir: Path | str,
    inputs: Sequence[Path | str],
    out: Path | str,
    *,
    scheduler: str,
    plugins: PluginManager | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    tta: bool | None = None,
    with_probabilities: bool = False,
    writer: str | None = None,
    log: Callable[[str], None] = lambda message: None,
    progress: bool = False,
) -> list[Path]:
    """``predict`` with one Dask task a case; returns the written paths in input order.

    Everything that can be checked here is, before a worker starts (the model folder and
    its plugins, the inputs, the output folder, ``writer``); the Keras model is loaded by
    the workers only, so TensorFlow is not imported in this process. Workers load the
    installed plugins and ``plugins``' local ones (``--plugin``) again.

    Raises:
        InputError, PipelineError: some cases failed; the others are written.
    """
    from miscore.core.plugins import PluginManager
    from miscore.core.progress import progress_bar
    from miscore.pipeline.inference import check_prediction

    parse_scheduler(scheduler)
    plugins = plugins or PluginManager()
    cases = check_prediction(model_dir, inputs, out, plugins, writer)
    spec = PredictSpec(
        str(Path(model_dir).absolute()),
        tuple(str(Path(p).absolute()) for p in inputs),
        str(Path(out).absolute()),
        worker_plugin_specs(plugins.local_plugins),
        tuple(sorted(plugins.disabled)),
        overlap,
        blend,
        tta,
        with_probabilities,
        writer,
        local_threads(scheduler),
    )
    import_distributed()
    results: dict[str, PredictResult] = {}
    ids = [case.id for case in cases]
    with (
        progress_bar(len(ids), "predicting", progress) as advance,
        dask_client(scheduler) as client,
    ):
        log(f"dask: {describe_cluster(client)}")
        for outcome in run_cases(client, _predict_task, spec, ids, "predict"):
            result = outcome.value
            if outcome.error is not None:
                reason, code = describe_failure(outcome.error)
                result = PredictResult(outcome.case_id, "", 0.0, reason, code)
            results[outcome.case_id] = result
            status = f"failed: {result.error}" if result.error else result.path
            log(f"[{len(results)}/{len(ids)}] {result.case_id} -> {status}")
            advance()
    failed = [results[i] for i in ids if results[i].error]
    if failed:
        error = InputError if all(r.exit_code == 2 for r in failed) else PipelineError
        raise error(
            f"{len(failed)} of {len(ids)} cases failed (the others are written): "
            + "; ".join(f"{r.case_id}: {r.error}" for r in failed[:3])
            + ("; ..." if len(failed) > 3 else "")
        )
    return [Path(results[i].path) for i in ids]
