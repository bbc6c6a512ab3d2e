"""Intensity steps: z-score, min-max, [-1, 1] scaling, clipping and CT windows.

They change image values only, per channel, and leave the grid and the label alone, so their
``postprocess`` is the identity. Images come out as float32.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator, model_validator

import miscore
from miscore import Case, Volume
from miscore_preprocessing.derive import derive_case, per_channel

Mask = Literal["none", "nonzero"]
MASK_DESCRIPTION = (
    "'nonzero': statistics from voxels where any channel is nonzero, and voxels outside that "
    "region set to 0 (for images cropped to the body, as nnU-Net does); 'none': every voxel"
)


def _nonzero_mask(image: Volume) -> npt.NDArray[np.bool_] | None:
    mask = np.any(image.array != 0, axis=-1)
    return mask if mask.any() else None


def _channels(
    image: Volume, mask: Mask
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_] | None]:
    """A float32 copy of the image array and the region statistics come from (None: all)."""
    array = image.array.astype(np.float32, copy=True)
    return array, (_nonzero_mask(image) if mask == "nonzero" else None)


def _values(channel: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_] | None) -> Any:
    return channel[mask] if mask is not None else channel


class _IntensityStep(miscore.Subfunction):
    """Shared flow: transform the image's channels, keep label and grid."""

    def transform(self, image: Volume) -> npt.NDArray[np.float32]:
        raise NotImplementedError

    def preprocess(self, case: Case, training: bool) -> Case:
        return derive_case(case, case.image.with_array(self.transform(case.image)), case.label)


class ZScoreParams(miscore.Params):
    mean: float | list[float] | None = Field(
        None,
        description="fixed mean per channel (e.g. the dataset's foreground mean from "
        "'miscore plan'); None: each case's own",
    )
    std: float | list[float] | None = Field(
        None, description="fixed standard deviation per channel (> 0); None: each case's own"
    )
    mask: Mask = Field("none", description=MASK_DESCRIPTION)

    @field_validator("std")
    @classmethod
    def _positive(cls, value: float | list[float] | None) -> float | list[float] | None:
        values = [value] if isinstance(value, int | float) else value or []
        if any(v <= 0 for v in values):
            raise ValueError("a standard deviation must be > 0")
        return value


class ZScore(_IntensityStep):
    """Z-score normalisation per channel: (x - mean) / std."""

    name = "zscore"
    Params = ZScoreParams
    params: ZScoreParams

    def transform(self, image: Volume) -> npt.NDArray[np.float32]:
        array, mask = _channels(image, self.params.mask)
        means = per_channel(self.params.mean, image.channels, "zscore.mean")
        stds = per_channel(self.params.std, image.channels, "zscore.std")
        for c in range(image.channels):
            values = _values(array[..., c], mask)
            mean = float(values.mean()) if means[c] is None else float(means[c])
            std = float(values.std()) if stds[c] is None else float(stds[c])
            array[..., c] = (array[..., c] - mean) / max(std, 1e-8)
        if mask is not None:
            array[~mask] = 0
        return array


class RangeParams(miscore.Params):
    mask: Mask = Field("none", description=MASK_DESCRIPTION)


def _unit_range(image: Volume, mask: Mask) -> npt.NDArray[np.float32]:
    array, region = _channels(image, mask)
    for c in range(image.channels):
        values = _values(array[..., c], region)
        low, high = float(values.min()), float(values.max())
        span = high - low
        array[..., c] = (array[..., c] - low) / span if span > 0 else 0.0
    if region is not None:
        array[~region] = 0
    return array


class MinMax(_IntensityStep):
    """Min-max normalisation per channel to [0, 1]."""

    name = "minmax"
    Params = RangeParams
    params: RangeParams

    def transform(self, image: Volume) -> npt.NDArray[np.float32]:
        return _unit_range(image, self.params.mask)


