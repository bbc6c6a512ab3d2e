"""Volumes of the masks in millilitres, from the voxel spacing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

import miscore


def volume_ml(mask: npt.NDArray[np.bool_], spacing: Sequence[float]) -> float:
    """Volume of ``mask`` in ml (cm³): voxel count times the voxel volume in mm³ / 1000.

    For a 2D mask the voxel is ``spacing[0] * spacing[1] * 1 mm``.
    """
    voxel_mm3 = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    return int(np.count_nonzero(mask)) * voxel_mm3 / 1000.0


class VolumePredicted(miscore.Metric):
    """Volume of the predicted mask in ml."""

    name = "volume_pred_ml"

    def compute(
        self,
        prediction: npt.NDArray[np.bool_],
        truth: npt.NDArray[np.bool_],
        spacing: Sequence[float],
    ) -> float:
        return volume_ml(prediction, spacing)


class VolumeTrue(miscore.Metric):
    """Volume of the truth mask in ml."""

    name = "volume_true_ml"

    def compute(
        self,
        prediction: npt.NDArray[np.bool_],
        truth: npt.NDArray[np.bool_],
        spacing: Sequence[float],
    ) -> float:
        return volume_ml(truth, spacing)


class VolumeDifference(miscore.Metric):
    """Absolute volume difference |V(P) - V(T)| in ml."""

    name = "volume_diff_ml"
    higher_is_better = False

    def compute(
        self,
        prediction: npt.NDArray[np.bool_],
        truth: npt.NDArray[np.bool_],
        spacing: Sequence[float],
    ) -> float:
        return abs(volume_ml(prediction, spacing) - volume_ml(truth, spacing))
