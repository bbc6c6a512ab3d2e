"""Postprocessors for ``inference.postprocessing``: label map in, label map out.

Each works per foreground class on the spatial axes of the prediction (``(*spatial, 1)``
class ids), with face connectivity, and never changes a voxel of another class.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import numpy as np
from pydantic import Field, model_validator

import miscore

Classes = list[Annotated[int, Field(ge=1)]] | None

CLASSES_HELP = "foreground class ids to change; None: every foreground class"


def _classes(chosen: list[int] | None, n_classes: int) -> list[int]:
    """The listed classes, or every foreground class of ``n_classes`` (background included)."""
    return list(chosen) if chosen is not None else list(range(1, max(n_classes, 2)))


class FillHolesParams(miscore.Params):
    """Parameters of hole filling."""

    classes: Classes = Field(None, description=CLASSES_HELP)
    slice_axis: int | None = Field(
        None,
        ge=0,
        le=2,
        description="fill the holes of each 2D slice along this axis (holes open in 3D); "
        "None: only holes enclosed in 3D",
    )


class FillHoles(miscore.Postprocessor):
    """Fills background enclosed by a class with that class (scipy ``binary_fill_holes``)."""

    name = "fill_holes"
    Params: ClassVar[type[miscore.Params]] = FillHolesParams

    def apply(self, prediction: miscore.Volume, n_classes: int) -> miscore.Volume:
        from scipy import ndimage

        params = self.params
        assert isinstance(params, FillHolesParams)
        label = np.asarray(prediction.array[..., 0])
        out = label.copy()
        axis = params.slice_axis
        if axis is not None and axis >= label.ndim:
            raise miscore.InputError(
                f"fill_holes.slice_axis {axis}: the prediction has {label.ndim} spatial axes"
            )
        for class_id in _classes(params.classes, n_classes):
            mask = label == class_id
            if not mask.any():
                continue
            if axis is None:
                filled = ndimage.binary_fill_holes(mask)
            else:
                moved = np.moveaxis(mask, axis, 0)
                filled = np.moveaxis(
                    np.stack([ndimage.binary_fill_holes(s) for s in moved]), 0, axis
                )
            out[filled & (label == 0)] = class_id
        return prediction.with_array(out[..., None])


class RemoveSmallParams(miscore.Params):
    """Parameters of small-component removal: give ``min_voxels`` or ``min_mm3``."""

    min_voxels: int | None = Field(
        None, ge=1, description="components with fewer voxels become background"
    )
    min_mm3: float | None = Field(
        None, gt=0.0, description="components smaller than this volume (mm^3) become background"
    )
    classes: Classes = Field(None, description=CLASSES_HELP)

    @model_validator(mode="after")
    def _one_size(self) -> RemoveSmallParams:
        if (self.min_voxels is None) == (self.min_mm3 is None):
            raise ValueError("give one of min_voxels and min_mm3")
        return self


class RemoveSmall(miscore.Postprocessor):
    """Turns the connected components of a class smaller than a size into background."""

    name = "remove_small"
    Params: ClassVar[type[miscore.Params]] = RemoveSmallParams

    def apply(self, prediction: miscore.Volume, n_classes: int) -> miscore.Volume:
        from scipy import ndimage

        params = self.params
        assert isinstance(params, RemoveSmallParams)
        label = np.asarray(prediction.array[..., 0])
        if params.min_voxels is not None:
            smallest = float(params.min_voxels)
        else:
            assert params.min_mm3 is not None
            smallest = params.min_mm3 / float(np.prod(prediction.spacing))
        out = label.copy()
        for class_id in _classes(params.classes, n_classes):
            components, count = ndimage.label(label == class_id)
            if not count:
                continue
            sizes = np.bincount(components.ravel())
            small = np.flatnonzero(sizes < smallest)
            small = small[small > 0]  # 0 is everything outside the class
            out[np.isin(components, small)] = 0
        return prediction.with_array(out[..., None])
