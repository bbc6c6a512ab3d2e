"""The inference-mode check: is the model that training reports the model that predicts?

A network with batch normalization trains on batch statistics but predicts with moving
averages of them. After few steps, or with momentum 0.99 and a small, uniform training set, the
averages are still far from the data: the loss says the model is good while the model that
``miscore predict`` runs labels everything as one class (seen on a real brain task: Dice 0.46
in inference mode at a training loss of 0.03).

Every epoch, ``ModeCheck`` predicts a fixed set of patches twice, in inference mode (what
``miscore predict`` does) and in training mode (what the loss saw; computed with
``stateless_call``, so no moving statistic changes), and reports the Dice of each. A run whose
inference-mode Dice ends far below its training-mode Dice gets a warning that says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["GAP_WARNING", "ModeCheck", "degenerate_warning", "hard_dice"]

#: A final training-mode Dice this much above the inference-mode Dice is a degenerate model.
GAP_WARNING = 0.2

INFERENCE_COLUMN = "dice_inference"
TRAINING_COLUMN = "dice_training_mode"


def hard_dice(scores: npt.NDArray[Any], target: npt.NDArray[Any]) -> float:
    """Mean Dice over the foreground classes of argmax labels, pooled over all patches.

    Args:
        scores: ``(n, *spatial, classes)`` network outputs.
        target: ``(n, *spatial, classes)`` one-hot labels.
    Returns:
        The mean over the foreground classes present in the target or the prediction; NaN
        when no patch holds any foreground in either.
    """
    predicted = np.argmax(scores, axis=-1)
    truth = np.argmax(target, axis=-1)
    values = []
    for c in range(1, scores.shape[-1]):
        p, t = predicted == c, truth == c
        total = int(p.sum()) + int(t.sum())
        if total:
            values.append(2.0 * float(np.logical_and(p, t).sum()) / total)
    return float(np.mean(values)) if values else math.nan


def _first(output: Any) -> Any:
    """The segmentation output of a model with deep-supervision heads (the first)."""
    return output[0] if isinstance(output, list | tuple) else output


@dataclass
class ModeCheck:
    """Dice of fixed patches in inference and training mode.

    Args:
        x: ``(n, *spatial, channels)`` fixed patches (no augmentation).
        y: their one-hot targets.
        batch_size: patches per forward pass.
        source: what the patches are, for messages (``validation`` or ``training``).
        distributed: the model was built under a distribution strategy: variables are per
            device, so the training mode is left out and patches are predicted by a direct
            call (``predict_on_batch`` splits a batch over the replicas there).
    """

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]
    batch_size: int
    source: str
    distributed: bool = False

    def __call__(self, model: Any) -> dict[str, float]:
        """``{dice_inference, dice_training_mode}`` of ``model`` on the fixed patches."""
        import keras

        inference, training = [], []
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        for start in range(0, len(self.x), self.batch_size):
            chunk = self.x[start : start + self.batch_size]
            if self.distributed:
                output = model(keras.ops.convert_to_tensor(chunk), training=False)
            else:
                output = model.predict_on_batch(chunk)
            inference.append(_numpy(_first(output)))
            if not self.distributed:
                output, _ = model.stateless_call(
                    trainable, non_trainable, keras.ops.convert_to_tensor(chunk), training=True
                )
                training.append(_numpy(_first(output)))
        values = {INFERENCE_COLUMN: hard_dice(np.concatenate(inference), self.y)}
        if training:
            values[TRAINING_COLUMN] = hard_dice(np.concatenate(training), self.y)
        return values


def _numpy(tensor: Any) -> npt.NDArray[np.float32]:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype=np.float32)


def degenerate_warning(history: Sequence[dict[str, float]], source: str = "") -> str | None:
    """A warning when the last epoch's inference-mode Dice is far below training mode's.

    Returns None when the run looks consistent or did not record both figures.
    """
    if not history:
        return None
    last = history[-1]
    inference, training = last.get(INFERENCE_COLUMN), last.get(TRAINING_COLUMN)
    if inference is None or training is None or math.isnan(training):
        return None
    if math.isnan(inference):
        inference = 0.0
    if training - inference <= GAP_WARNING:
        return None
    where = f" on fixed {source} patches" if source else ""
    return (
        f"warning: the model is degenerate in inference mode: Dice {inference:.3f} when "
        f"predicting{where}, {training:.3f} in training mode on the same patches. What "
        "`miscore predict` runs is the inference mode. The usual cause is batch normalization "
        "whose moving statistics have not caught up (few steps, momentum 0.99): use "
        "model.architecture.normalization: instance, or train for many more steps"
    )
