"""``miscore plan --budget 20m``: plan for THIS machine and a wall-clock time.

The fingerprint plan (``planning.plan_config``) says what nnU-Net would train given the memory;
on a laptop CPU its 1000 x 250 steps take weeks. With a budget, the planner measures instead of
guessing:

1. the training cases are preprocessed into the cache (``miscore train`` then finds them there);
2. candidate networks (width, patch) are built and trained for a few real steps, fed by the real
   loader with the planned augmentation, on the devices training will use (``model.fit``, as
   ``miscore train`` runs it), largest first;
3. the first candidate whose measured step time affords at least ``min_steps(budget)`` steps is
   taken (the patch's context first, then width: a larger patch sees more anatomy, and the
   accuracy benchmark showed short runs gain more from context than from width);
4. epochs and steps per epoch are solved so that start-up, steps and per-epoch costs (the
   inference-mode check, checkpoints, curves), each measured, add up to the budget.

Every planned value's reason quotes what was measured.
"""

from __future__ import annotations

import gc
import math
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from miscore.core.config import Config, parse_config
from miscore.core.errors import InputError
from miscore.tools.planning import Plan

if TYPE_CHECKING:
    from miscore.core.components import Sampler

__all__ = ["Candidate", "Measured", "min_steps", "parse_budget", "plan_for_budget"]

#: fewest steps a budget should afford: two per second of budget, between these bounds
STEPS_PER_SECOND = 2.0
MIN_STEPS_FLOOR = 1000
MIN_STEPS_CAP = 5000
#: epochs of a budgeted run: at least this many (curves, checkpoints), steps per epoch at most
MIN_EPOCHS = 10
MAX_STEPS_PER_EPOCH = 250
#: seconds of steady steps timed per candidate (at least 3 steps)
TIMED_SECONDS = 6.0
#: candidate patch scales (of the planned patch, per axis) and widths, in order of preference
SCALES = (1.0, 0.75, 0.5, 0.375, 0.25)
WIDTHS = (32, 16, 8)


def parse_budget(text: str) -> float:
    """Seconds of ``20m``, ``300s``, ``1.5h`` (a unit is required)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh])\s*", text.lower())
    if match is None or float(match.group(1)) <= 0:
        raise InputError(f"--budget: {text!r} is not a time; give it with a unit: 20m, 300s, 1.5h")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def min_steps(budget_s: float) -> int:
    """The fewest training steps worth a budget: two per second, 1000 to 5000."""
    return int(min(MIN_STEPS_CAP, max(MIN_STEPS_FLOOR, STEPS_PER_SECOND * budget_s)))


@dataclass(frozen=True)
class Candidate:
    """A network to time: width, patch (spatial), depth, batch."""

    filters: int
    patch: tuple[int, ...]
    depth: int
    batch: int

    @property
    def cost(self) -> float:
        """Relative time of one step: ``(voxels x batch) ** 0.75 x width ** 1.7``, as measured
        on 2 CPU cores (8x the voxels: 4.3x the time; 8 -> 32 filters: 10x)."""
        return float((math.prod(self.patch) * self.batch) ** 0.75 * self.filters**1.7)

    def describe(self) -> str:
        return f"{self.filters} filters, patch {'x'.join(map(str, self.patch))}, batch {self.batch}"


@dataclass
class Measured:
    """A candidate's measured costs, in seconds."""

    candidate: Candidate
    step: float
    first: float  # build, compile and the first traced steps


