"""Evaluation metrics per case and class: overlap, surface distances, volumes.

Every metric is ``compute(prediction, truth, spacing) -> float`` on two boolean masks of one
class, with the voxel spacing in mm per array axis. Definitions and the empty-mask rules are
in docs/metrics.md.
"""

from __future__ import annotations

from typing import Any

import miscore
from miscore_metrics.overlap import Confusion, Dice, IoU, Precision, Recall, Specificity
from miscore_metrics.surface import (
    AverageSymmetricSurfaceDistance,
    HausdorffDistance,
    HausdorffDistance95,
    NormalizedSurfaceDice,
    SurfaceDistances,
    clear_cache,
    compute_surface_distances,
    surface_distances,
)
from miscore_metrics.volumes import VolumeDifference, VolumePredicted, VolumeTrue, volume_ml

__version__ = miscore.__version__

METRICS: list[type[miscore.Metric]] = [
    Dice,
    IoU,
    Precision,
    Recall,
    Specificity,
    HausdorffDistance95,
    HausdorffDistance,
    AverageSymmetricSurfaceDistance,
    NormalizedSurfaceDice,
    VolumePredicted,
    VolumeTrue,
    VolumeDifference,
]


@miscore.hookimpl
def miscore_register_metrics() -> list[type[miscore.Metric]]:
    return list(METRICS)


__all__ = [
    "METRICS",
    "AverageSymmetricSurfaceDistance",
    "Confusion",
    "Dice",
    "HausdorffDistance",
    "HausdorffDistance95",
    "IoU",
    "NormalizedSurfaceDice",
    "Precision",
    "Recall",
    "Specificity",
    "SurfaceDistances",
    "VolumeDifference",
    "VolumePredicted",
    "VolumeTrue",
    "clear_cache",
    "compute_surface_distances",
    "surface_distances",
    "volume_ml",
]


#: the columns of a report when none are asked for (``miscore evaluate``, ``miscore cv``)
DEFAULT_METRICS: tuple[str, ...] = (
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "hd95",
    "assd",
    "nsd",
    "volume_pred_ml",
    "volume_true_ml",
)


@miscore.hookimpl(trylast=True)
def miscore_defaults() -> dict[str, Any]:
    return {"metrics": list(DEFAULT_METRICS)}
