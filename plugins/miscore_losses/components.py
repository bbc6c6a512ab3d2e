"""The loss components configs name; ``build(n_classes)`` returns the Keras loss.

``n_classes > 1``: the model ends in a softmax over ``n_classes`` channels and targets are
one-hot (or integer labels with one channel). ``n_classes == 1``: the model ends in one
sigmoid channel and targets are 0/1. Keras is imported only in ``build``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

import miscore

ClassWeights = list[Annotated[float, Field(ge=0.0)]] | None

CLASS_WEIGHTS_HELP = (
    "weight per class, background first (binary sigmoid models: [background, foreground]); "
    "None: all 1"
)


class CrossEntropyParams(miscore.Params):
    """Parameters of the voxel-wise losses."""

    class_weights: ClassWeights = Field(None, description=CLASS_WEIGHTS_HELP)


class OverlapParams(CrossEntropyParams):
    """Parameters of the overlap (Dice-like) losses."""

    include_background: bool = Field(
        True, description="score the background class (channel 0) in the overlap term"
    )
    smooth: float = Field(
        1e-5, ge=0.0, description="added to numerator and denominator: empty classes score 1"
    )


class TverskyParams(OverlapParams):
    alpha: float = Field(0.3, ge=0.0, description="weight of false positives")
    beta: float = Field(0.7, ge=0.0, description="weight of false negatives")


class SegmentationLossComponent(miscore.Loss):
    """Shared ``build``: checks the class count and weights, then makes the Keras loss."""

    #: name of the class in ``miscore_losses.keras_losses``
    keras_class: str = ""

    def build(self, n_classes: int) -> Any:
        from miscore_losses import keras_losses

        self.check(n_classes)
        cls = getattr(keras_losses, self.keras_class)
        return cls(n_classes=n_classes, **self.params.model_dump())

    def custom_objects(self) -> dict[str, Any]:
        """The Keras loss class by its registered name, for ``keras.models.load_model``.

        Importing ``keras_losses`` registers the class globally as well.
        """
        import keras

        from miscore_losses import keras_losses

        cls = getattr(keras_losses, self.keras_class)
        return {keras.saving.get_registered_name(cls): cls}

    def check(self, n_classes: int) -> None:
        if n_classes < 1:
            raise miscore.InputError(f"loss {self.name}: n_classes is {n_classes}; need >= 1")
        weights = getattr(self.params, "class_weights", None)
        if weights is None:
            return
        channels = max(n_classes, 2)
        if len(weights) != channels:
            raise miscore.InputError(
                f"loss {self.name}: class_weights has {len(weights)} entries but the model has "
                f"{channels} classes (binary models: [background, foreground]); give one weight "
                "per class"
            )
        scored = weights[1:] if not getattr(self.params, "include_background", True) else weights
        if sum(scored) <= 0:
            raise miscore.InputError(
                f"loss {self.name}: class_weights {weights} weigh every scored class 0; give at "
                "least one class a positive weight"
            )


class TverskyLoss(SegmentationLossComponent):
    """Tversky loss, the default: Dice with separate weights for false positives and negatives.

    ``1 - mean_c (TP + s) / (TP + alpha FP + beta FN + s)``; alpha = beta = 0.5 is Dice.
    """

    name = "tversky"
    keras_class = "TverskyKerasLoss"

    class Params(TverskyParams):
        pass


class FocalTverskyLoss(SegmentationLossComponent):
    """Focal Tversky loss: ``mean_c (1 - T_c) ** gamma`` to focus on poorly segmented classes."""

    name = "focal_tversky"
    keras_class = "FocalTverskyKerasLoss"

    class Params(TverskyParams):
        gamma: float = Field(0.75, gt=0.0, description="exponent of (1 - Tversky index)")


class TverskyCELoss(SegmentationLossComponent):
    """Tversky loss plus weighted cross-entropy."""

    name = "tversky_ce"
    keras_class = "TverskyCEKerasLoss"

    class Params(TverskyParams):
        ce_weight: float = Field(1.0, ge=0.0, description="weight of the cross-entropy term")


class DiceLoss(SegmentationLossComponent):
    """Soft Dice loss of all classes pooled (voxels and classes summed before the ratio)."""

    name = "dice"
    keras_class = "DiceKerasLoss"

    class Params(OverlapParams):
        pass


class ClasswiseDiceLoss(SegmentationLossComponent):
    """Class-wise soft Dice loss: the mean of per-class Dice losses, every class equal."""

    name = "dice_classwise"
    keras_class = "ClasswiseDiceKerasLoss"

    class Params(OverlapParams):
        pass


class DiceCELoss(SegmentationLossComponent):
    """Class-wise soft Dice loss plus weighted cross-entropy (the nnU-Net loss)."""

    name = "dice_ce"
    keras_class = "DiceCEKerasLoss"

    class Params(OverlapParams):
        ce_weight: float = Field(1.0, ge=0.0, description="weight of the cross-entropy term")


class JaccardLoss(SegmentationLossComponent):
    """Jaccard (soft IoU) loss: ``1 - mean_c (TP + s) / (TP + FP + FN + s)``."""

    name = "jaccard"
    keras_class = "JaccardKerasLoss"

    class Params(OverlapParams):
        pass


class FocalLoss(SegmentationLossComponent):
    """Focal loss: cross-entropy scaled by ``(1 - p) ** gamma`` to focus on hard voxels."""

    name = "focal"
    keras_class = "FocalKerasLoss"

    class Params(CrossEntropyParams):
        gamma: float = Field(2.0, ge=0.0, description="focusing exponent (0: cross-entropy)")
