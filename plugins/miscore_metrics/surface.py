"""Surface-distance metrics: HD95, HD, ASSD and normalised surface Dice.

The surface of a mask is its boundary voxels: the mask minus its binary erosion with a
connectivity-1 structure (voxels on the array's edge count as boundary). Distances are
Euclidean in millimetres (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``)
from each boundary voxel of one mask to the nearest boundary voxel of the other, as in medpy.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

import miscore


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances (mm) from each boundary voxel of one mask to the other mask's boundary.

    Both arrays are empty when a mask is empty; ``empty`` says which ("both", "pred",
    "truth" or "").
    """

    pred_to_truth: npt.NDArray[np.float64]
    truth_to_pred: npt.NDArray[np.float64]
    empty: str

    @property
    def pooled(self) -> npt.NDArray[np.float64]:
        """Both directions in one array (the set medpy's hd95 and assd are taken over)."""
        return np.concatenate([self.pred_to_truth, self.truth_to_pred])


def check_spacing(mask: npt.NDArray[Any], spacing: Sequence[float]) -> tuple[float, ...]:
    """``spacing`` as floats, checked against the mask's number of axes."""
    values = tuple(float(s) for s in spacing)
    if len(values) != mask.ndim:
        raise miscore.InputError(
            f"spacing {values} has {len(values)} values for a mask with {mask.ndim} axes; "
            f"give one spacing (mm) per array axis"
        )
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise miscore.InputError(f"spacing {values} must be positive finite millimetres")
    return values


def _crop(union: npt.NDArray[np.bool_]) -> tuple[slice, ...]:
    """The bounding box of ``union`` grown by one voxel, clipped to the array.

    Exact for boundaries and distances: the margin voxels are outside both masks, so the
    erosion sees the same neighbours, and every boundary voxel lies inside the box.
    """
    box = []
    for axis in range(union.ndim):
        others = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=others))
        box.append(slice(max(int(hits[0]) - 1, 0), min(int(hits[-1]) + 2, union.shape[axis])))
    return tuple(box)


