"""Grid steps that add or remove whole voxels: ``pad`` and ``crop_foreground``.

Index operations only (no interpolation): the inverse is exact. The affine's origin moves by
the voxels added or removed, so world positions stay put.
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
    background_fill,
    check_prediction_grid,
    derive_case,
    grid_state,
)


def shifted_affine(
    affine: npt.NDArray[np.float64], start: Sequence[int]
) -> npt.NDArray[np.float64]:
    """The affine of a grid whose voxel 0 is voxel ``start`` of the grid of ``affine``."""
    shift = np.eye(4)
    shift[: len(start), 3] = start
    out: npt.NDArray[np.float64] = affine @ shift
    return out


def _crop(volume: Volume, start: Sequence[int], stop: Sequence[int]) -> Volume:
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    return Volume(volume.array[box].copy(), shifted_affine(volume.affine, start), dict(volume.meta))


class PadParams(miscore.Params):
    shape: list[int] | None = Field(
        None, description="minimum spatial shape; smaller axes are padded up to it"
    )
    depth: int | None = Field(
        None,
        ge=0,
        le=10,
        description="pad every axis to a multiple of 2**depth (a U-Net of that depth)",
    )
    mode: Literal["constant", "edge"] = Field(
        "constant", description="image padding: a constant value, or the edge voxels repeated"
    )
    value: float = Field(0.0, description="image value of padded voxels in 'constant' mode")


class Pad(miscore.Subfunction):
    """Pad to a minimum shape and/or a multiple of 2**depth (label padded with 0)."""

    name = "pad"
    Params = PadParams
    params: PadParams

    def target_shape(self, shape: Sequence[int]) -> list[int]:
        target = list(shape)
        if self.params.shape is not None:
            if len(self.params.shape) != len(shape):
                raise miscore.InputError(
                    f"pad.shape {self.params.shape} has {len(self.params.shape)} axes; the image "
                    f"has {len(shape)} spatial axes"
                )
            target = [max(n, m) for n, m in zip(target, self.params.shape, strict=True)]
        if self.params.depth is not None:
            k = 2**self.params.depth
            target = [-(-n // k) * k for n in target]
        return target

    def preprocess(self, case: Case, training: bool) -> Case:
        image = case.image
        shape = image.spatial_shape
        target = self.target_shape(shape)
        before = [(t - n) // 2 for n, t in zip(shape, target, strict=True)]
        widths = [(b, t - n - b) for b, n, t in zip(before, shape, target, strict=True)]
        widths.append((0, 0))
        if self.params.mode == "edge":
            array = np.pad(image.array, widths, mode="edge")
        else:
            array = np.pad(image.array, widths, constant_values=self.params.value)
        affine = shifted_affine(image.affine, [-b for b in before])
        new_image = Volume(array, affine, dict(image.meta))
        new_label = None
        if case.label is not None:
            new_label = Volume(
                np.pad(case.label.array, widths), affine.copy(), dict(case.label.meta)
            )
        out = derive_case(case, new_image, new_label)
        self.set_state(out, grid_state(image, new_image, start=before))
        return out

    def postprocess(self, prediction: Volume, case: Case) -> Volume:
        state = self.get_state(case)
        check_prediction_grid(self.state_key, prediction, state)
        box = tuple(slice(b, b + n) for b, n in zip(state["start"], state["in_shape"], strict=True))
        return Volume(
            prediction.array[box].copy(),
            np.asarray(state["in_affine"], float),
            dict(prediction.meta),
        )


class CropForegroundParams(miscore.Params):
    margin: int = Field(0, ge=0, description="voxels kept around the bounding box on each side")
    background: float = Field(
        0.0,
        description="image value outside the body; a voxel is foreground when any channel "
        "differs from it",
    )


def foreground_box(
    image: Volume, background: float, margin: int
) -> tuple[list[int], list[int]] | None:
    """Start and stop of the box around voxels that differ from ``background`` (None: none)."""
    mask = np.any(image.array != background, axis=-1)
    if not mask.any():
        return None
    start, stop = [], []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        start.append(max(0, int(hits[0]) - margin))
        stop.append(min(mask.shape[axis], int(hits[-1]) + 1 + margin))
    return start, stop


class CropForeground(miscore.Subfunction):
    """Crop to the bounding box of the image's non-background voxels, plus a margin."""

    name = "crop_foreground"
    Params = CropForegroundParams
    params: CropForegroundParams

    def preprocess(self, case: Case, training: bool) -> Case:
        image = case.image
        box = foreground_box(image, self.params.background, self.params.margin)
        start, stop = box if box is not None else ([0] * image.ndim, list(image.spatial_shape))
        new_image = _crop(image, start, stop)
        new_label = _crop(case.label, start, stop) if case.label is not None else None
        out = derive_case(case, new_image, new_label)
        self.set_state(out, grid_state(image, new_image, start=start))
        return out

    def postprocess(self, prediction: Volume, case: Case) -> Volume:
        """Put the prediction back in place; outside the box is background."""
        state = self.get_state(case)
        check_prediction_grid(self.state_key, prediction, state)
        shape = [int(n) for n in state["in_shape"]]
        array: npt.NDArray[Any] = np.empty((*shape, prediction.channels), prediction.array.dtype)
        array[...] = background_fill(prediction)
        box = tuple(
            slice(b, b + n) for b, n in zip(state["start"], prediction.spatial_shape, strict=True)
        )
        array[box] = prediction.array
        return Volume(array, np.asarray(state["in_affine"], float), dict(prediction.meta))
