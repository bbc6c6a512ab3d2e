"""Training: Keras ``fit`` fed by the pipeline, with logs, checkpoints and resume.

``train`` is the whole job (discover the dataset, preprocess into the cache, sample patches,
augment, fit, write the model folder); ``fit_model`` is the part after the cache, for callers
that bring their own cached cases. TensorFlow is imported here, inside the functions.

Resume: after every epoch the model with its optimizer state is saved to
``checkpoints/last.keras`` and the epoch to ``checkpoints/state.json`` (both atomically), and
``history.tsv`` is rewritten. ``--resume`` loads them and continues at the next epoch with the
same history; the loader's batches depend only on (seed, epoch), so the data a resumed run sees
are the data the uninterrupted run would have seen.

Several machines: when ``TF_CONFIG`` names several workers, training runs under
``MultiWorkerMirroredStrategy`` with the loop of ``multiworker.py`` (Keras ``fit`` fails there);
the chief writes the model folder, the other workers a temporary one.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from miscore.core.atomic import atomic_output, write_text_atomic
from miscore.core.config import Config
from miscore.core.errors import ConfigError, InputError, MiscoreError, PipelineError
from miscore.pipeline.finetune import inherit_preprocessing, init_from_source, write_report
from miscore.pipeline.modecheck import INFERENCE_COLUMN, TRAINING_COLUMN, degenerate_warning
from miscore.pipeline.modeldir import (
    ComponentRecord,
    ModelDir,
    ModelInfo,
    custom_objects,
    load_keras_model,
    save_keras_model,
)

if TYPE_CHECKING:
    import keras

    from miscore.cache import CachedCase
    from miscore.core.plugins import PluginManager
    from miscore.data.dataset import Dataset
    from miscore.pipeline.loader import PatchLoader
    from miscore.pipeline.modecheck import ModeCheck
    from miscore.pipeline.multiworker import ClusterRole


@dataclass
class TrainResult:
    """What a training run produced."""

    model_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    epochs: int = 0
    best: float | None = None
    monitor: str = "loss"
    warning: str | None = None
    #: False on a multi-worker run's other workers: ``model_dir`` is the chief's folder
    chief: bool = True


# --- building and compiling ---------------------------------------------------------------


def build_loss(config: Config, plugins: PluginManager, n_classes: int) -> Any:
    """The configured loss: a registered component, else a Keras built-in of that name."""
    registry = plugins.registry
    spec = config.model.loss_entry
    if spec.name in registry.names("loss"):
        return registry.create("loss", spec, "model.loss").build(n_classes)
    import keras

    if spec.params:
        raise InputError(f"model.loss: Keras built-in {spec.name!r} takes no params here")
    try:
        return keras.losses.get(spec.name)
    except ValueError:
        raise InputError(
            f"model.loss.name: no loss named {spec.name!r}; installed: "
            f"{', '.join(registry.names('loss')) or 'none'} (or a Keras loss name)"
        ) from None


def learning_rate(config: Config, plugins: PluginManager, total_steps: int) -> Any:
    """The rate of ``training.lr_schedule`` (a registered component) over ``total_steps``;
    the initial rate throughout when the config names none.

    A float is a constant rate; a Keras ``LearningRateSchedule`` is saved with the optimizer
    in ``model.keras``, so a resumed run continues it from the optimizer's step (the bundled
    ``poly`` is nnU-Net's ``lr * (1 - step / total) ** 0.9``, a built-in Keras schedule).
    """
    if config.training.lr_schedule is None:
        return config.training.learning_rate
    schedule = plugins.registry.create(
        "lr_schedule", config.training.lr_schedule, "training.lr_schedule"
    )
    return schedule.build(config.training.learning_rate, total_steps)


def build_optimizer(config: Config, plugins: PluginManager, total_steps: int = 1) -> Any:
    """The configured optimizer; ``total_steps`` (epochs x steps) sizes a rate schedule."""
    import keras

    optimizers: dict[str, Callable[..., Any]] = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.99),
    }
    rate = learning_rate(config, plugins, total_steps)
    return optimizers[config.training.optimizer](learning_rate=rate)


def distribution_strategy(config: Config) -> Any:
    """``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names several workers; else a
    ``MirroredStrategy`` when several GPUs (or the configured devices) are there."""
    from miscore.pipeline.multiworker import multi_worker_strategy

    if cluster_of(config) is not None:
        return multi_worker_strategy()
    import tensorflow as tf

    devices = config.training.devices
    if devices is None and config.training.distribute == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] if len(gpus) > 1 else None
    if config.training.distribute in ("none", "multi_worker") or not devices or len(devices) < 2:
        return None
    return tf.distribute.MirroredStrategy(devices=devices)


def cluster_of(config: Config) -> ClusterRole | None:
    """This worker's role when training runs on several machines (``TF_CONFIG`` names several
    workers and ``training.distribute`` is ``auto`` or ``multi_worker``); None otherwise."""
    from miscore.pipeline.multiworker import TF_CONFIG, cluster_role

    distribute = config.training.distribute
    if distribute not in ("auto", "multi_worker"):
        return None
    role = cluster_role()
    if role is None and distribute == "multi_worker":
        raise ConfigError(
            f"training.distribute 'multi_worker' needs {TF_CONFIG} naming two workers or more "
            "(or miscore train --cluster host:port,host:port --task N)"
        )
    return role


@contextlib.contextmanager
def precision_policy(config: Config) -> Iterator[None]:
    """``training.mixed_precision``: 16-bit compute, float32 weights, while building.

    float16 on GPUs (tensor cores); bfloat16 on CPUs, where TensorFlow lacks float16 kernels
    for 3D pooling."""
    if not config.training.mixed_precision:
        yield
        return
    import keras
    import tensorflow as tf

    previous = keras.config.dtype_policy()
    gpu = bool(tf.config.list_logical_devices("GPU"))
    keras.config.set_dtype_policy("mixed_float16" if gpu else "mixed_bfloat16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def compile_model(
    model: keras.Model,
    config: Config,
    plugins: PluginManager,
    n_classes: int,
    total_steps: int = 1,
) -> None:
    model.compile(
        optimizer=build_optimizer(config, plugins, total_steps),
        loss=build_loss(config, plugins, n_classes),
        metrics=list(config.model.metrics),
    )


# --- callbacks ----------------------------------------------------------------------------


def write_history(path: Path, history: Sequence[dict[str, float]]) -> None:
    """Every metric per epoch as TSV (rewritten whole, atomically)."""
    columns = ["epoch", *sorted({k for row in history for k in row if k != "epoch"})]
    lines = ["\t".join(columns)]
    for row in history:
        lines.append("\t".join(_format(row.get(c, float("nan"))) for c in columns))
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line]
    header, body = rows[0], rows[1:]
    return [{k: float(v) for k, v in zip(header, row, strict=True)} for row in body]


def _format(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.6g}"


def plot_curves(path: Path, history: Sequence[dict[str, float]]) -> None:
    """A PNG of every logged metric against the epoch, training and validation together."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k for row in history for k in row if k not in {"epoch", "learning_rate"}})
    # one panel per metric, validation dashed beside training; both modes' Dice in one panel
    panels: dict[str, list[tuple[str, str]]] = {}
    for name in names:
        if name in (INFERENCE_COLUMN, TRAINING_COLUMN):
            style = "-" if name == INFERENCE_COLUMN else ":"
            panels.setdefault("fixed-patch Dice", []).append((name, style))
        else:
            base = name.removeprefix("val_")
            panels.setdefault(base, []).append((name, "--" if name != base else "-"))
    if not panels:
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    epochs = [row["epoch"] for row in history]
    for ax, (base, lines) in zip(axes[0], sorted(panels.items()), strict=True):
        for name, style in sorted(lines):
            ax.plot(epochs, [row.get(name, np.nan) for row in history], style, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(base)
        ax.legend()
        ax.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_output(path) as temp:
        figure.savefig(temp, format="png", dpi=90)
    plt.close(figure)


def make_recorder(
    model_dir: ModelDir,
    plugins: PluginManager,
    history: list[dict[str, float]],
    monitor: str,
    best: float | None,
    log: Callable[[str], None],
    schedules: dict[str, Any] | None = None,
    check: ModeCheck | None = None,
    chief: bool = True,
) -> Any:
    """The callback that logs, plots, checkpoints and calls the ``epoch_end`` hook.

    ``monitor`` picks the best model (``model.keras``): ``dice_inference`` is higher-better,
    a loss lower-better. ``check`` adds the inference- and training-mode Dice of fixed
    patches to every epoch.

    ``schedules`` (early stopping, LR plateau) have their counters saved with the checkpoint,
    so that ``--resume`` stops and lowers the rate when the uninterrupted run would have.
    It must run after them (last in the callback list). A multi-worker run's other workers
    (``chief`` False) save into their own folder too, but draw no curves and call no hook."""
    import keras

    higher = monitor == INFERENCE_COLUMN

    class EpochRecorder(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.best = best
            self.started = time.perf_counter()

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            values = {k: float(v) for k, v in (logs or {}).items()}
            loss = values.get("loss")
            if loss is not None and not math.isfinite(loss):
                # stop before the NaN weights overwrite the last good checkpoint
                kept = f"epoch {epoch} is kept for --resume" if epoch else "nothing was saved"
                raise PipelineError(
                    f"epoch {epoch + 1}: the training loss is {loss} ({kept}); lower "
                    "training.learning_rate or check the data"
                )
            if check is not None:
                values.update(check(self.model))
            with contextlib.suppress(AttributeError, TypeError, ValueError):
                values["learning_rate"] = float(
                    keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
                )
            row = {"epoch": float(epoch + 1), **values}
            history.append(row)
            write_history(model_dir.history_file, history)
            if chief:
                plot_curves(model_dir.curves_file, history)
            current = values.get(monitor)
            improved = (
                current is not None
                and not math.isnan(current)
                and (self.best is None or (current > self.best if higher else current < self.best))
            )
            if improved:
                self.best = current
                save_keras_model(self.model, model_dir.model_file)
            model_dir.last_checkpoint.parent.mkdir(parents=True, exist_ok=True)
            save_keras_model(self.model, model_dir.last_checkpoint)
            state = resume_state(epoch + 1, self.best, monitor, schedules or {})
            write_text_atomic(model_dir.state_file, json.dumps(state) + "\n")
            seconds = time.perf_counter() - self.started
            shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
            log(f"epoch {epoch + 1}: {shown}  ({seconds:.1f} s){'  *' if improved else ''}")
            if chief:
                plugins.epoch_end(epoch=epoch + 1, logs=values, model_dir=model_dir.path)

    return EpochRecorder()


def resume_state(
    epoch: int, best: float | None, monitor: str, schedules: dict[str, Any]
) -> dict[str, Any]:
    """``checkpoints/state.json``: the epoch finished, the best value, the schedules' counters.

    ``stopped`` is set only by a schedule that stopped the run itself (early stopping), not
    by another callback (``time_limit``): such a run is continued by ``--resume``."""
    state: dict[str, Any] = {"epoch": epoch, "best": best, "monitor": monitor}
    for name, callback in schedules.items():
        state[name] = {
            "wait": int(callback.wait),
            "best": float(callback.best),
            "stopped": int(getattr(callback, "stopped_epoch", 0) or 0) > 0,
        }
    return state


def resumable(callback_class: Any) -> Any:
    """A Keras schedule callback (EarlyStopping, ReduceLROnPlateau) whose counters can be
    restored from a checkpoint's state instead of starting again at zero."""

    class Resumable(callback_class):  # type: ignore[misc]
        def __init__(self, restored: dict[str, Any] | None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.restored = restored

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            super().on_train_begin(logs)
            if self.restored:
                self.wait = self.restored["wait"]
                self.best = self.restored["best"]

    return Resumable


def make_progress(steps: int, total_epochs: int) -> Any:
    """A rich progress bar of the steps of each epoch (only for a terminal)."""
    import keras
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    class StepProgress(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                transient=True,
            )
            self.task: Any = None

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.bar.start()
            self.task = self.bar.add_task(
                f"epoch {epoch + 1}/{total_epochs}", total=steps, loss="-"
            )

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            loss = (logs or {}).get("loss")
            shown = f"{float(loss):.4g}" if loss is not None else "-"
            self.bar.update(self.task, advance=1, loss=shown)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.bar.remove_task(self.task)
            self.bar.stop()

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            self.bar.stop()

    return StepProgress()


# --- the fit ------------------------------------------------------------------------------


@dataclass
class FitStart:
    """Where a fit starts: a new model, or the checkpoint of an interrupted run."""

    model: Any
    initial_epoch: int = 0
    best: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    #: ``checkpoints/state.json`` of the run resumed (the schedules' counters); ``{}`` if new
    saved: dict[str, Any] = field(default_factory=dict)


def fit_model(
    config: Config,
    plugins: PluginManager,
    loader: PatchLoader,
    validation: tuple[np.ndarray, np.ndarray] | None,
    model_dir: Path,
    info: ModelInfo,
    *,
    epochs: int | None = None,
    resume: bool = False,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    progress: bool = False,
) -> TrainResult:
    """Build (or resume) the model and fit it on ``loader``'s batches.

    Args:
        config: the validated config.
        plugins: where the architecture, loss, rate schedule and callbacks come from.
        loader: the training batches; ``loader.epoch_batches(epoch)`` yields ``(x, y)``.
        validation: fixed validation patches ``(x, y)`` or None.
        model_dir: where everything is written.
        info: the model description to store in ``miscore.json`` (shapes, classes, cases).
        epochs: overrides ``training.epochs``.
        resume: continue from ``checkpoints/last.keras``.
    """
    from miscore.pipeline.multiworker import (
        check_global_batch,
        is_multi_worker,
        shard_note,
        worker_folder,
    )

    # a multi-worker strategy first: it must be made before TensorFlow runs anything
    strategy = distribution_strategy(config)
    role = cluster_of(config) if is_multi_worker(strategy) else None
    check = mode_check(config, loader, validation)
    if role is not None:
        check_global_batch(config.training.batch_size, role.count, strategy.num_replicas_in_sync)
        loader.shard(role.index, role.count)
        log(shard_note(role, strategy.num_replicas_in_sync, config.training.batch_size))
    elif strategy is not None:
        log(f"distributing over {strategy.num_replicas_in_sync} devices (MirroredStrategy)")
    if strategy is not None and check is not None:
        check.distributed = True  # variables are per device under a strategy
    try:
        if role is None:
            return fit_in(
                config, plugins, loader, validation, ModelDir(model_dir), info, check,
                strategy, None, epochs=epochs, resume=resume, log=log, progress=progress,
            )  # fmt: skip
        with worker_folder(role, Path(model_dir)) as written:
            result = fit_in(
                config, plugins, loader, validation, ModelDir(written), info, check,
                strategy, role, epochs=epochs, resume=resume, log=log, progress=progress,
                source=ModelDir(model_dir),
            )  # fmt: skip
        result.model_dir, result.chief = Path(model_dir), role.chief
        return result
    finally:
        loader.close()


def fit_in(
    config: Config,
    plugins: PluginManager,
    loader: PatchLoader,
    validation: tuple[np.ndarray, np.ndarray] | None,
    folder: ModelDir,
    info: ModelInfo,
    check: ModeCheck | None,
    strategy: Any,
    role: ClusterRole | None,
    *,
    epochs: int | None,
    resume: bool,
    log: Callable[[str], None],
    progress: bool,
    source: ModelDir | None = None,
) -> TrainResult:
    """``fit_model`` once the strategy is made: the model written to ``folder``, resumed
    from ``source`` (the chief's folder; ``folder`` when None). Under a multi-worker
    strategy (``role``) every worker runs this, each into its own folder."""
    import keras

    total = epochs or config.training.epochs
    monitor = "val_loss" if validation is not None else "loss"
    # the best model is the one that predicts best in inference mode on fixed patches; the
    # schedules (plateau, early stopping) keep watching the loss Keras logs
    select = INFERENCE_COLUMN if check is not None else monitor
    keras.utils.set_random_seed(config.training.seed)
    scope: Any = strategy.scope() if strategy is not None else contextlib.nullcontext()
    start = start_model(
        config, plugins, folder, info, total * loader.steps_per_epoch, resume, scope, log,
        source,
    )  # fmt: skip
    if role is not None:
        agree_on_start(strategy, start.initial_epoch, source or folder)
    if start.initial_epoch >= total:
        log(f"already trained for {start.initial_epoch} epochs (asked for {total})")
        return TrainResult(folder.path, start.history, start.initial_epoch, start.best, select)
    folder.write_metadata(config, info)
    schedules = schedule_callbacks(config, monitor, start.saved)
    if start.saved.get("early_stopping", {}).get("stopped"):
        ended = f"early stopping ended this run after epoch {start.initial_epoch}"
        log(f"{ended}: nothing to resume")
        return TrainResult(folder.path, start.history, start.initial_epoch, start.best, select)
    chief = role is None or role.chief
    recorder = make_recorder(
        folder, plugins, start.history, select, start.best, log, schedules, check, chief
    )
    callbacks = [*schedules.values(), *configured_callbacks(config, plugins, folder.path)]
    if progress:
        callbacks.append(make_progress(loader.steps_per_epoch, total))
    callbacks.append(recorder)  # last: it saves the schedules' counters of the epoch
    span = (start.initial_epoch, total)
    if role is None:
        run_fit(start.model, loader, validation, config, span, callbacks)
    else:
        from miscore.pipeline.multiworker import fit_multi_worker

        batch = config.training.batch_size
        fit_multi_worker(start.model, strategy, loader, validation, batch, span, callbacks)
    if not folder.model_file.exists():
        save_keras_model(start.model, folder.model_file)
    history = start.history
    info.epochs_trained = int(history[-1]["epoch"]) if history else start.initial_epoch
    folder.write_metadata(config, info)
    warning = degenerate_warning(history, check.source if check else "")
    if warning and chief:
        log(warning)
    return TrainResult(folder.path, history, info.epochs_trained, recorder.best, select, warning)


def agree_on_start(strategy: Any, initial_epoch: int, source: ModelDir) -> None:
    """Refuse a multi-worker start where the workers would begin at different epochs (a
    worker that cannot read the chief's checkpoint): they would wait on each other forever."""
    from miscore.pipeline.multiworker import agreed

    low, high = agreed(strategy, float(initial_epoch))
    if low != high:
        raise PipelineError(
            f"--resume: the workers would start at different epochs ({int(low)} to "
            f"{int(high)}; this one after epoch {initial_epoch}): every worker must read the "
            f"chief's checkpoint {source.last_checkpoint} (a shared folder), and all must be "
            "restarted with --resume"
        )


def start_model(
    config: Config,
    plugins: PluginManager,
    folder: ModelDir,
    info: ModelInfo,
    total_steps: int,
    resume: bool,
    scope: Any,
    log: Callable[[str], None],
    source: ModelDir | None = None,
) -> FitStart:
    """The compiled model to fit: the last checkpoint (of ``source``, else ``folder``) with
    its optimizer state when resuming one, else a new one of ``model.architecture``
    (refused in a used folder), started from ``training.init_from``'s weights when set."""
    read = source or folder
    if resume and read.state_file.is_file():
        state = json.loads(read.state_file.read_text(encoding="utf-8"))
        initial_epoch = int(state["epoch"])
        history = [r for r in read_history(read.history_file) if r["epoch"] <= initial_epoch]
        with scope, precision_policy(config):
            # compile=True restores the optimizer with its state (and rate schedule), and the loss
            objects = custom_objects(config, plugins)
            model = load_keras_model(read.last_checkpoint, objects, compile=True)
            if getattr(model, "optimizer", None) is None:
                compile_model(model, config, plugins, info.n_classes, total_steps)
        log(f"resuming after epoch {initial_epoch} from {read.last_checkpoint}")
        return FitStart(model, initial_epoch, state.get("best"), history, state)
    if resume:
        log(f"nothing to resume in {read.path}: starting from epoch 1")
    else:
        refuse_used_folder(folder)
    architecture = plugins.registry.create(
        "architecture", config.model.architecture, "model.architecture"
    )
    with scope, precision_policy(config):
        model = architecture.build(info.input_shape, info.n_classes)
        if config.training.init_from is not None:
            write_report(folder.path, init_from_source(model, config, plugins, log))
        compile_model(model, config, plugins, info.n_classes, total_steps)
    return FitStart(model)


def schedule_callbacks(config: Config, monitor: str, saved: dict[str, Any]) -> dict[str, Any]:
    """Early stopping and the LR plateau, their counters restored from ``saved`` (resume)."""
    import keras

    training = config.training
    schedules: dict[str, Any] = {}
    if training.reduce_lr_patience:
        schedules["reduce_lr"] = resumable(keras.callbacks.ReduceLROnPlateau)(
            saved.get("reduce_lr"),
            monitor=monitor,
            factor=0.5,
            patience=training.reduce_lr_patience,
        )
    if training.early_stopping:
        schedules["early_stopping"] = resumable(keras.callbacks.EarlyStopping)(
            saved.get("early_stopping"), monitor=monitor, patience=training.early_stopping
        )
    return schedules


def configured_callbacks(config: Config, plugins: PluginManager, model_dir: Path) -> list[Any]:
    """The Keras callbacks of ``training.callbacks`` (registered components), in order."""
    callbacks = plugins.registry.create_each(
        "callback", config.training.callbacks, "training.callbacks"
    )
    return [callback.build(model_dir) for callback in callbacks]


def run_fit(
    model: keras.Model,
    loader: PatchLoader,
    validation: tuple[np.ndarray, np.ndarray] | None,
    config: Config,
    epochs: tuple[int, int],
    callbacks: list[Any],
) -> None:
    """``model.fit`` from epoch ``epochs[0]`` to ``epochs[1]`` on the loader's batches."""
    initial_epoch, total = epochs
    outputs = len(model.outputs)
    validation_data: Any = validation
    if outputs > 1 and validation is not None:
        validation_data = (validation[0], (validation[1],) * outputs)
    raised: list[MiscoreError] = []
    try:
        model.fit(
            per_head(noting_errors(loader.forever(initial_epoch), raised), outputs),
            steps_per_epoch=loader.steps_per_epoch,
            epochs=total,
            initial_epoch=initial_epoch,
            validation_data=validation_data,
            validation_batch_size=config.training.batch_size,
            callbacks=callbacks,
            shuffle=False,  # the loader shuffles, seeded
            verbose=0,
        )
    except Exception:
        # TensorFlow re-raises an error of the batch generator as its own, the traceback
        # pasted into the message: the user reads the miscore error itself (one line).
        if raised:
            raise raised[0] from None
        raise


def noting_errors(batches: Iterator[Any], raised: list[MiscoreError]) -> Iterator[Any]:
    """``batches``, appending to ``raised`` a miscore error they end with (for ``run_fit``)."""
    try:
        yield from batches
    except MiscoreError as exc:
        raised.append(exc)
        raise


#: fixed patches the inference-mode check predicts every epoch (twice: both modes)
CHECK_PATCHES = 8


def mode_check(
    config: Config,
    loader: PatchLoader,
    validation: tuple[np.ndarray, np.ndarray] | None,
) -> ModeCheck | None:
    """The per-epoch inference-mode check: validation patches, else fixed training ones."""
    from miscore.pipeline.modecheck import ModeCheck

    if not config.training.inference_dice:
        return None
    if validation is not None:
        x, y = validation[0][:CHECK_PATCHES], validation[1][:CHECK_PATCHES]
        source = "validation"
    else:
        fixed = loader.validation(loader.cases, limit=CHECK_PATCHES)
        if fixed is None:
            return None
        (x, y), source = fixed, "training"
    return ModeCheck(x, y, config.training.batch_size, source)


def per_head(batches: Iterator[Any], outputs: int) -> Iterator[Any]:
    """Deep supervision: every head of a multi-output model learns the same (full-size)
    target; a single-output model gets the batches as they are."""
    if outputs == 1:
        return batches
    return ((x, (y,) * outputs) for x, y in batches)


def refuse_used_folder(folder: ModelDir) -> None:
    """A folder that already holds a trained model is only continued with ``--resume``."""
    if folder.model_file.exists() or folder.state_file.exists():
        raise InputError(
            f"{folder.path}: already holds a model; use --resume to continue it or "
            "choose another output folder"
        )


def component_records(
    config: Config,
    plugins: PluginManager,
    dataset: Dataset | None = None,
    case_ids: Sequence[str] = (),
    also_used: Sequence[tuple[str, str]] = (),
    sampler: str | None = None,
) -> list[ComponentRecord]:
    """Every component a model was made with, and its plugin (``miscore.json``).

    The dataset's layout and the readers of the ``case_ids`` files (when a dataset is
    given), the preprocessing, the patch ``sampler`` (the loader's, when it samples), the
    augmentation, architecture, loss (unless a Keras built-in), rate schedule, callbacks and
    postprocessors of ``config`` (defaults applied), then ``also_used`` ``(kind, name)``
    pairs (e.g. the evaluator of a cross-validation fold). A prediction later names the
    plugin to install when one it needs is missing.
    """
    registry = plugins.registry
    wanted: list[tuple[str, str]] = []
    if dataset is not None:
        if dataset.layout in registry.names("layout"):
            wanted.append(("layout", dataset.layout))
        wanted += [("io", name) for name in readers_used(dataset, case_ids)]
    wanted += [("subfunction", s.name) for s in config.preprocessing]
    if sampler is not None:
        wanted.append(("sampler", sampler))
    wanted += [("augmentation", a.name) for a in config.augmentation]
    wanted.append(("architecture", config.model.architecture_entry.name))
    if config.model.loss_entry.name in registry.names("loss"):
        wanted.append(("loss", config.model.loss_entry.name))
    if config.training.lr_schedule is not None:
        wanted.append(("lr_schedule", config.training.lr_schedule.name))
    wanted += [("callback", c.name) for c in config.training.callbacks]
    wanted += [("postprocessor", p.name) for p in config.inference.postprocessing]
    wanted += list(also_used)
    records = []
    for kind, name in dict.fromkeys(wanted):  # once each, in order
        plugin = plugins.plugin_of(kind, name)
        records.append(
            ComponentRecord(kind=kind, name=name, plugin=plugin.name, version=plugin.version)
        )
    return records


def readers_used(dataset: Dataset, case_ids: Sequence[str]) -> list[str]:
    """The IO components that read the images and labels of ``case_ids``, sorted."""
    names: set[str] = set()
    for case_id in case_ids:
        source = dataset.source(case_id)
        paths = [*source.images, *([source.label] if source.label is not None else [])]
        names.update(dataset.io_for(path).name for path in paths)
    return sorted(names)


def check_cases(cases: Sequence[CachedCase]) -> None:
    if not cases:
        raise InputError("no labelled cases to train on")
    for case in cases:
        if case.label is None:
            raise InputError(f"case {case.id}: has no label; training needs labelled cases")


# --- the whole job ------------------------------------------------------------------------


def split_validation(ids: Sequence[str], config: Config) -> tuple[list[str], list[str]]:
    """``(train, validation)`` case ids: the explicit list, else a seeded share."""
    training = config.training
    if training.validation_cases:
        unknown = sorted(set(training.validation_cases) - set(ids))
        if unknown:
            raise InputError(
                f"training.validation_cases: no labelled case named {', '.join(unknown)}"
            )
        chosen = set(training.validation_cases)
    elif training.validation_split > 0:
        count = max(1, round(len(ids) * training.validation_split))
        if count >= len(ids):
            raise InputError(
                f"training.validation_split {training.validation_split} leaves no training "
                f"case out of {len(ids)}"
            )
        order = np.random.default_rng([training.seed, 99]).permutation(len(ids))
        chosen = {ids[i] for i in order[:count]}
    else:
        chosen = set()
    return [i for i in ids if i not in chosen], [i for i in ids if i in chosen]


def train(
    config: Config,
    data: Path | str,
    out: Path | str,
    *,
    plugins: PluginManager | None = None,
    epochs: int | None = None,
    resume: bool = False,
    cache: str | None = None,
    local_plugins: Sequence[str] = (),
    case_ids: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    progress: bool = False,
    also_used: Sequence[tuple[str, str]] = (),
) -> TrainResult:
    """Train a model on the labelled cases of ``data`` and write the model folder ``out``.

    Args:
        config: a validated config.
        data: the dataset folder (any supported layout).
        out: the model folder to write (or to continue with ``resume``).
        plugins: the plugin manager; a new one (installed plugins) when None.
        epochs: overrides ``training.epochs``.
        resume: continue an interrupted run in ``out``.
        cache: the cache location (``--cache``), above ``MISCORE_CACHE_DIR`` and config.
        local_plugins: ``--plugin`` modules, handed to worker processes.
        case_ids: train on these labelled cases only (a cross-validation fold); None: all.
        log: where progress lines go.
        progress: show a progress bar of each epoch's steps (for a terminal).
        also_used: further ``(kind, name)`` components to record in ``miscore.json``
            (e.g. ``("evaluator", "kfold")`` for a cross-validation fold).
    """
    from miscore.cache import open_cache
    from miscore.core.config import apply_defaults, check_components
    from miscore.core.plugins import PluginManager
    from miscore.data.dataset import Dataset

    role = cluster_of(config)
    if role is not None:
        from miscore.pipeline.multiworker import check_global_batch

        check_global_batch(config.training.batch_size, role.count, role.count)  # before work
        distribution_strategy(config)  # first: it must be made before TensorFlow runs anything
    if not resume and (role is None or role.chief):
        refuse_used_folder(ModelDir(out))  # before the cache is built, not after
    plugins = plugins or PluginManager(local_plugins=local_plugins)
    registry = plugins.registry
    # before the defaults fill it; a resumed run takes it from its own folder
    config = inherit_preprocessing(config, log, plugins, ModelDir(out) if resume else None)
    config = apply_defaults(config, registry)
    components = check_components(config, registry)
    plugins.configure(config)
    dataset = Dataset.discover(data, registry, config.data.layout, config.data.io)
    ids = training_ids(dataset, case_ids)
    train_ids, val_ids = split_validation(ids, config)
    store = open_cache(config, cache)
    check_worker_components(config, components, store)  # before the cache is built
    cases = prepare_cases(
        config, plugins, dataset, ids, store, components["preprocessing"], log, progress
    )
    check_cases(cases)
    by_id = {c.id: c for c in cases}
    loader = patch_loader(
        config, [by_id[i] for i in train_ids], components, store, local_plugins, plugins
    )
    sampler = loader.sampler.sampler  # None: the mode cuts no random windows
    info = ModelInfo(
        plugins=plugins.versions(),
        components=component_records(
            config, plugins, dataset, ids, also_used, sampler.name if sampler else None
        ),
        input_shape=model_input_shape(config, loader, cases),
        n_classes=config.data.classes,
        training_cases=train_ids,
        validation_cases=val_ids,
    )
    log(
        f"training on {len(train_ids)} cases ({len(val_ids)} for validation), "
        f"{loader.steps_per_epoch} steps of {config.training.batch_size} per epoch"
    )
    validation = loader.validation([by_id[i] for i in val_ids])
    return fit_model(
        config, plugins, loader, validation, Path(out), info,
        epochs=epochs, resume=resume, log=log, progress=progress,
    )  # fmt: skip


def patch_loader(
    config: Config,
    cases: Sequence[CachedCase],
    components: Mapping[str, Any],
    store: Any,
    local_plugins: Sequence[str],
    plugins: PluginManager | None = None,
) -> PatchLoader:
    """The training batches of ``cases``, read from ``store`` (directly when it is a cache
    on disk, so that loader processes open it themselves), augmented and sampled by the
    ``components`` that ``check_components`` created (``plugins``: the session's manager)."""
    from miscore.cache import CaseCache
    from miscore.pipeline.loader import PatchLoader

    return PatchLoader(
        list(cases),
        config,
        list(components["augmentation"]),
        config.data.classes,
        cache_root=store.location if isinstance(store, CaseCache) else None,
        cache_settings=store.settings,
        local_plugins=local_plugins,
        sampler=components.get("sampler"),
        plugins=plugins,
    )


def check_worker_components(config: Config, components: Mapping[str, Any], store: Any) -> None:
    """Refuse, before any work, augmentations that loader worker processes cannot recreate
    (``training.workers > 1`` with a cache on disk; ``loader.component_recipe`` says why)."""
    from miscore.cache import CaseCache
    from miscore.pipeline.loader import component_recipe

    if config.training.workers > 1 and isinstance(store, CaseCache):
        for augmentation in components["augmentation"]:
            component_recipe(augmentation)


def training_ids(dataset: Dataset, case_ids: Sequence[str] | None) -> list[str]:
    """The labelled cases to train on: all, or those of ``case_ids`` (a fold)."""
    ids = dataset.labelled_ids
    if case_ids is not None:
        unknown = sorted(set(case_ids) - set(ids))
        if unknown:
            raise InputError(f"{dataset.root}: no labelled case named {', '.join(unknown[:5])}")
        ids = [i for i in ids if i in set(case_ids)]
    if not ids:
        raise InputError(f"{dataset.root}: no labelled cases to train on")
    return ids


def model_input_shape(
    config: Config, loader: PatchLoader, cases: Sequence[CachedCase]
) -> list[int | None]:
    """The network's input: the patch and the channels; spatial ``None`` for whole images
    of different shapes. The channels must be those ``data.channels`` promises."""
    channels = cases[0].channels
    if config.data.channels is not None and channels != config.data.channels:
        raise InputError(
            f"data.channels is {config.data.channels} but the cases have {channels} channel(s)"
        )
    if config.patching.mode != "full" or len({c.spatial_shape for c in cases}) == 1:
        return [*loader.patch_shape, channels]
    return [None] * len(cases[0].spatial_shape) + [channels]


def prepare_cases(
    config: Config,
    plugins: PluginManager,
    dataset: Any,
    ids: Sequence[str],
    store: Any,
    steps: Sequence[Any],
    log: Callable[[str], None],
    progress: bool = False,
) -> list[CachedCase]:
    """Each case preprocessed once into the cache (or served from it), keyed exactly as
    ``miscore cache build`` keys it."""
    from miscore.cache import cache_dataset_case
    from miscore.core.progress import progress_bar

    cases = []
    hits = 0
    started = time.perf_counter()
    with progress_bar(len(ids), "preprocessing", progress) as advance:
        for case_id in ids:
            entry, hit = cache_dataset_case(store, dataset, case_id, steps, plugins, config)
            cases.append(entry)
            hits += hit
            advance()
    seconds = time.perf_counter() - started
    log(
        f"cache: {hits} of {len(ids)} cases ready, {len(ids) - hits} preprocessed ({seconds:.1f} s)"
    )
    return cases
