"""``miscore bench``: where the time of a training run goes, on the user's own data and config.

Every stage of the pipeline is timed on its own (medians of several repeats), then the two
that decide a training run's speed are compared: the data a batch needs (read from the cache,
augmented, assembled, by the configured loader) and the model's training step on a fixed
in-memory batch, the limit no loader can beat (nnU-Net's "no data loading" trainers). The
verdict says which one bounds training and by how much.

Stages (``StageTiming.name``):

- ``read``: one case read from disk by its IO plugin, per case;
- ``preprocess``: the configured preprocessing of one case;
- ``cache_build``: read + preprocess + write one case into a fresh cache;
- ``cache_read_cold`` / ``cache_read_warm``: one batch's patches read from the cache, the first
  time after opening the entries and again (the OS page cache holds the just-written files
  in both: "cold" is zarr's own first touch, not a cold disk);
- ``augment``: the configured augmentations on one sample;
- ``batch``: one batch assembled in one process (read + augment + one-hot + stack);
- ``loader``: one batch from the configured loader (``training.workers``), no model;
- ``train_step_fixed``: one training step on a fixed in-memory batch (no data loading);
- ``train_step``: one training step fed by the loader, as in ``miscore train``;
- ``predict``: sliding-window prediction of one preprocessed volume, with
  ``model_s`` (time inside the model) and ``overhead_s`` (the rest) in ``extra``.

Each stage records the process's peak resident memory when it ended (``peak_rss_mb``).
TensorFlow is imported inside the functions that use it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from miscore.core.config import Config
from miscore.core.errors import InputError
from miscore.core.version import __version__

if TYPE_CHECKING:
    import keras

    from miscore.cache import CachedCase, CaseStore
    from miscore.core.components import Augmentation, Sampler, Subfunction
    from miscore.core.plugins import PluginManager
    from miscore.core.volume import Case
    from miscore.data.dataset import Dataset
    from miscore.pipeline.loader import Batch, BatchMaker, PatchLoader, Sample

T = TypeVar("T")


# --- the report ---------------------------------------------------------------------------


class StageTiming(BaseModel):
    """One stage's time per unit of work (median of ``repeats`` timings)."""

    name: str = Field(description="stage id, e.g. 'read' or 'train_step_fixed'")
    what: str = Field(description="what one timing covers")
    unit: str = Field(description="the unit of work: case, batch, sample, step or volume")
    median_s: float = Field(description="median seconds per unit")
    mean_s: float = Field(description="mean seconds per unit (rare costly units count)")
    min_s: float = Field(description="fastest timing, seconds")
    repeats: int = Field(description="timings the median is taken over")
    peak_rss_mb: float = Field(description="peak resident memory of the process at the end")
    extra: dict[str, float] = Field(default_factory=dict, description="stage-specific figures")


class MachineInfo(BaseModel):
    """Where the figures were measured."""

    cpu: str
    cpus: int
    memory_gb: float
    gpus: list[str] = Field(default_factory=list)
    python: str
    platform: str


class Verdict(BaseModel):
    """Which stage bounds training, and by how much."""

    bound: Literal["data", "model"] = Field(description="what limits the training speed")
    data_s_per_batch: float = Field(description="the loader's seconds per batch (no model)")
    model_s_per_step: float = Field(description="a training step on a fixed batch")
    factor: float = Field(description="the slower of the two over the faster")
    real_s_per_step: float = Field(description="a training step fed by the loader")
    real_over_limit: float = Field(description="real step / fixed-batch step (1.0 is ideal)")
    message: str = Field(description="the verdict for people, with what to change")


class BenchReport(BaseModel):
    """Everything ``miscore bench`` measured (``--json`` prints this)."""

    miscore: str = __version__
    machine: MachineInfo
    config: str
    data: str
    cases: list[str]
    batch_size: int
    patch_shape: list[int]
    workers: int
    stages: list[StageTiming]
    verdict: Verdict


