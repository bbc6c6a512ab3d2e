"""Segmentation losses: Tversky, Dice, cross-entropy combinations, focal.

Losses: ``tversky`` (the default), ``dice``, ``dice_classwise``, ``dice_ce``, ``tversky_ce``,
``focal``, ``focal_tversky``, ``jaccard``. ``build(n_classes)`` returns a serializable
``keras.losses.Loss``; Keras is imported only there. See docs/losses.md.
"""

from __future__ import annotations

from typing import Any

import miscore
from miscore_losses.components import (
    ClasswiseDiceLoss,
    DiceCELoss,
    DiceLoss,
    FocalLoss,
    FocalTverskyLoss,
    JaccardLoss,
    SegmentationLossComponent,
    TverskyCELoss,
    TverskyLoss,
)

LOSSES: list[type[miscore.Loss]] = [
    TverskyLoss,
    DiceLoss,
    ClasswiseDiceLoss,
    DiceCELoss,
    TverskyCELoss,
    FocalLoss,
    FocalTverskyLoss,
    JaccardLoss,
]

__all__ = [
    "LOSSES",
    "ClasswiseDiceLoss",
    "DiceCELoss",
    "DiceLoss",
    "FocalLoss",
    "FocalTverskyLoss",
    "JaccardLoss",
    "SegmentationLossComponent",
    "TverskyCELoss",
    "TverskyLoss",
]


@miscore.hookimpl
def miscore_register_losses() -> list[type[miscore.Loss]]:
    return list(LOSSES)


@miscore.hookimpl(trylast=True)
def miscore_defaults() -> dict[str, Any]:
    return {"loss": {"name": "tversky"}}


@miscore.hookimpl(trylast=True)
def miscore_plan_choices() -> dict[str, Any]:
    return {
        "loss": {"name": "dice_ce"},
        "reasons": {"model.loss": "Dice + cross-entropy, nnU-Net's loss"},
    }