def boundary(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Boundary voxels: ``mask`` minus its erosion by the connectivity-1 structure."""
    from scipy.ndimage import binary_erosion, generate_binary_structure

    structure = generate_binary_structure(mask.ndim, 1)
    eroded = binary_erosion(mask, structure=structure, iterations=1, border_value=0)
    result: npt.NDArray[np.bool_] = mask & ~eroded
    return result


def compute_surface_distances(
    prediction: npt.NDArray[Any], truth: npt.NDArray[Any], spacing: Sequence[float]
) -> SurfaceDistances:
    """Distances in both directions between the boundaries of two masks (no cache)."""
    from scipy.ndimage import distance_transform_edt

    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise miscore.InputError(
            f"prediction mask shape {prediction.shape} differs from truth mask shape "
            f"{truth.shape}; resample one onto the other's grid first"
        )
    sampling = check_spacing(truth, spacing)
    has_pred, has_truth = bool(prediction.any()), bool(truth.any())
    none = np.zeros(0, dtype=np.float64)
    if not (has_pred and has_truth):
        empty = "both" if not (has_pred or has_truth) else ("pred" if has_truth else "truth")
        return SurfaceDistances(none, none, empty)
    box = _crop(prediction | truth)
    pred_border = boundary(prediction[box])
    truth_border = boundary(truth[box])
    to_truth = distance_transform_edt(~truth_border, sampling=sampling)
    to_pred = distance_transform_edt(~pred_border, sampling=sampling)
    return SurfaceDistances(
        np.asarray(to_truth[pred_border], dtype=np.float64),
        np.asarray(to_pred[truth_border], dtype=np.float64),
        "",
    )


# --- one-entry cache ----------------------------------------------------------------------
# hd95, assd and nsd of one (case, class) need the same two distance transforms, which are
# the whole cost (benchmarks/bench_metrics.py). The kernel's evaluate passes the same
# read-only mask objects to every metric, so the last result is kept, keyed on the identity
# of the two arrays through weak references (a freed mask's id may be reused; its weak
# reference then returns None, and the masks themselves are not kept alive). Only read-only
# arrays that own their memory are cached: their content cannot change behind our back.

_cache_lock = threading.Lock()
_cache: tuple[weakref.ref[Any], weakref.ref[Any], tuple[float, ...], SurfaceDistances] | None = None


def _frozen(array: npt.NDArray[Any]) -> bool:
    return isinstance(array, np.ndarray) and array.base is None and not array.flags.writeable


def surface_distances(
    prediction: npt.NDArray[Any], truth: npt.NDArray[Any], spacing: Sequence[float]
) -> SurfaceDistances:
    """``compute_surface_distances``, reusing the last result for the same read-only masks."""
    global _cache
    key = tuple(float(s) for s in spacing)
    cacheable = _frozen(prediction) and _frozen(truth)
    if cacheable:
        with _cache_lock:
            hit = _cache
        if hit is not None and hit[0]() is prediction and hit[1]() is truth and hit[2] == key:
            return hit[3]
    result = compute_surface_distances(prediction, truth, spacing)
    if cacheable:
        with _cache_lock:
            _cache = (weakref.ref(prediction), weakref.ref(truth), key, result)
    return result


def clear_cache() -> None:
    """Drop the cached distances."""
    global _cache
    with _cache_lock:
        _cache = None


# --- metrics ------------------------------------------------------------------------------


class DistanceParams(miscore.Params):
    empty_value: float | None = Field(
        None,
        description="value when exactly one mask is empty (e.g. the image diagonal in mm); "
        "None gives NaN",
    )


class _DistanceMetric(miscore.Metric):
    higher_is_better = False
    Params = DistanceParams

    def compute(
        self,
        prediction: npt.NDArray[np.bool_],
        truth: npt.NDArray[np.bool_],
        spacing: Sequence[float],
    ) -> float:
        distances = surface_distances(prediction, truth, spacing)
        if distances.empty == "both":
            return 0.0
        if distances.empty:
            assert isinstance(self.params, DistanceParams)
            value = self.params.empty_value
            return math.nan if value is None else float(value)
        return self.reduce(distances)

    def reduce(self, distances: SurfaceDistances) -> float:
        raise NotImplementedError


class HausdorffDistance95(_DistanceMetric):
    """95th percentile Hausdorff distance in mm (medpy's hd95: of both directions pooled)."""

    name = "hd95"

    def reduce(self, distances: SurfaceDistances) -> float:
        return float(np.percentile(distances.pooled, 95))


class HausdorffDistance(_DistanceMetric):
    """Hausdorff distance in mm: the largest boundary-to-boundary distance either way."""

    name = "hd"

    def reduce(self, distances: SurfaceDistances) -> float:
        return float(distances.pooled.max())


class AverageSymmetricSurfaceDistance(_DistanceMetric):
    """Average symmetric surface distance in mm: the mean of both directions pooled."""

    name = "assd"

    def reduce(self, distances: SurfaceDistances) -> float:
        return float(distances.pooled.mean())


class NormalizedSurfaceDice(miscore.Metric):
    """Normalised surface Dice: share of both boundaries within ``tolerance_mm`` of the other."""

    name = "nsd"

    class Params(miscore.Params):
        tolerance_mm: float = Field(
            1.0, ge=0.0, description="a boundary voxel within this distance (mm) counts as hit"
        )

    def compute(
        self,
        prediction: npt.NDArray[np.bool_],
        truth: npt.NDArray[np.bool_],
        spacing: Sequence[float],
    ) -> float:
        distances = surface_distances(prediction, truth, spacing)
        if distances.empty == "both":
            return 1.0
        if distances.empty:
            return 0.0
        assert isinstance(self.params, NormalizedSurfaceDice.Params)
        tolerance = self.params.tolerance_mm
        hits = np.count_nonzero(distances.pred_to_truth <= tolerance) + np.count_nonzero(
            distances.truth_to_pred <= tolerance
        )
        return float(hits) / (distances.pred_to_truth.size + distances.truth_to_pred.size)