# --- measuring ----------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux ``VmHWM``, else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # kilobytes on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def machine_info() -> MachineInfo:
    """CPU model, cores, memory and visible GPUs (GPUs only when TensorFlow is loaded)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = 0.0
    with contextlib.suppress(ValueError, OSError, AttributeError):
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    gpus: list[str] = []
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return MachineInfo(
        cpu=cpu,
        cpus=len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count() or 1,
        memory_gb=round(memory, 1),
        gpus=gpus,
        python=platform.python_version(),
        platform=platform.platform(terse=True),
    )


class _Stages:
    """Collects stage timings and logs each one as it ends."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.stages: list[StageTiming] = []

    def add(
        self,
        name: str,
        what: str,
        unit: str,
        times: Sequence[float],
        extra: dict[str, float] | None = None,
    ) -> StageTiming:
        values = list(times) or [0.0]
        stage = StageTiming(
            name=name,
            what=what,
            unit=unit,
            median_s=float(np.median(values)),
            mean_s=float(np.mean(values)),
            min_s=float(np.min(values)),
            repeats=len(times),
            peak_rss_mb=peak_rss_mb(),
            extra={k: float(v) for k, v in (extra or {}).items()},
        )
        self.stages.append(stage)
        self.log(f"{name}: {format_seconds(stage.median_s)} per {unit} ({what})")
        return stage


