"""Keras callbacks for ``training.callbacks``.

``build(model_dir)`` returns a ``keras.callbacks.Callback`` that training adds to ``model.fit``
before its own recorder (which logs, checkpoints and saves ``--resume`` state after every
epoch). Keras is imported only in ``build``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

import miscore


class TimeLimitParams(miscore.Params):
    """Parameters of the time limit."""

    minutes: float = Field(gt=0.0, description="wall-clock minutes of training in this run")


class TimeLimit(miscore.Callback):
    """Stops training after the epoch in which ``minutes`` of this run have passed.

    The epoch is finished and checkpointed as every other, so ``miscore train --resume``
    continues from it (with a fresh time limit).
    """

    name = "time_limit"
    Params: ClassVar[type[miscore.Params]] = TimeLimitParams

    def build(self, model_dir: Path | None) -> Any:
        import keras

        params = self.params
        assert isinstance(params, TimeLimitParams)
        seconds = params.minutes * 60.0

        class StopAfterTime(keras.callbacks.Callback):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.started = time.monotonic()
                self.stopped_epoch: int | None = None

            def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
                self.started = time.monotonic()

            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                if time.monotonic() - self.started >= seconds:
                    self.stopped_epoch = epoch + 1
                    self.model.stop_training = True

        return StopAfterTime()


class SnapshotParams(miscore.Params):
    """Parameters of the epoch snapshots."""

    every: int = Field(10, ge=1, description="save the model after every this many epochs")
    folder: str = Field(
        "snapshots", min_length=1, description="subfolder of the model folder to save them in"
    )


class EpochSnapshots(miscore.Callback):
    """Keeps the model of every ``every``-th epoch as ``snapshots/epoch_NNNN.keras``.

    Each file is written atomically; ``model.keras`` stays the best model. Snapshots let a user
    compare or ensemble the models of later epochs.
    """

    name = "epoch_snapshots"
    Params: ClassVar[type[miscore.Params]] = SnapshotParams

    def build(self, model_dir: Path | None) -> Any:
        import keras

        params = self.params
        assert isinstance(params, SnapshotParams)
        if model_dir is None:
            raise miscore.InputError(
                "training.callbacks: epoch_snapshots needs a model folder to save into"
            )
        folder = Path(model_dir) / params.folder
        every = params.every

        class SaveEvery(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                if (epoch + 1) % every:
                    return
                folder.mkdir(parents=True, exist_ok=True)
                with miscore.atomic_output(folder / f"epoch_{epoch + 1:04d}.keras") as temp:
                    self.model.save(temp)

        return SaveEvery()
