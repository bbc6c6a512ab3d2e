"""Grid steps that interpolate: ``resample`` (to a target spacing) and ``resize`` (to a shape).

Geometry: both keep the volume's physical extent in place. A grid of ``n`` voxels becomes one
of ``m`` voxels covering the same millimetres, so the new spacing is ``spacing * n / m`` and
new voxel ``j`` samples old index ``(j + 0.5) * n / m - 0.5`` (scipy's ``grid_mode``; "align
corners = False"). The affine is updated with the same map, so every world position stays put
and the prediction, interpolated back with the inverse map, lands on the original grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

import miscore
from miscore import Case, Volume
from miscore_preprocessing.derive import (
    check_prediction_grid,
    derive_case,
    grid_state,
    is_class_ids,
)


def extent_affine(
    affine: npt.NDArray[np.float64], in_shape: Sequence[int], out_shape: Sequence[int]
) -> npt.NDArray[np.float64]:
    """The affine of a grid of ``out_shape`` voxels covering the extent of ``in_shape``."""
    scale = np.ones(3)
    scale[: len(in_shape)] = np.asarray(in_shape, float) / np.asarray(out_shape, float)
    voxel_map = np.eye(4)
    voxel_map[:3, :3] = np.diag(scale)
    voxel_map[:3, 3] = 0.5 * scale - 0.5
    out: npt.NDArray[np.float64] = affine @ voxel_map
    return out


def _zoom_axes(
    array: npt.NDArray[Any], out_shape: Sequence[int], axes: Sequence[int], order: int
) -> npt.NDArray[Any]:
    """Interpolate the spatial ``axes`` of a channels-last array to ``out_shape`` sizes."""
    from scipy import ndimage

    spatial = array.shape[:-1]
    target = [spatial[i] if i not in axes else out_shape[i] for i in range(len(spatial))]
    if list(target) == list(spatial):
        return array
    scale = np.asarray(spatial, float) / np.asarray(target, float)
    offset = 0.5 * scale - 0.5
    dtype = array.dtype if order == 0 else np.float32
    out = np.empty((*target, array.shape[-1]), dtype=dtype)
    source = array if order == 0 else array.astype(np.float32, copy=False)
    for c in range(array.shape[-1]):
        ndimage.affine_transform(
            source[..., c],
            scale,
            offset=offset,
            output_shape=tuple(target),
            output=out[..., c],
            order=order,
            mode="nearest",
        )
    return out


def zoom_array(
    array: npt.NDArray[Any],
    out_shape: Sequence[int],
    order: int,
    thick_axis: int | None = None,
    order_thick: int = 0,
) -> npt.NDArray[Any]:
    """Interpolate ``(*spatial, C)`` to ``out_shape`` keeping the extent aligned.

    Args:
        order: spline order (0 nearest, 1 linear, 3 cubic B-spline) for the in-plane axes.
        thick_axis: for anisotropic data, the axis of thick slices: interpolated separately
            with ``order_thick`` (nnU-Net's "separate z"); None: every axis with ``order``.
    """
    n = array.ndim - 1
    if thick_axis is None:
        return _zoom_axes(array, out_shape, range(n), order)
    in_plane = [i for i in range(n) if i != thick_axis]
    return _zoom_axes(
        _zoom_axes(array, out_shape, in_plane, order), out_shape, [thick_axis], order_thick
    )


def _invert(step: str, prediction: Volume, state: dict[str, Any], order_probs: int) -> Volume:
    """Interpolate a prediction from the step's output grid back to its input grid."""
    check_prediction_grid(step, prediction, state)
    shape = [int(n) for n in state["in_shape"]]
    order = 0 if is_class_ids(prediction) else order_probs
    array = zoom_array(prediction.array, shape, order)
    if not is_class_ids(prediction):
        array = array.astype(prediction.array.dtype, copy=False)
    return Volume(array, np.asarray(state["in_affine"], float), dict(prediction.meta))


def _apply(
    case: Case,
    out_shape: Sequence[int],
    order: int,
    thick_axis: int | None = None,
    order_thick: int = 0,
) -> tuple[Volume, Volume | None]:
    image = case.image
    affine = extent_affine(image.affine, image.spatial_shape, out_shape)
    out = zoom_array(image.array, out_shape, order, thick_axis, order_thick)
    new_image = Volume(out, affine, dict(image.meta))
    new_label = None
    if case.label is not None:
        label_array = zoom_array(case.label.array, out_shape, 0)
        new_label = Volume(label_array, affine.copy(), dict(case.label.meta))
    return new_image, new_label


class ResampleParams(miscore.Params):
    spacing: list[float] = Field(
        description="target voxel size in mm per spatial array axis, e.g. [1.0, 1.0, 3.0]",
        min_length=2,
        max_length=3,
    )
    order: Literal[1, 3] = Field(
        3, description="image interpolation: 1 linear, 3 cubic B-spline (labels: nearest)"
    )
    anisotropy_threshold: float = Field(
        3.0, gt=1, description="a spacing ratio (largest/smallest) above this is anisotropic"
    )
    separate_thick_axis: bool = Field(
        True,
        description="anisotropic data: interpolate in-plane with 'order' and across the thick "
        "slices with 'order_thick' (nnU-Net's separate z); False: all axes alike",
    )
    order_thick: Literal[0, 1] = Field(
        0, description="interpolation across thick slices (0 nearest, as nnU-Net)"
    )


def _thick_axis(spacing: Sequence[float], threshold: float) -> int | None:
    values = np.asarray(spacing, float)
    if values.max() / values.min() > threshold:
        return int(np.argmax(values))
    return None


class Resample(miscore.Subfunction):
    """Resample to a target voxel spacing (image linear or B-spline, label nearest)."""

    name = "resample"
    Params = ResampleParams
    params: ResampleParams

    def target_shape(self, volume: Volume) -> list[int]:
        """The voxel count per axis that gives (about) the target spacing."""
        target = self.params.spacing[: volume.ndim]
        if len(target) != volume.ndim:
            raise miscore.InputError(
                f"resample.spacing has {len(self.params.spacing)} values; the image has "
                f"{volume.ndim} spatial axes"
            )
        return [
            max(1, round(n * s / t))
            for n, s, t in zip(volume.spatial_shape, volume.spacing, target, strict=True)
        ]

    def preprocess(self, case: Case, training: bool) -> Case:
        shape = self.target_shape(case.image)
        thick = None
        if self.params.separate_thick_axis:
            thick = _thick_axis(case.image.spacing, self.params.anisotropy_threshold)
            if thick is None:
                thick = _thick_axis(
                    self.params.spacing[: case.image.ndim], self.params.anisotropy_threshold
                )
        image, label = _apply(case, shape, self.params.order, thick, self.params.order_thick)
        out = derive_case(case, image, label)
        self.set_state(out, grid_state(case.image, image, thick_axis=thick))
        return out

    def postprocess(self, prediction: Volume, case: Case) -> Volume:
        return _invert(self.state_key, prediction, self.get_state(case), order_probs=1)


class ResizeParams(miscore.Params):
    shape: list[int] = Field(
        description="output spatial shape in voxels, e.g. [128, 128, 64]",
        min_length=2,
        max_length=3,
    )
    order: Literal[0, 1, 3] = Field(
        1, description="image interpolation: 0 nearest, 1 linear, 3 cubic B-spline"
    )


class Resize(miscore.Subfunction):
    """Resize to a fixed shape (the extent stays, the spacing changes; label nearest)."""

    name = "resize"
    Params = ResizeParams
    params: ResizeParams

    def preprocess(self, case: Case, training: bool) -> Case:
        if len(self.params.shape) != case.image.ndim:
            raise miscore.InputError(
                f"resize.shape {self.params.shape} has {len(self.params.shape)} axes; the image "
                f"has {case.image.ndim} spatial axes"
            )
        if any(n < 1 for n in self.params.shape):
            raise miscore.InputError(f"resize.shape must be positive; got {self.params.shape}")
        image, label = _apply(case, self.params.shape, self.params.order)
        out = derive_case(case, image, label)
        self.set_state(out, grid_state(case.image, image))
        return out

    def postprocess(self, prediction: Volume, case: Case) -> Volume:
        return _invert(self.state_key, prediction, self.get_state(case), order_probs=1)
