"""Training augmentations: spatial transforms composed into one map, intensity changes.

Spatial (``spatial.py``): flip, rotate90, rotate, scale, shift, elastic. Each draws a
coordinate map; ``miscore.pipeline.augmenting.augment_sample`` composes consecutive ones and
interpolates once (flips and 90-degree turns alone stay views).
Intensity (``intensity.py``): brightness, intensity_shift, contrast, gamma, gaussian_noise,
gaussian_blur, low_resolution. They change the image in place, never the label.
"""

from __future__ import annotations

from typing import Any

import miscore
from miscore_augment.defaults import (
    DEFAULT_AUGMENTATION,
    default_augmentation,
    planned_augmentation,
    planned_reason,
)
from miscore_augment.intensity import (
    INTENSITY,
    Brightness,
    Contrast,
    Gamma,
    GaussianBlur,
    GaussianNoise,
    IntensityShift,
    LowResolution,
)
from miscore_augment.spatial import SPATIAL, Elastic, Flip, Rotate, Rotate90, Scale, Shift

__all__ = [
    "DEFAULT_AUGMENTATION",
    "Brightness",
    "Contrast",
    "Elastic",
    "Flip",
    "Gamma",
    "GaussianBlur",
    "GaussianNoise",
    "IntensityShift",
    "LowResolution",
    "Rotate",
    "Rotate90",
    "Scale",
    "Shift",
    "default_augmentation",
    "planned_augmentation",
]


@miscore.hookimpl
def miscore_register_augmentations() -> list[type[miscore.Augmentation]]:
    return [*SPATIAL, *INTENSITY]


@miscore.hookimpl(trylast=True)
def miscore_defaults() -> dict[str, Any]:
    return {"augmentation": default_augmentation()}


@miscore.hookimpl(trylast=True)
def miscore_plan_choices(ndim: int, thick_axis: int | None) -> dict[str, Any]:
    return {
        "augmentation": planned_augmentation(ndim, thick_axis),
        "reasons": {"augmentation": planned_reason(ndim, thick_axis)},
    }
