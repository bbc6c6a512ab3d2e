"""The training loader: patches sampled from cached cases, augmented, batched, prefetched.

Every epoch's plan (which case, which window, which augmentation seed, in which order) is drawn
in the main process from ``(seed, epoch)`` alone; workers only read and augment. So the same
seed gives the same batches whatever the number of workers, and a resumed run sees the batches
the uninterrupted run would have seen.

Workers: ``workers == 1`` assembles batches in one background thread (overlapping the model's
step); ``workers > 1`` uses that many processes (``spawn``), each opening the zarr cache itself
and reading only the chunks its windows touch. ``scipy.ndimage`` holds the GIL, so threads
would not scale (see DESIGN.md). On-the-fly mode (no disk cache) always uses the thread.

Multi-worker training (``shard``): every worker draws the same plan and keeps its own
contiguous share of each global batch of ``training.batch_size``, so within an epoch no sample
is drawn by two workers and the union of the workers' batches of a step is the batch one
process would have made.

A worker process gets the augmentation objects the loader was given as recipes (class by
module and name, params), not by looking the config up in a plugin manager of its own: so a
``--plugin FILE`` augmentation, or one of a plugin registered from Python, reaches it. An
object that cannot be recreated there (a class made at run time, as for one given to
``Pipeline(...)``) is refused when the loader is made, with the reason. A worker that fails to
start, or dies, is reported with its reason as a ``PipelineError``, not ``BrokenProcessPool``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import multiprocessing
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from miscore.cache.chunkread import window_reader
from miscore.core.components import Augmentation, Sampler
from miscore.core.config import Config, PatchingConfig
from miscore.core.errors import CacheError, ConfigError, InputError, PipelineError, PluginError
from miscore.data.preprocess import one_hot
from miscore.pipeline.augmenting import augment_sample
from miscore.pipeline.patching import (
    SAMPLED_MODES,
    PatchSampler,
    Window,
    create_sampler,
    extract_patch,
)

if TYPE_CHECKING:
    from miscore.core.plugins import PluginManager

#: Extra context read around a patch when spatial augmentations run, as a share of the patch
#: per side, so that a rotated or scaled patch is cut from data instead of padding.
AUGMENT_MARGIN = 0.25


@dataclass(frozen=True)
class Sample:
    """One training sample of the plan: a case, a window and an augmentation seed."""

    case: int
    window: tuple[tuple[int, int], ...]
    seed: tuple[int, ...]


Batch = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


def _as_window(bounds: tuple[tuple[int, int], ...]) -> Window:
    return tuple(slice(a, b) for a, b in bounds)


def _bounds(window: Window) -> tuple[tuple[int, int], ...]:
    return tuple((int(s.start), int(s.stop)) for s in window)


class BatchMaker:
    """Reads windows from cached cases and turns them into ``(x, y)`` batches."""

    def __init__(
        self,
        cases: Sequence[Any],
        patching: PatchingConfig,
        augmentations: Sequence[Augmentation],
        n_classes: int,
    ) -> None:
        self.cases = list(cases)
        self.patching = patching
        self.augmentations = list(augmentations)
        self.n_classes = n_classes
        # Local cache arrays are read by decoding their chunk files directly (chunkread.py).
        self.images = [window_reader(c.image) for c in self.cases]
        self.labels = [window_reader(c.label) for c in self.cases]
        self.spatial_augment = any(
            type(a).spatial_transform is not Augmentation.spatial_transform
            for a in self.augmentations
        )

    def _augmented(self, sample: Sample) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """One sample's window read and augmented: ``(image, integer label)``."""
        return self.augment(sample, *self.read_sample(sample))

    def read_sample(
        self, sample: Sample
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any], tuple[int, ...]]:
        """One sample's window read, with a margin around it when spatial augmentations run:
        ``(image, integer label, patch shape)``, without the slice axis in slice mode."""
        window = _as_window(sample.window)
        patch_shape = tuple(s.stop - s.start for s in window)
        region = window
        if self.spatial_augment and self.augmentations:
            region = tuple(
                slice(s.start - m, s.stop + m)
                for s, m in zip(window, self._margins(patch_shape), strict=True)
            )
        image = extract_patch(self.images[sample.case], region, 0.0)
        label = extract_patch(self.labels[sample.case], region, 0)
        if self.patching.mode == "slice":
            axis = self.patching.slice_axis
            image, label = np.squeeze(image, axis), np.squeeze(label, axis)
            patch_shape = tuple(n for i, n in enumerate(patch_shape) if i != axis)
        return image, label, patch_shape

    def augment(
        self,
        sample: Sample,
        image: npt.NDArray[Any],
        label: npt.NDArray[Any],
        patch_shape: tuple[int, ...],
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """The configured augmentations on a sample ``read_sample`` gave, seeded by the
        sample: ``(image, integer label)`` of ``patch_shape`` (what ``miscore bench`` times)."""
        if not self.augmentations:
            return image, label
        rng = np.random.default_rng(sample.seed)
        augmented, augmented_label = augment_sample(
            self.augmentations, image, label, rng, out_shape=patch_shape
        )
        assert augmented_label is not None  # a label in, a label out
        return augmented, augmented_label

    def _margins(self, patch_shape: tuple[int, ...]) -> tuple[int, ...]:
        axis = self.patching.slice_axis if self.patching.mode == "slice" else -1
        return tuple(
            0 if i == axis else math.ceil(n * AUGMENT_MARGIN) for i, n in enumerate(patch_shape)
        )

    def batch(self, samples: Sequence[Sample]) -> Batch:
        """The samples stacked: each is written straight into its slot of the batch arrays."""
        x: npt.NDArray[np.float32] | None = None
        y: npt.NDArray[np.float32] | None = None
        for i, sample in enumerate(samples):
            image, label = self._augmented(sample)
            if x is None or y is None:
                x = np.empty((len(samples), *image.shape), dtype=np.float32)
                y = np.empty((len(samples), *label.shape[:-1], self.n_classes), np.float32)
            if image.shape != x.shape[1:]:
                raise InputError(
                    f"samples of one batch differ in shape: {x.shape[1:]} and {image.shape}"
                )
            x[i] = image
            one_hot(label, self.n_classes, out=y[i])
        if x is None or y is None:
            raise InputError("a batch needs at least one sample")
        return x, y


# --- process workers ----------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentRecipe:
    """How a worker process recreates a component: its class, found by module and qualified
    name, called with its params (plain data). ``file``: the module's source, for a module
    that another process cannot import by name (a ``--plugin FILE`` module)."""

    module: str
    qualname: str
    params: dict[str, Any]
    file: str | None = None

    def create(self) -> Any:
        """The component, made in this process (its module imported or loaded first)."""
        module = sys.modules.get(self.module)
        if module is None:
            try:
                module = self._import()
            except Exception as exc:
                where = f"{self.module} ({self.file})" if self.file else self.module
                raise PluginError(f"importing {where}: {type(exc).__name__}: {exc}") from exc
        found: Any = module
        for part in self.qualname.split("."):
            found = getattr(found, part)
        return found(self.params)

    def _import(self) -> ModuleType:
        if self.file is None:
            return importlib.import_module(self.module)
        spec = importlib.util.spec_from_file_location(self.module, self.file)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python source file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[self.module] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[self.module]
            raise
        return module


def _importable(top_level: str) -> bool:
    """Whether a fresh process (same ``sys.path``) imports module ``top_level`` by name: the
    import system's finders are asked, not ``sys.modules``."""
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is not None and find(top_level, None) is not None:
            return True
    return False


def _class_problem(cls: type) -> str | None:
    """Why a worker process cannot find ``cls`` by its module and name, or None."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    if "<locals>" in cls.__qualname__:
        return f"its class {where} is defined inside a function"
    module = sys.modules.get(cls.__module__)
    found: Any = module
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    if found is not cls:
        return (
            f"its class {cls.__qualname__} is made at run time (there is no {where}), as "
            "for a component object given to Pipeline(...)"
        )
    if cls.__module__ == "__main__":
        if not isinstance(getattr(module, "__file__", None), str):
            return "its class is defined in an interactive session (__main__ has no file)"
        return None  # a spawned worker runs the main script's file again (as __mp_main__)
    if _importable(cls.__module__.split(".")[0]):
        return None
    if "." in cls.__module__ or not isinstance(getattr(module, "__file__", None), str):
        return f"its module {cls.__module__} cannot be imported by another process"
    return None  # a module made from a file (--plugin FILE): the worker loads the file


def component_recipe(component: Augmentation) -> ComponentRecipe:
    """How a loader worker process recreates ``component``.

    Raises ``ConfigError`` (naming the component and the way out: ``training.workers: 1`` or
    a plugin) when it cannot: its class is not importable there (made at run time, defined in
    a function or an interactive session), or it holds state its params do not recreate.
    """
    cls = type(component)
    problem = _class_problem(cls)
    params: dict[str, Any] = {}
    if problem is None:
        try:
            params = component.params.model_dump(mode="json")
            clone = cls(params)
        except Exception as exc:
            problem = f"recreating it from its params failed ({type(exc).__name__}: {exc})"
        else:
            extra = sorted(set(vars(component)) - set(vars(clone)))
            if extra:
                problem = f"it holds attributes its params do not recreate ({', '.join(extra)})"
    if problem is not None:
        raise ConfigError(
            f"training.workers: augmentation {component.name!r} ({cls.__name__} object) cannot "
            f"be sent to a loader worker process: {problem}; set training.workers: 1 (batches "
            "made by a thread of this process), or register its class through a plugin (an "
            "entry point, or --plugin FILE / MISCORE_PLUGINS) and name it in the config"
        )
    module = sys.modules[cls.__module__]
    file = None
    if cls.__module__ != "__main__" and not _importable(cls.__module__.split(".")[0]):
        file = str(Path(module.__file__ or "").resolve())
    return ComponentRecipe(cls.__module__, cls.__qualname__, params, file)


@dataclass(frozen=True)
class WorkerSetup:
    """What a loader worker process starts from (plain data, sent once per process)."""

    cache_root: str
    cache_settings: Any
    entries: tuple[tuple[str, str], ...]  # (cache key digest, case id)
    patching: dict[str, Any]
    augmentations: tuple[ComponentRecipe, ...]
    n_classes: int

    def batch_maker(self) -> BatchMaker:
        """Open the cache entries and recreate the augmentations (in the worker)."""
        from miscore.cache import CacheKey, CaseCache

        cache = CaseCache(self.cache_root, self.cache_settings)
        cases = []
        for digest, case_id in self.entries:
            found = cache.get(CacheKey(digest, case_id, {}))
            if found is None:
                raise CacheError(
                    f"cache entry of case {case_id} ({cache.entry_path(digest)}): "
                    "it was removed while this run read it; run again to rebuild it"
                )
            cases.append(found)
        augmentations = [recipe.create() for recipe in self.augmentations]
        patching = PatchingConfig.model_validate(self.patching)
        return BatchMaker(cases, patching, augmentations, self.n_classes)


_WORKER: BatchMaker | None = None
#: why this worker process could not start: raised by every batch asked of it
_START_FAILURE: str | None = None


def _init_worker(setup: WorkerSetup) -> None:
    """Start a worker process. A failure is kept and raised, as a ``PipelineError`` naming
    this worker, by the batches asked of it: an initializer that raises would break the
    whole pool with ``BrokenProcessPool`` and no reason."""
    global _WORKER, _START_FAILURE
    try:
        _WORKER = setup.batch_maker()
    except Exception as exc:
        process = multiprocessing.current_process()
        reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        _START_FAILURE = (
            f"loader worker {process.name} (pid {process.pid}) failed to start: "
            f"{type(exc).__name__}: {reason} (training.workers: 1 makes the batches in "
            "this process)"
        )


def _worker_batch(samples: list[Sample]) -> Batch:
    if _WORKER is None:
        raise PipelineError(_START_FAILURE or "loader worker not started")
    return _WORKER.batch(samples)


# --- the loader ---------------------------------------------------------------------------


class PatchLoader:
    """Training batches for Keras ``fit``: ``forever(start_epoch)`` yields ``(x, y)``.

    Args:
        cases: cached cases (``miscore.cache.CachedCase``) with labels.
        config: patching, training (batch size, seed, steps, workers) and augmentation.
        augmentations: the created augmentation components (config order).
        n_classes: for one-hot targets.
        cache_root, cache_settings: where process workers open the cache; None (on-the-fly
            mode) keeps everything in this process.
        local_plugins: ``--plugin`` modules for finding the sampler when neither ``sampler``
            nor ``plugins`` is given (workers recreate ``augmentations`` without them).
        prefetch: batches prepared ahead.
        sampler: the ``Sampler`` choosing ``random``/``slice`` windows; None: the one
            ``patching.sampler`` names (or the plugins' default), from ``plugins``. Windows
            are planned here, never in the workers.
        plugins: the session's plugin manager, where a missing ``sampler`` comes from; None:
            the installed plugins and ``local_plugins``.

    Raises ``ConfigError`` when process workers are used (``training.workers > 1`` with a
    cache on disk) and an augmentation cannot be recreated in them (``component_recipe``).
    """

    def __init__(
        self,
        cases: Sequence[Any],
        config: Config,
        augmentations: Sequence[Augmentation],
        n_classes: int,
        *,
        cache_root: str | None = None,
        cache_settings: Any = None,
        local_plugins: Sequence[str] = (),
        prefetch: int = 2,
        sampler: Sampler | None = None,
        plugins: PluginManager | None = None,
    ) -> None:
        if not cases:
            raise InputError("no cases to train on")
        self.cases = list(cases)
        self.config = config
        self.batch_size = config.training.batch_size
        self.seed = config.training.seed
        self.maker = BatchMaker(self.cases, config.patching, augmentations, n_classes)
        if sampler is None and config.patching.mode in SAMPLED_MODES:
            if plugins is None:
                from miscore.core.plugins import PluginManager

                plugins = PluginManager(local_plugins=local_plugins)
            sampler = create_sampler(config.patching, plugins.registry)
        self.sampler = PatchSampler(config.patching, sampler)
        self.prefetch = max(1, prefetch)
        self.workers = config.training.workers if cache_root is not None else 1
        self._executor: Executor | None = None
        self._setup: WorkerSetup | None = None
        if self.workers > 1 and cache_root is not None:
            self._setup = WorkerSetup(
                cache_root,
                cache_settings,
                tuple((c.key, c.id) for c in self.cases),
                config.patching.model_dump(mode="json"),
                tuple(component_recipe(a) for a in augmentations),
                n_classes,
            )
        #: ``(index, count)``: this worker's share of every global batch (``shard``)
        self.shard_of = (0, 1)
        self._check_shapes()
        planned = sum(len(e) for e in self._epoch_samples(0))
        self.steps_per_epoch = config.training.steps_per_epoch or max(
            1, math.ceil(planned / self.batch_size)
        )

    def _check_shapes(self) -> None:
        patching = self.config.patching
        if patching.mode == "slice" and patching.patch_shape is None:
            axis = patching.slice_axis
            planes = {
                tuple(n for i, n in enumerate(c.spatial_shape) if i != axis) for c in self.cases
            }
            if len(planes) > 1:
                raise InputError(
                    f"patching.mode 'slice' without patch_shape needs one slice size; the "
                    f"cases have {sorted(planes)}: set patching.patch_shape (in-plane) or add "
                    "a resize/pad preprocessing step"
                )
        if patching.mode != "full" or self.batch_size == 1:
            return
        shapes = {c.spatial_shape for c in self.cases}
        if len(shapes) > 1:
            raise InputError(
                "patching.mode 'full' with cases of different shapes needs "
                "training.batch_size 1, or a resize/pad preprocessing step"
            )

    @property
    def patch_shape(self) -> tuple[int, ...]:
        """The model's spatial input shape (2D in slice mode)."""
        shape = self.sampler.patch_shape(self.cases[0].spatial_shape)
        if self.config.patching.mode == "slice":
            axis = self.config.patching.slice_axis
            shape = tuple(n for i, n in enumerate(shape) if i != axis)
        return shape

    def _epoch_samples(self, epoch: int) -> list[list[Sample]]:
        """Per case, this epoch's samples (windows and augmentation seeds)."""
        out = []
        for index, case in enumerate(self.cases):
            rng = np.random.default_rng([self.seed, epoch, index])
            windows = self.sampler.training_windows(
                case.spatial_shape, rng, label=case.label, locations=case.foreground or None
            )
            out.append(
                [
                    Sample(index, _bounds(w), (self.seed, epoch, index, k))
                    for k, w in enumerate(windows)
                ]
            )
        return out

    def plan(self, epoch: int) -> list[list[Sample]]:
        """The batches of ``epoch``: ``steps_per_epoch`` lists of ``batch_size`` samples."""
        needed = self.steps_per_epoch * self.batch_size
        samples: list[Sample] = []
        round_ = 0
        while len(samples) < needed:
            # round > 0 only when steps_per_epoch asks for more than one pass
            sub = epoch * 1_000_003 + round_ if round_ else epoch
            drawn = [s for per_case in self._epoch_samples(sub) for s in per_case]
            if not drawn:
                raise InputError("no training patches: every case was skipped (only background?)")
            order = np.random.default_rng([self.seed, sub, 7]).permutation(len(drawn))
            samples += [drawn[i] for i in order]
            round_ += 1
        samples = samples[:needed]
        return [samples[i : i + self.batch_size] for i in range(0, needed, self.batch_size)]

    def shard(self, index: int, count: int) -> None:
        """Make only worker ``index`` of ``count``'s share of each global batch: the samples
        ``[index * k, (index + 1) * k)`` of every batch of ``plan``, ``k = batch_size / count``.

        Raises ``ConfigError`` when ``training.batch_size`` is not divisible by ``count``."""
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"no worker {index} of {count}")
        if self.batch_size % count:
            raise ConfigError(
                f"training.batch_size {self.batch_size} is the global batch and must be "
                f"divisible by the {count} workers; use a multiple of {count}"
            )
        self.shard_of = (index, count)

    def worker_plan(self, epoch: int) -> list[list[Sample]]:
        """This worker's share of each batch of ``plan(epoch)`` (all of it unless sharded)."""
        index, count = self.shard_of
        share = self.batch_size // count
        return [batch[index * share : (index + 1) * share] for batch in self.plan(epoch)]

    def _pool(self) -> Executor:
        if self._executor is None:
            if self._setup is not None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                    initargs=(self._setup,),
                )
            else:
                self._executor = ThreadPoolExecutor(max_workers=1)
        return self._executor

    def epoch_batches(self, epoch: int) -> Iterator[Batch]:
        """This worker's batches of one epoch, in order, prepared ``prefetch`` ahead."""
        plan = self.worker_plan(epoch)
        pool = self._pool()
        work: Any = _worker_batch if isinstance(pool, ProcessPoolExecutor) else self.maker.batch
        ahead = self.prefetch * max(1, self.workers)
        pending: deque[Future[Batch]] = deque()
        for batch in plan:
            pending.append(pool.submit(work, batch))
            if len(pending) >= ahead:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())

    def forever(self, start_epoch: int = 0) -> Iterator[Batch]:
        """Epoch after epoch from ``start_epoch``: what Keras ``fit`` consumes."""
        epoch = start_epoch
        while True:
            yield from self.epoch_batches(epoch)
            epoch += 1

    def validation(
        self, cases: Sequence[Any], per_case: int = 2, limit: int | None = None
    ) -> Batch | None:
        """Fixed validation patches (no augmentation), the same every epoch.

        ``limit`` keeps at most that many, spread evenly over the cases' samples."""
        if not cases:
            return None
        maker = BatchMaker(list(cases), self.config.patching, [], self.maker.n_classes)
        samples = []
        for index, case in enumerate(maker.cases):
            rng = np.random.default_rng([self.seed, 2**31 - 1, index])
            windows = self.sampler.training_windows(
                case.spatial_shape, rng, label=case.label, locations=case.foreground or None
            )
            samples += [Sample(index, _bounds(w), (0,)) for w in windows[:per_case]]
        if not samples:
            return None
        if limit is not None and len(samples) > limit:
            keep = np.linspace(0, len(samples) - 1, limit).round().astype(int)
            samples = [samples[i] for i in keep]
        sizes = {tuple(b - a for a, b in s.window) for s in samples}
        if len(sizes) > 1:
            raise InputError(
                "validation patches of different shapes (patching.mode 'full' with cases of "
                "different shapes): validate with patching.mode 'random', or add a resize/pad "
                "preprocessing step"
            )
        return maker.batch(samples)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _result(future: Future[Batch]) -> Batch:
    """A batch; a worker process that died (killed, out of memory, a crash in native code)
    is reported as such instead of ``BrokenProcessPool``."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise PipelineError(
            "a loader worker process ended abruptly (killed, out of memory, or crashed in "
            "native code); set training.workers: 1 to make the batches in this process, or "
            "fewer workers to use less memory"
        ) from None
