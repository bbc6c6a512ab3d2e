"""Training on several machines: ``tf.distribute.MultiWorkerMirroredStrategy`` (MWMS).

TensorFlow does the distributed part: every worker process reads ``TF_CONFIG`` (the cluster's
addresses and its own task), the workers connect over gRPC, and collective all-reduce ops
(ring on CPUs, NCCL on GPUs) sum the gradients so that every worker applies the same update.
miscore does the rest: each worker draws the same seeded epoch plan and keeps only its share
of every global batch (``PatchLoader.shard``), the chief writes the model folder, the other
workers write theirs to a temporary folder that is removed (the usual pattern: every worker
runs the same saving code, so no collective op waits for a worker that skipped it), and
``--resume`` restarts every worker from the chief's checkpoint.

Keras 3 (3.15, TensorFlow 2.21) ``Model.fit`` fails under MWMS in its data adapter ("Attempt to
convert a value (PerReplica...) to a Tensor", keras-team/keras#20585), from a generator and
from a ``tf.data`` dataset alike; so ``fit_multi_worker`` runs its own loop: the step under
``strategy.run``, the loss from the compiled model (Keras divides it by the replicas in sync,
the optimizer sums the gradients over them), the Keras callbacks driven by a ``CallbackList``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from miscore.core.errors import ConfigError, InputError, PipelineError

if TYPE_CHECKING:
    from miscore.pipeline.loader import PatchLoader

#: the environment variable TensorFlow reads the cluster from
TF_CONFIG = "TF_CONFIG"
#: a non-chief worker writes its copy of the model folder here (kept) instead of a temporary
#: folder (removed): to compare the workers' weights, or to look at a worker's own history
WORKER_DIR_ENV = "MISCORE_WORKER_DIR"

_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class ClusterRole:
    """This process's place in the cluster ``TF_CONFIG`` describes.

    Args:
        index: the worker's id in the cluster (the chief is 0, then the workers in order).
        count: the training workers (``chief`` and ``worker`` tasks).
        chief: this worker writes the model folder.
    """

    index: int
    count: int
    chief: bool


def cluster_role(environ: Mapping[str, str] | None = None) -> ClusterRole | None:
    """The role ``TF_CONFIG`` gives this process; None when it is unset or names one task.

    The chief is the ``chief`` task, else worker 0 (TensorFlow's rule). Raises
    ``ConfigError`` naming ``TF_CONFIG`` when it is not the JSON TensorFlow expects.
    """
    raw = (os.environ if environ is None else environ).get(TF_CONFIG, "").strip()
    if not raw:
        return None
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{TF_CONFIG}: not JSON ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict):
        raise ConfigError(f'{TF_CONFIG}: needs a "cluster" object, e.g. {example_tf_config()}')
    cluster = spec["cluster"]
    chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
    if len(chiefs) > 1:
        raise ConfigError(f"{TF_CONFIG}: cluster.chief holds {len(chiefs)} addresses; one at most")
    count = len(chiefs) + len(workers)
    if count < 2:
        return None
    task = spec.get("task")
    if not isinstance(task, dict) or task.get("type") not in ("chief", "worker"):
        raise ConfigError(
            f'{TF_CONFIG}: "task" must name this process, {{"type": "worker", "index": N}} '
            f'(or "chief"); got {json.dumps(task)}'
        )
    index = task.get("index", 0)
    jobs = chiefs if task["type"] == "chief" else workers
    if not isinstance(index, int) or not 0 <= index < len(jobs):
        raise ConfigError(
            f"{TF_CONFIG}: task index {index!r} is not one of the {len(jobs)} "
            f"cluster.{task['type']} addresses"
        )
    if task["type"] == "chief":
        return ClusterRole(0, count, chief=True)
    return ClusterRole(len(chiefs) + index, count, chief=not chiefs and index == 0)


def example_tf_config() -> str:
    cluster = {"worker": ["host1:12345", "host2:12345"]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})


def tf_config_for(addresses: Sequence[str], task: int) -> str:
    """``TF_CONFIG`` for ``miscore train --cluster A,B --task N``: each address a worker.

    Raises ``InputError`` naming ``--cluster`` or ``--task`` when they do not fit."""
    hosts = [a.strip() for a in addresses if a.strip()]
    for address in hosts:
        match = _ADDRESS.match(address)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise InputError(f"--cluster: {address!r} is not host:port (e.g. node1:12345)")
    if len(set(hosts)) != len(hosts):
        raise InputError("--cluster: an address is listed twice")
    if len(hosts) < 2:
        raise InputError("--cluster: name every worker, at least two (host:port,host:port)")
    if not 0 <= task < len(hosts):
        raise InputError(f"--task {task}: must be 0 to {len(hosts) - 1} (its place in --cluster)")
    return json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": task}})


# --- the strategy -------------------------------------------------------------------------

_STRATEGY: Any = None


def multi_worker_strategy() -> Any:
    """This process's ``MultiWorkerMirroredStrategy`` (one per process, made once).

    Ring all-reduce on a machine without GPUs, TensorFlow's choice (NCCL) with them. It must
    be made before TensorFlow runs anything (it configures the collective ops of the runtime):
    ``train`` makes it first."""
    global _STRATEGY
    if _STRATEGY is None:
        import tensorflow as tf

        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
            if tf.config.list_physical_devices("GPU")
            else tf.distribute.experimental.CommunicationImplementation.RING
        )
        try:
            _STRATEGY = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except RuntimeError as exc:
            raise PipelineError(
                f"multi-worker training ({TF_CONFIG}): TensorFlow had already started when the "
                f"strategy was made ({exc}); make it first, as miscore train does"
            ) from None
    return _STRATEGY


def is_multi_worker(strategy: Any) -> bool:
    return strategy is not None and strategy is _STRATEGY


def check_global_batch(batch_size: int, workers: int, replicas: int) -> None:
    """Refuse a global batch that the replicas in sync cannot share evenly."""
    if batch_size % replicas:
        per_worker = replicas // max(1, workers)
        raise ConfigError(
            f"training.batch_size {batch_size} is the global batch and must be divisible by the "
            f"{replicas} replicas in sync ({workers} workers x {per_worker} local replicas); "
            f"use a multiple of {replicas}"
        )


def agreed(strategy: Any, value: float) -> tuple[float, float]:
    """``(min, max)`` of ``value`` over all workers (a collective: every worker calls it)."""
    import tensorflow as tf

    @tf.function  # type: ignore[untyped-decorator]
    def gather() -> Any:
        def replica() -> Any:
            return tf.constant([value], tf.float32)

        return strategy.gather(strategy.run(replica), axis=0)

    values = np.asarray(gather())
    return float(values.min()), float(values.max())


@contextmanager
def worker_folder(role: ClusterRole, out: Path) -> Iterator[Path]:
    """Where this worker writes its model folder: ``out`` for the chief; for the others
    ``$MISCORE_WORKER_DIR`` (kept) or a temporary folder, removed afterwards."""
    if role.chief:
        yield out
        return
    kept = os.environ.get(WORKER_DIR_ENV)
    if kept:
        yield Path(kept)
        return
    temp = Path(tempfile.mkdtemp(prefix=f"miscore-worker{role.index}-"))
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)


# --- the loop -----------------------------------------------------------------------------


def train_step(model: Any, strategy: Any, workers: int) -> Callable[[Any, Any], float]:
    """One synchronous step on this worker's share ``(x, y)`` of the global batch, split
    over its local replicas; returns the global batch's loss (the same on every worker)."""
    import tensorflow as tf

    local = strategy.num_replicas_in_sync // workers
    outputs = len(model.outputs)

    def replica_step(x: Any, y: Any) -> Any:
        target = (y,) * outputs if outputs > 1 else y
        with tf.GradientTape() as tape:
            predicted = model(x, training=True)
            # divided by the replicas in sync (Keras, under a strategy): their sum is the mean
            loss = model.compute_loss(x=x, y=target, y_pred=predicted, training=True)
            scaled = model.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_weights)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_weights, strict=True))
        model.compute_metrics(x, target, predicted)
        return loss

    @tf.function  # type: ignore[untyped-decorator]
    def step(x: Any, y: Any) -> Any:
        losses = strategy.run(replica_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    def run(x: Any, y: Any) -> float:
        share = len(x) // local

        def part(context: Any) -> tuple[Any, Any]:
            # replica ids are task-major: this worker's local replicas are consecutive
            i = context.replica_id_in_sync_group % local
            return (
                tf.constant(x[i * share : (i + 1) * share]),
                tf.constant(y[i * share : (i + 1) * share]),
            )

        values = strategy.experimental_distribute_values_from_function(part)
        return float(step(*values))

    return run


def validation_logs(
    model: Any, validation: tuple[np.ndarray, np.ndarray], batch_size: int
) -> dict[str, float]:
    """``val_loss`` of the fixed validation patches, on this worker alone (every worker has
    the same weights and patches, so the same value)."""
    import keras

    outputs = len(model.outputs)
    x, y = validation
    total, count = 0.0, 0
    for start in range(0, len(x), batch_size):
        xs, ys = x[start : start + batch_size], y[start : start + batch_size]
        target = (ys,) * outputs if outputs > 1 else ys
        predicted = model(keras.ops.convert_to_tensor(xs), training=False)
        loss = model.compute_loss(x=xs, y=target, y_pred=predicted, training=False)
        total += float(keras.ops.convert_to_numpy(loss)) * len(xs)
        count += len(xs)
    return {"val_loss": total / count}


def fit_multi_worker(
    model: Any,
    strategy: Any,
    loader: PatchLoader,
    validation: tuple[np.ndarray, np.ndarray] | None,
    batch_size: int,
    epochs: tuple[int, int],
    callbacks: list[Any],
) -> None:
    """What ``model.fit`` does, under MWMS: epochs ``epochs[0]`` to ``epochs[1]`` of the
    loader's (sharded) batches, the callbacks called as ``fit`` calls them. Logs: ``loss``
    (the epoch's mean of the global batches' losses), the compiled metrics, ``val_loss``.

    A callback that stops the run (early stopping, a time limit) stops every worker: the
    workers agree on it after each epoch, so no collective op waits for one that left."""
    import keras

    initial, total = epochs
    step = train_step(model, strategy, loader.shard_of[1])
    listed = keras.callbacks.CallbackList(
        callbacks, add_history=False, add_progbar=False, model=model,
        epochs=total, steps=loader.steps_per_epoch,
    )  # fmt: skip
    model.stop_training = False
    listed.on_train_begin()
    logs: dict[str, float] = {}
    for epoch in range(initial, total):
        model.reset_metrics()
        listed.on_epoch_begin(epoch)
        losses = []
        for index, (x, y) in enumerate(loader.epoch_batches(epoch)):
            listed.on_train_batch_begin(index)
            losses.append(step(x, y))
            listed.on_train_batch_end(index, {"loss": losses[-1]})
        logs = {"loss": float(np.mean(losses)) if losses else math.nan}
        for name, value in model.get_metrics_result().items():
            if name != "loss":
                logs[name] = float(value)
        if validation is not None:
            logs.update(validation_logs(model, validation, batch_size))
        listed.on_epoch_end(epoch, logs)
        _, stop = agreed(strategy, float(bool(model.stop_training)))
        if stop:
            break
    listed.on_train_end(logs)


def shard_note(role: ClusterRole, replicas: int, batch_size: int) -> str:
    """The line a worker logs when it joins."""
    place = "chief" if role.chief else "worker"
    return (
        f"worker {role.index} of {role.count} ({place}): {replicas} replicas in sync "
        f"(MultiWorkerMirroredStrategy), {batch_size // role.count} of each global batch of "
        f"{batch_size} on this worker"
    )


__all__ = [
    "TF_CONFIG",
    "WORKER_DIR_ENV",
    "ClusterRole",
    "agreed",
    "check_global_batch",
    "cluster_role",
    "fit_multi_worker",
    "multi_worker_strategy",
    "tf_config_for",
    "worker_folder",
]