class Scale(_IntensityStep):
    """Min-max normalisation per channel to [-1, 1]."""

    name = "scale"
    Params = RangeParams
    params: RangeParams

    def transform(self, image: Volume) -> npt.NDArray[np.float32]:
        array = _unit_range(image, self.params.mask)
        region = _nonzero_mask(image) if self.params.mask == "nonzero" else None
        array = array * 2 - 1
        if region is not None:
            array[~region] = 0
        return array


class ClipParams(miscore.Params):
    min: float | list[float] | None = Field(
        None, description="fixed lower bound (one, or one per channel); None: the percentile"
    )
    max: float | list[float] | None = Field(
        None, description="fixed upper bound (one, or one per channel); None: the percentile"
    )
    lower_percentile: float | None = Field(
        0.5, ge=0, le=100, description="per-case lower percentile used when min is not given"
    )
    upper_percentile: float | None = Field(
        99.5, ge=0, le=100, description="per-case upper percentile used when max is not given"
    )
    mask: Mask = Field("none", description="where percentiles are computed; " + MASK_DESCRIPTION)


class Clip(_IntensityStep):
    """Clip intensities per channel to fixed bounds or to per-case percentiles."""

    name = "clip"
    Params = ClipParams
    params: ClipParams

    def transform(self, image: Volume) -> npt.NDArray[np.float32]:
        array, region = _channels(image, self.params.mask)
        lows = per_channel(self.params.min, image.channels, "clip.min")
        highs = per_channel(self.params.max, image.channels, "clip.max")
        for c in range(image.channels):
            values = _values(array[..., c], region)
            low = lows[c]
            if low is None and self.params.lower_percentile is not None:
                low = float(np.percentile(values, self.params.lower_percentile))
            high = highs[c]
            if high is None and self.params.upper_percentile is not None:
                high = float(np.percentile(values, self.params.upper_percentile))
            if low is not None and high is not None and low > high:
                raise miscore.InputError(
                    f"clip: lower bound {low} is above upper bound {high} for channel {c}"
                )
            np.clip(array[..., c], low, high, out=array[..., c])
        return array


#: (centre, width) in Hounsfield units of common CT windows
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (50.0, 400.0),
    "stroke": (40.0, 40.0),
    "subdural": (75.0, 215.0),
}


class CtWindowParams(miscore.Params):
    preset: (
        Literal[
            "abdomen",
            "bone",
            "brain",
            "liver",
            "lung",
            "mediastinum",
            "soft_tissue",
            "stroke",
            "subdural",
        ]
        | None
    ) = Field(None, description="a named window; or give centre and width")
    center: float | None = Field(None, description="window centre (level) in HU")
    width: float | None = Field(None, gt=0, description="window width in HU")
    rescale: bool = Field(True, description="map the window to [0, 1]; False: clip only (HU)")

    @model_validator(mode="after")
    def _one_window(self) -> CtWindowParams:
        if self.preset is None and (self.center is None or self.width is None):
            raise ValueError("give a preset, or both center and width")
        if self.preset is not None and (self.center is not None or self.width is not None):
            raise ValueError("give a preset or center/width, not both")
        return self


class CtWindow(_IntensityStep):
    """CT window: clip Hounsfield units to centre +- width/2, optionally mapped to [0, 1]."""

    name = "ct_window"
    Params = CtWindowParams
    params: CtWindowParams

    def window(self) -> tuple[float, float]:
        """The (low, high) HU bounds of the window."""
        if self.params.preset is not None:
            center, width = CT_WINDOWS[self.params.preset]
        else:
            assert self.params.center is not None and self.params.width is not None
            center, width = self.params.center, self.params.width
        return center - width / 2, center + width / 2

    def transform(self, image: Volume) -> npt.NDArray[np.float32]:
        low, high = self.window()
        array = np.clip(image.array.astype(np.float32), low, high)
        if self.params.rescale:
            array = (array - low) / (high - low)
        return array.astype(np.float32, copy=False)