def candidates(config: Config) -> list[Candidate]:
    """The candidates in order of preference: larger patch first, then wider."""
    from miscore.tools.planning import depth_for

    planned = list(config.patching.patch_shape or [])
    batch = min(config.training.batch_size, 2 if len(planned) == 3 else 12)
    out: list[Candidate] = []
    seen: set[tuple[int, ...]] = set()
    for scale in SCALES:
        scaled = [max(8, math.floor(n * scale)) for n in planned]
        depth = depth_for(scaled)
        k = 2**depth
        patch = tuple(max(2 * k, n // k * k) for n in scaled)
        if patch not in seen:
            seen.add(patch)
            out += [Candidate(f, patch, depth, batch) for f in WIDTHS]
    return out


def _with(config: Config, candidate: Candidate) -> Config:
    """The config training ``candidate`` (in slice mode the patch is the in-plane one)."""
    data = config.model_dump(mode="json")
    data["patching"]["patch_shape"] = list(candidate.patch)
    data["model"]["architecture"].update(filters=candidate.filters, depth=candidate.depth)
    data["training"]["batch_size"] = candidate.batch
    return parse_config(data, "budget candidate")


class Timer:
    """Builds and times candidates on the cached training cases."""

    def __init__(
        self,
        config: Config,
        plugins: Any,
        cases: Sequence[Any],
        cache_root: str | None,
        cache_settings: Any,
        log: Callable[[str], None],
    ) -> None:
        self.config = config
        self.plugins = plugins
        self.cases = list(cases)
        self.cache_root = cache_root
        self.cache_settings = cache_settings
        self.log = log

    def _sampler(self, config: Config) -> Sampler | None:
        """The sampler from this session's plugins (the loader would load them again)."""
        from miscore.pipeline.patching import SAMPLED_MODES, create_sampler

        if config.patching.mode not in SAMPLED_MODES:
            return None
        return create_sampler(config.patching, self.plugins.registry)

    def measure(self, candidate: Candidate) -> Measured:
        """Train ``candidate`` for a few steps with the real loader and ``fit``."""
        import keras

        from miscore.pipeline.loader import PatchLoader
        from miscore.pipeline.training import compile_model, per_head

        config = _with(self.config, candidate)
        registry = self.plugins.registry
        augmentations = [registry.create("augmentation", a) for a in config.augmentation]
        loader = PatchLoader(
            self.cases,
            config,
            augmentations,
            config.data.classes,
            cache_root=self.cache_root,
            cache_settings=self.cache_settings,
            sampler=self._sampler(config),
        )
        started = time.perf_counter()
        try:
            architecture = registry.create("architecture", config.model.architecture_entry)
            channels = self.cases[0].channels
            model = architecture.build([*loader.patch_shape, channels], config.data.classes)
            compile_model(model, config, self.plugins, config.data.classes, 10_000)
            batches = per_head(loader.forever(), len(model.outputs))
            model.fit(batches, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
            first = time.perf_counter() - started
            steps = 4
            while True:
                clock = _step_clock()
                model.fit(
                    batches,
                    steps_per_epoch=steps,
                    epochs=1,
                    verbose=0,
                    shuffle=False,
                    callbacks=[clock],
                )
                # between the first and the last step's end: no per-fit set-up in the figure
                seconds = clock.ends[-1] - clock.ends[0]
                per_step = seconds / (len(clock.ends) - 1)
                if seconds >= TIMED_SECONDS / 2 or steps >= 60:
                    break
                steps = min(60, max(steps + 2, math.ceil(TIMED_SECONDS / per_step) + 1))
        finally:
            loader.close()
            keras.backend.clear_session()
            gc.collect()
        return Measured(candidate, per_step, first)

    def epoch_overhead(self, candidate: Candidate) -> float:
        """Seconds each epoch adds besides its steps: the inference-mode check (both modes),
        saving the best model and the last checkpoint, history and curves."""
        import keras

        from miscore.pipeline.loader import PatchLoader
        from miscore.pipeline.modeldir import save_keras_model
        from miscore.pipeline.training import compile_model, mode_check, plot_curves, write_history

        config = _with(self.config, candidate)
        loader = PatchLoader(
            self.cases, config, [], config.data.classes, sampler=self._sampler(config)
        )
        registry = self.plugins.registry
        architecture = registry.create("architecture", config.model.architecture_entry)
        model = architecture.build(
            [*loader.patch_shape, self.cases[0].channels], config.data.classes
        )
        compile_model(model, config, self.plugins, config.data.classes, 10_000)
        check = mode_check(config, loader, None)
        history = [{"epoch": float(e), "loss": 1.0 / e, "dice_inference": 0.5} for e in (1, 2)]
        try:
            with tempfile.TemporaryDirectory() as folder:
                if check is not None:
                    check(model)  # traced once, as the first epoch does
                started = time.perf_counter()
                if check is not None:
                    check(model)
                save_keras_model(model, Path(folder) / "a.keras")
                save_keras_model(model, Path(folder) / "b.keras")
                write_history(Path(folder) / "history.tsv", history)
                plot_curves(Path(folder) / "curves.png", history)
                return time.perf_counter() - started
        finally:
            loader.close()
            del model
            keras.backend.clear_session()
            gc.collect()


def _step_clock() -> Any:
    """A Keras callback that records when each training step ends."""
    import keras

    class StepClock(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.ends: list[float] = []

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.ends.append(time.perf_counter())

    return StepClock()


def start_up_seconds() -> float:
    """What ``miscore train`` spends before its first step on importing TensorFlow and Keras:
    timed in a fresh interpreter, as the command starts."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import tensorflow, keras, miscore.pipeline.training"],
        capture_output=True,
        check=False,
        timeout=600,
    )
    return time.perf_counter() - started


def choose(
    timer: Timer, options: Sequence[Candidate], available: float, wanted_steps: int
) -> tuple[Measured, list[Measured]]:
    """The first candidate (in preference order) affording ``wanted_steps`` in ``available``
    seconds; the fastest measured one when none does. The cheapest is timed first; candidates
    predicted (from the nearest measured one, by relative cost) to be over twice too slow are
    skipped untimed."""
    measured: list[Measured] = []
    cheapest = min(options, key=lambda c: c.cost)
    measured.append(timer.measure(cheapest))  # the yardstick: predicts the others' times
    timer.log(f"budget: {cheapest.describe()}: {measured[0].step:.3f} s per step")
    for candidate in options:
        if measured:
            near = min(measured, key=lambda m: abs(math.log(m.candidate.cost / candidate.cost)))
            predicted = near.step * candidate.cost / near.candidate.cost
            if predicted * wanted_steps > 2 * available:
                continue
        result = next((m for m in measured if m.candidate == candidate), None)
        if result is None:
            result = timer.measure(candidate)
            measured.append(result)
            timer.log(f"budget: {candidate.describe()}: {result.step:.3f} s per step")
        if result.step * wanted_steps <= available:
            return result, measured
    return min(measured, key=lambda m: m.step), measured


def schedule(available: float, step: float, overhead: float) -> tuple[int, int]:
    """``(epochs, steps_per_epoch)`` filling ``available`` seconds: at least ``MIN_EPOCHS``
    epochs, at most ``MAX_STEPS_PER_EPOCH`` steps each."""
    epochs = MIN_EPOCHS
    while True:
        steps = max(1, int((available - epochs * overhead) / step))
        per_epoch = max(1, steps // epochs)
        if per_epoch <= MAX_STEPS_PER_EPOCH:
            return epochs, per_epoch
        epochs = math.ceil(steps / MAX_STEPS_PER_EPOCH)


def plan_for_budget(
    plan: Plan,
    dataset: Any,
    plugins: Any,
    budget_s: float,
    *,
    cache: str | None = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> Plan:
    """Re-plan ``plan`` so that ``miscore train`` of it takes ``budget_s`` seconds here.

    Args:
        plan: the fingerprint plan (full accuracy on the memory target).
        dataset: the training dataset (``miscore.data.dataset.Dataset``).
        plugins: the plugin manager.
        budget_s: the wall-clock budget of ``miscore train``, in seconds.
        cache: the cache location training will use (``--cache``).
    """
    from miscore.cache import CaseCache, open_cache
    from miscore.core.config import apply_defaults, check_components
    from miscore.pipeline.training import prepare_cases

    config = plan.config
    config = apply_defaults(config, plugins.registry)
    components = check_components(config, plugins.registry)
    ids = dataset.labelled_ids
    if not ids:
        raise InputError(f"{dataset.root}: no labelled cases: nothing to plan a training for")
    store = open_cache(config, cache)
    cases = prepare_cases(config, plugins, dataset, ids, store, components["preprocessing"], log)
    started = time.perf_counter()
    prepare_cases(config, plugins, dataset, ids, store, components["preprocessing"], lambda _: None)
    lookups = time.perf_counter() - started
    start_up = start_up_seconds() + lookups
    timer = Timer(
        config,
        plugins,
        cases,
        store.location if isinstance(store, CaseCache) else None,
        store.settings,
        log,
    )
    wanted = min_steps(budget_s)
    rough = budget_s - start_up - 2 * MIN_EPOCHS  # before the first-step and epoch costs
    best, measured = choose(timer, candidates(config), rough, wanted)
    overhead = timer.epoch_overhead(best.candidate)
    available = budget_s - start_up - best.first
    if available <= best.step * MIN_EPOCHS + overhead * MIN_EPOCHS:
        raise InputError(
            f"--budget {budget_s:g} s: start-up ({start_up + best.first:.0f} s) and "
            f"{MIN_EPOCHS} epochs of the smallest network ({best.step:.2f} s per step, "
            f"{overhead:.1f} s per epoch) do not fit; give a larger budget"
        )
    epochs, per_epoch = schedule(available, best.step, overhead)
    return _budget_plan(plan, best, measured, budget_s, start_up, overhead, epochs, per_epoch,
                        wanted)  # fmt: skip


def _budget_plan(
    plan: Plan,
    best: Measured,
    measured: Sequence[Measured],
    budget_s: float,
    start_up: float,
    overhead: float,
    epochs: int,
    per_epoch: int,
    wanted: int,
) -> Plan:
    """The plan with the chosen candidate and schedule, each value with what was measured."""
    config = _with(plan.config, best.candidate)
    config.training.epochs = epochs
    config.training.steps_per_epoch = per_epoch
    device = _device()
    steps = epochs * per_epoch
    reasons = dict(plan.reasons)
    timed = "; ".join(f"{m.candidate.describe()}: {m.step:.3f} s" for m in measured)
    fits = best.step * wanted <= budget_s
    reasons["model.architecture"] = (
        f"{best.candidate.filters} filters, depth {best.candidate.depth}: the largest "
        f"candidate that affords >= {wanted} steps in the budget on {device} "
        f"(measured per step: {timed})"
        + ("" if fits else "; none did: the fastest")
        + "; instance norm and leaky ReLU as nnU-Net"
    )
    reasons["patching.patch_shape"] = (
        f"the largest patch whose network fits the budget (planned for the memory: "
        f"{'x'.join(map(str, plan.config.patching.patch_shape or []))})"
    )
    reasons["training.batch_size"] = "nnU-Net's batch of 2 (a budget buys steps, not samples)"
    reasons["training.epochs"] = (
        f"--budget {budget_s / 60:.3g} min on {device}: start-up {start_up + best.first:.0f} s "
        f"(imports, cache lookups, build and tracing), then {steps} steps of "
        f"{best.step:.3f} s and {overhead:.1f} s per epoch (inference-mode check, checkpoints)"
    )
    reasons["training.steps_per_epoch"] = (
        f"{steps} steps in {epochs} epochs (at least {MIN_EPOCHS} epochs, at most "
        f"{MAX_STEPS_PER_EPOCH} steps each)"
    )
    header = plan.header + (
        f"\nPlanned for a budget of {budget_s / 60:.3g} min of `miscore train` on {device} "
        "(step times measured by the planner)."
    )
    return Plan(config, reasons, header)


def _device() -> str:
    """The devices training will use, as a short phrase."""
    import os

    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return f"{len(gpus)} GPU(s)"
    return f"the CPU ({os.cpu_count()} cores)"