def _timed(function: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def format_seconds(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def _cycle(items: Sequence[T], count: int) -> Iterator[T]:
    for i in range(count):
        yield items[i % len(items)]


# --- the run ------------------------------------------------------------------------------


@dataclass
class _Job:
    """What every stage needs: the config with its components, the plugins and the cases."""

    config: Config
    plugins: PluginManager
    dataset: Dataset
    ids: list[str]
    steps: list[Subfunction]
    augmentations: list[Augmentation]
    stages: _Stages
    repeats: int
    local_plugins: Sequence[str]
    sampler: Sampler | None = None

    @property
    def batch_size(self) -> int:
        return self.config.training.batch_size


def run_bench(
    config: Config,
    data: Path | str,
    *,
    plugins: PluginManager | None = None,
    cases: int = 3,
    repeats: int = 5,
    config_name: str = "config",
    local_plugins: Sequence[str] = (),
    temp_root: Path | str | None = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> BenchReport:
    """Time every stage of training and prediction on ``data`` with ``config``.

    Args:
        config: the validated config (preprocessing, patching, augmentation, model, training).
        data: the dataset folder; its first ``cases`` labelled cases are used.
        plugins: the plugin manager; a new one (installed plugins) when None.
        cases: how many labelled cases to use (a few are enough: figures are per unit).
        repeats: timings per stage (the median is reported); at least 2.
        config_name: how the report names the config (its path).
        local_plugins: ``--plugin`` modules, for the loader's worker processes.
        temp_root: where the throw-away cache is built (default: the system's temp folder);
            the user's own cache is never touched.
        log: where progress lines go.
    """
    from miscore.cache import open_cache

    if cases < 1:
        raise InputError(f"--cases: must be at least 1; got {cases}")
    if repeats < 2:
        raise InputError(f"--repeats: must be at least 2; got {repeats}")
    job = _open_job(config, data, plugins, cases, repeats, local_plugins, log)
    log(f"bench: {len(job.ids)} cases of {data}, {repeats} repeats per stage")
    _read_stages(job)
    temp = Path(tempfile.mkdtemp(prefix="miscore-bench-", dir=temp_root))
    try:
        store = open_cache(job.config, str(temp / "cache"))
        entries = _cache_build_stage(job, store)
        patch_shape, workers = _train_stages(job, store, entries)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    machine = machine_info()
    return BenchReport(
        machine=machine,
        config=config_name,
        data=str(data),
        cases=[e.id for e in entries],
        batch_size=job.batch_size,
        patch_shape=[int(n) for n in patch_shape],
        workers=workers,
        stages=job.stages.stages,
        verdict=make_verdict(job.stages.stages, workers, machine.cpus, job.batch_size),
    )


def _open_job(
    config: Config,
    data: Path | str,
    plugins: PluginManager | None,
    cases: int,
    repeats: int,
    local_plugins: Sequence[str],
    log: Callable[[str], None],
) -> _Job:
    """Plugins, defaults and components of ``config``, and the first ``cases`` labelled cases."""
    from miscore.core.config import apply_defaults, check_components
    from miscore.core.plugins import PluginManager
    from miscore.data.dataset import Dataset

    plugins = plugins or PluginManager(local_plugins=local_plugins)
    registry = plugins.registry
    config = apply_defaults(config, registry)
    components = check_components(config, registry)
    plugins.configure(config)
    dataset = Dataset.discover(data, registry, config.data.layout, config.data.io)
    ids = dataset.labelled_ids[:cases]
    if not ids:
        raise InputError(f"{data}: no labelled cases; bench needs labelled cases to train on")
    return _Job(
        config,
        plugins,
        dataset,
        list(ids),
        components["preprocessing"],
        components["augmentation"],
        _Stages(log),
        repeats,
        local_plugins,
        components.get("sampler"),
    )


def _read_stages(job: _Job) -> None:
    """``read`` and ``preprocess``: per case, in memory."""
    from miscore.data.preprocess import preprocess_case

    ids, repeats = job.ids, job.repeats
    job.dataset.load(ids[0])  # warm-up: the IO plugin's lazy imports are not a read's cost
    rounds = max(1, math.ceil(repeats / len(ids)))
    read_times: list[float] = []
    loaded: dict[str, Case] = {}
    for case_id in _cycle(ids, rounds * len(ids)):
        seconds, loaded[case_id] = _timed(functools.partial(job.dataset.load, case_id))
        read_times.append(seconds)
    job.stages.add("read", "one case read from disk by its IO plugin", "case", read_times)
    pre_times = [
        _timed(functools.partial(preprocess_case, loaded[c], job.steps, training=True))[0]
        for c in _cycle(ids, max(repeats, len(ids)))
    ]
    job.stages.add("preprocess", "the configured preprocessing of one case", "case", pre_times)


def _cache_build_stage(job: _Job, store: CaseStore) -> list[CachedCase]:
    """``cache_build``: each case read, preprocessed and written as training does it."""
    import zarr  # noqa: F401  (imported before the first build is timed)

    from miscore.cache import cache_dataset_case

    build_times = []
    entries = []
    for case_id in job.ids:
        seconds, (entry, _hit) = _timed(
            functools.partial(
                cache_dataset_case,
                store,
                job.dataset,
                case_id,
                job.steps,
                job.plugins,
                job.config,
            )
        )
        build_times.append(seconds)
        entries.append(entry)
    what = "read + preprocess + write one case into the cache"
    job.stages.add("cache_build", what, "case", build_times)
    return entries


def _train_stages(
    job: _Job, store: CaseStore, entries: list[CachedCase]
) -> tuple[tuple[int, ...], int]:
    """Reading, augmentation, batches, the loader, training steps and prediction; returns
    the loader's patch shape and workers (for the report)."""
    from miscore.cache import CacheKey, CaseCache
    from miscore.pipeline.loader import BatchMaker, PatchLoader

    config = job.config
    # Fresh handles on the entries: "cold" is their first read.
    opened = [store.get(CacheKey(e.key, e.id, {})) or e for e in entries]
    loader = PatchLoader(
        opened,
        config,
        job.augmentations,
        config.data.classes,
        cache_root=store.location if isinstance(store, CaseCache) else None,
        cache_settings=store.settings,
        local_plugins=job.local_plugins,
        sampler=job.sampler,
    )
    plan = [b for epoch in range(job.repeats) for b in loader.plan(epoch)][: job.repeats]
    plain = BatchMaker(opened, config.patching, [], config.data.classes)
    cold = [_timed(functools.partial(plain.batch, batch))[0] for batch in plan]
    warm = [_timed(functools.partial(plain.batch, batch))[0] for batch in plan]
    what = f"{job.batch_size} patches read from the cache and one-hot encoded"
    job.stages.add("cache_read_cold", what + ", first read", "batch", cold)
    job.stages.add("cache_read_warm", what + ", read again", "batch", warm)
    _augment_stage(job, loader.maker, plan)
    batch_times = [_timed(functools.partial(loader.maker.batch, batch))[0] for batch in plan]
    what = "one batch read, augmented and stacked in one process"
    job.stages.add("batch", what, "batch", batch_times)
    try:
        model = _loader_and_model_stages(job, loader, opened[0].channels)
    finally:
        loader.close()
    _predict_stage(config, model, opened[0], loader.patch_shape, job.stages, job.repeats)
    return loader.patch_shape, loader.workers


def _augment_stage(job: _Job, maker: BatchMaker, plan: Sequence[Sequence[Sample]]) -> None:
    """``augment``: the loader's own augmentation of one read sample (``BatchMaker.augment``)."""
    samples = [s for batch in plan for s in batch][: max(job.repeats, job.batch_size)]
    augment_times = []
    if job.augmentations:
        for sample in samples:
            image, label, patch_shape = maker.read_sample(sample)
            augment = functools.partial(maker.augment, sample, image, label, patch_shape)
            augment_times.append(_timed(augment)[0])
    names = ", ".join(a.name for a in job.augmentations) or "none configured"
    job.stages.add("augment", f"augmentation of one sample ({names})", "sample", augment_times)


def _loader_and_model_stages(job: _Job, loader: PatchLoader, channels: int) -> keras.Model:
    """``loader`` (the data rate, no model), ``train_step_fixed`` (the model alone, no data
    loading) and ``train_step`` (both, as ``miscore train`` runs them); returns the model."""
    # The loader as training uses it (its workers), no model: the data rate.
    workers, repeats = loader.workers, job.repeats
    iterator = loader.forever(0)
    startup, first = _timed(lambda: next(iterator))
    loader_times = [_timed(lambda: next(iterator))[0] for _ in range(repeats)]
    job.stages.add(
        "loader",
        f"one batch from the loader ({workers} worker{'s' if workers > 1 else ''}), no model",
        "batch",
        loader_times,
        {"first_batch_s": startup},
    )
    model, x, y = _build_model(job.config, job.plugins, loader.patch_shape, channels, first)
    # Two warm-up steps: graph tracing and the optimizer's variables.
    for _ in range(2):
        model.train_on_batch(x, y)
    fixed = [_timed(lambda: model.train_on_batch(x, y))[0] for _ in range(repeats)]
    what = "one training step on a fixed in-memory batch (no data loading)"
    job.stages.add("train_step_fixed", what, "step", fixed)

    def real_step() -> None:
        bx, by = next(iterator)
        model.train_on_batch(bx, by)

    real_step()
    real = [_timed(real_step)[0] for _ in range(repeats)]
    job.stages.add("train_step", "one training step fed by the loader", "step", real)
    return model


def _build_model(
    config: Config,
    plugins: PluginManager,
    patch_shape: Sequence[int],
    channels: int,
    batch: Batch,
) -> tuple[keras.Model, npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The configured architecture, compiled as training compiles it, and a fixed batch."""
    import keras

    from miscore.pipeline.training import compile_model

    keras.utils.set_random_seed(config.training.seed)
    architecture = plugins.registry.create(
        "architecture", config.model.architecture, "model.architecture"
    )
    model = architecture.build([*patch_shape, channels], config.data.classes)
    compile_model(model, config, plugins, config.data.classes)
    x, y = batch
    return model, np.ascontiguousarray(x), np.ascontiguousarray(y)


def _predict_stage(
    config: Config,
    model: keras.Model,
    entry: CachedCase,
    patch_shape: Sequence[int],
    stages: _Stages,
    repeats: int,
) -> None:
    """Sliding-window prediction of one cached (preprocessed) volume: model time and the rest."""
    from miscore.pipeline.inference import SlidingWindow, labels_from_scores

    image = np.asarray(entry.image[...], dtype=np.float32)
    patching = config.patching
    slice_axis = patching.slice_axis if patching.mode == "slice" else None
    patch = list(patch_shape)
    if slice_axis is not None:
        patch.insert(slice_axis, 1)
    if patching.mode == "full":
        patch = list(image.shape[:-1])
    model_time = [0.0]

    def predict_batch(batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = model.predict_on_batch(batch)
        if isinstance(out, (list, tuple)):
            out = out[0]
        result = np.asarray(out)
        model_time[0] += time.perf_counter() - start
        return result

    inference = config.inference
    window = SlidingWindow(
        predict_batch,
        tuple(int(n) for n in patch),
        overlap=inference.overlap,
        blend=inference.blend,
        batch_size=inference.batch_size,
        slice_axis=slice_axis,
    )
    labels_from_scores(window(image[tuple(slice(0, n) for n in patch)]))  # warm-up
    totals, models = [], []
    count = max(2, min(repeats, 3))
    for _ in range(count):
        model_time[0] = 0.0
        seconds, _ = _timed(lambda: labels_from_scores(window(image), inference.threshold))
        totals.append(seconds)
        models.append(model_time[0])
    overheads = [t - m for t, m in zip(totals, models, strict=True)]
    stages.add(
        "predict",
        f"sliding-window prediction of one {'x'.join(map(str, image.shape[:-1]))} volume "
        f"({len(window.windows(image.shape[:-1]))} windows)",
        "volume",
        totals,
        {
            "model_s": float(np.median(models)),
            "overhead_s": float(np.median(overheads)),
            "windows": float(len(window.windows(image.shape[:-1]))),
        },
    )


def make_verdict(
    stages: Sequence[StageTiming],
    workers: int,
    cpus: int,
    batch_size: int,
) -> Verdict:
    """Compare the loader's time per batch with the fixed-batch step: what bounds training."""
    by_name = {s.name: s for s in stages}
    data = by_name["loader"].median_s
    model = by_name["train_step_fixed"].median_s
    real = by_name["train_step"].median_s
    real_over = real / model if model > 0 else float("inf")
    if data > model:
        factor = data / max(model, 1e-9)
        if workers < cpus:
            advice = f"raise training.workers (now {workers}, {cpus} CPUs)"
        else:
            slowest = max(
                ("augment", "cache_read_warm"),
                key=lambda n: by_name[n].median_s * (batch_size if n == "augment" else 1),
            )
            advice = (
                "every CPU already loads data: lighten the augmentation"
                if slowest == "augment"
                else "every CPU already loads data: a faster cache (cache.compression lz4, "
                "cache.float16) or a smaller patch"
            )
        message = (
            f"data loading: {format_seconds(data)}/batch vs {format_seconds(model)}/step for "
            f"the model: training is data-bound by {factor:.1f}x; {advice}"
        )
        bound: Literal["data", "model"] = "data"
    else:
        factor = model / max(data, 1e-9)
        message = (
            f"model: {format_seconds(model)}/step vs {format_seconds(data)}/batch for data "
            f"loading: training is model-bound by {factor:.1f}x; the loader keeps up (a "
            "faster device, training.mixed_precision or a smaller network is what helps)"
        )
        bound = "model"
    message += (
        f". The real step ({format_seconds(real)}) is {real_over:.2f}x the fixed-batch limit."
    )
    return Verdict(
        bound=bound,
        data_s_per_batch=data,
        model_s_per_step=model,
        factor=round(factor, 3),
        real_s_per_step=real,
        real_over_limit=round(real_over, 3),
        message=message,
    )
