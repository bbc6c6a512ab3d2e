"""The Keras loss classes behind the loss components (imports Keras: load it lazily).

Every class is registered serializable under the package ``miscore``, so a model compiled
with one saves to ``model.keras`` and loads again once this module has been imported (the
loss components import it in ``build``).

Conventions (see docs/losses.md):
- ``n_classes > 1``: ``y_pred`` is a softmax over ``n_classes`` channels; ``y_true`` is
  one-hot with the same shape, or integer labels with one channel ``(B, *spatial, 1)``.
- ``n_classes == 1``: ``y_pred`` is one sigmoid channel and ``y_true`` 0/1 with one channel.
  Both are expanded to two channels, background ``1 - p`` and foreground ``p``, so a binary
  model gets exactly the numbers of the equivalent two-class softmax model.
- Overlap scores are computed per sample over the spatial axes, per class, then averaged
  over the classes with the class weights; Keras then averages over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

Tensor = Any
#: keeps log() finite for saturated probabilities
EPSILON = 1e-7


def expand_channels(y_true: Tensor, y_pred: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    """Float32 one-hot targets and probabilities with one channel per class.

    Binary (``n_classes == 1``) inputs become two channels: background, foreground.
    """
    y_pred = ops.cast(y_pred, "float32")
    if len(y_true.shape) != len(y_pred.shape):
        # Keras splits a single target array along the batch axis over several outputs
        raise ValueError(
            f"targets of shape {tuple(y_true.shape)} do not match predictions of shape "
            f"{tuple(y_pred.shape)}; a model with several outputs (deep supervision) needs "
            "one target per output"
        )
    channels = y_pred.shape[-1]
    if channels is not None and channels != n_classes:
        raise ValueError(
            f"the loss was built for {n_classes} classes but the model output has "
            f"{channels} channels; build the loss with n_classes={channels}"
        )
    if n_classes == 1:
        y_true = ops.cast(y_true, "float32")
        return (
            ops.concatenate([1.0 - y_true, y_true], axis=-1),
            ops.concatenate([1.0 - y_pred, y_pred], axis=-1),
        )
    if y_true.shape[-1] == 1:
        labels = ops.cast(ops.squeeze(y_true, axis=-1), "int32")
        y_true = ops.one_hot(labels, n_classes)
    return ops.cast(y_true, "float32"), y_pred


def spatial_axes(y: Tensor) -> list[int]:
    """The axes between batch and channels."""
    return list(range(1, len(y.shape) - 1))


class SegmentationLoss(keras.losses.Loss):  # type: ignore[misc]
    """Base: class convention, class weights, background handling, config round trip."""

    def __init__(
        self,
        n_classes: int,
        class_weights: Sequence[float] | None = None,
        include_background: bool = True,
        smooth: float = 1e-5,
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.n_classes = int(n_classes)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.include_background = bool(include_background)
        self.smooth = float(smooth)

    def weights(self, overlap: bool) -> Tensor:
        """Per-channel weights of the expanded channels; background zeroed when excluded."""
        channels = max(self.n_classes, 2)
        weights = self.class_weights or [1.0] * channels
        if overlap and not self.include_background:
            weights = [0.0, *weights[1:]]
        return ops.convert_to_tensor(weights, dtype="float32")

    def class_mean(self, scores: Tensor) -> Tensor:
        """Weighted mean over the class axis of per-class scores ``(B, C)``."""
        weights = self.weights(overlap=True)
        return ops.sum(scores * weights, axis=-1) / ops.sum(weights)

    def counts(self, y_true: Tensor, y_pred: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Soft true positives, false positives, false negatives per sample and class."""
        axes = spatial_axes(y_true)
        tp = ops.sum(y_true * y_pred, axis=axes)
        fp = ops.sum((1.0 - y_true) * y_pred, axis=axes)
        fn = ops.sum(y_true * (1.0 - y_pred), axis=axes)
        return tp, fp, fn

    def cross_entropy(self, y_true: Tensor, y_pred: Tensor, gamma: float = 0.0) -> Tensor:
        """Class-weighted (focal when ``gamma > 0``) cross-entropy, averaged over voxels."""
        p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
        per_class = -y_true * ops.log(p)
        if gamma:
            per_class = per_class * ops.power(1.0 - p, gamma)
        voxel = ops.sum(per_class * self.weights(overlap=False), axis=-1)
        return ops.mean(voxel, axis=spatial_axes(y_true))

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        y_true, y_pred = expand_channels(y_true, y_pred, self.n_classes)
        return self.per_sample(y_true, y_pred)

    def per_sample(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """The loss of each sample, shape ``(B,)``, from expanded targets and predictions."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            n_classes=self.n_classes,
            class_weights=self.class_weights,
            include_background=self.include_background,
            smooth=self.smooth,
        )
        return config


def tversky_index(tp: Tensor, fp: Tensor, fn: Tensor, alpha: float, beta: float, s: float) -> Any:
    return (tp + s) / (tp + alpha * fp + beta * fn + s)


@keras.saving.register_keras_serializable(package="miscore")
class TverskyKerasLoss(SegmentationLoss):
    """``1 - mean_c (TP + s) / (TP + alpha FP + beta FN + s)``."""

    def __init__(self, n_classes: int, alpha: float = 0.3, beta: float = 0.7, **kwargs: Any):
        kwargs.setdefault("name", "tversky")
        super().__init__(n_classes, **kwargs)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def tversky_loss(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        tp, fp, fn = self.counts(y_true, y_pred)
        return 1.0 - self.class_mean(tversky_index(tp, fp, fn, self.alpha, self.beta, self.smooth))

    def per_sample(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return self.tversky_loss(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}


@keras.saving.register_keras_serializable(package="miscore")
class FocalTverskyKerasLoss(TverskyKerasLoss):
    """``mean_c (1 - T_c) ** gamma`` (Abraham & Khan 2019; gamma = 1/1.33 = 0.75)."""

    def __init__(self, n_classes: int, gamma: float = 0.75, **kwargs: Any):
        kwargs.setdefault("name", "focal_tversky")
        super().__init__(n_classes, **kwargs)
        self.gamma = float(gamma)

    def per_sample(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        tp, fp, fn = self.counts(y_true, y_pred)
        index = tversky_index(tp, fp, fn, self.alpha, self.beta, self.smooth)
        # floor at EPSILON: (1 - T) can be a hair below 0 in float32 (x ** 0.75 is NaN there)
        # and the gradient of x ** gamma, gamma < 1, is infinite at 0
        return self.class_mean(ops.power(ops.maximum(1.0 - index, EPSILON), self.gamma))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="miscore")
class TverskyCEKerasLoss(TverskyKerasLoss):
    """Tversky loss plus ``ce_weight`` times the class-weighted cross-entropy."""

    def __init__(self, n_classes: int, ce_weight: float = 1.0, **kwargs: Any):
        kwargs.setdefault("name", "tversky_ce")
        super().__init__(n_classes, **kwargs)
        self.ce_weight = float(ce_weight)

    def per_sample(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        ce = self.cross_entropy(y_true, y_pred)
        return self.tversky_loss(y_true, y_pred) + self.ce_weight * ce

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ce_weight": self.ce_weight}


@keras.saving.register_keras_serializable(package="miscore")
class DiceKerasLoss(SegmentationLoss):
    """Soft Dice of all classes pooled: ``1 - (2 sum TP + s) / (sum(2 TP + FP + FN) + s)``.

    The sums run over voxels and (weighted) classes, so large classes weigh most.
    """

    def __init__(self, n_classes: int, **kwargs: Any):
        kwargs.setdefault("name", "dice")
        super().__init__(n_classes, **kwargs)

    def per_sample(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        tp, fp, fn = self.counts(y_true, y_pred)
        w = self.weights(overlap=True)
        tp, fp, fn = (ops.sum(v * w, axis=-1) for v in (tp, fp, fn))
        s = self.smooth
        return 1.0 - (2.0 * tp + s) / (2.0 * tp + fp + fn + s)


@keras.saving.register_keras_serializable(package="miscore")
class ClasswiseDiceKerasLoss(SegmentationLoss):
    """``1 - mean_c (2 TP_c + s) / (2 TP_c + FP_c + FN_c + s)``: every class counts equally."""

    def __init__(self, n_classes: int, **kwargs: Any):
        kwargs.setdefault("name", "dice_classwise")
        super().__init__(n_classes, **kwargs)

    def dice_loss(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        tp, fp, fn = self.counts(y_true, y_pred)
        s = self.smooth
        return 1.0 - self.class_mean((2.0 * tp + s) / (2.0 * tp + fp + fn + s))

    def per_sample(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return self.dice_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="miscore")
class DiceCEKerasLoss(ClasswiseDiceKerasLoss):
    """Class-wise Dice loss plus ``ce_weight`` times the class-weighted cross-entropy."""

    def __init__(self, n_classes: int, ce_weight: float = 1.0, **kwargs: Any):
        kwargs.setdefault("name", "dice_ce")
        super().__init__(n_classes, **kwargs)
        self.ce_weight = float(ce_weight)

    def per_sample(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        ce = self.cross_entropy(y_true, y_pred)
        return self.dice_loss(y_true, y_pred) + self.ce_weight * ce

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ce_weight": self.ce_weight}


@keras.saving.register_keras_serializable(package="miscore")
class JaccardKerasLoss(SegmentationLoss):
    """``1 - mean_c (TP_c + s) / (TP_c + FP_c + FN_c + s)`` (soft IoU)."""

    def __init__(self, n_classes: int, **kwargs: Any):
        kwargs.setdefault("name", "jaccard")
        super().__init__(n_classes, **kwargs)

    def per_sample(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        tp, fp, fn = self.counts(y_true, y_pred)
        s = self.smooth
        return 1.0 - self.class_mean((tp + s) / (tp + fp + fn + s))


@keras.saving.register_keras_serializable(package="miscore")
class FocalKerasLoss(SegmentationLoss):
    """``mean_voxels -sum_c w_c y_c (1 - p_c) ** gamma log p_c`` (Lin et al. 2017)."""

    def __init__(self, n_classes: int, gamma: float = 2.0, **kwargs: Any):
        kwargs.setdefault("name", "focal")
        super().__init__(n_classes, **kwargs)
        self.gamma = float(gamma)

    def per_sample(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return self.cross_entropy(y_true, y_pred, gamma=self.gamma)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gamma": self.gamma}
