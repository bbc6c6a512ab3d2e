"""Training augmentations: spatial transforms composed into one map, intensity changes.

Spatial (``spatial.py``): flip, rotate90, rotate, scale, shift, elastic. Each draws a
coordinate map; ``miscore.augmenting.augment_sample`` composes consecutive ones and
interpolates once (flips and 90-degree turns alone stay views).
Intensity (``intensity.py``): brightness, intensity_shift, contrast, gamma, gaussian_noise,
gaussian_blur, low_resolution. They change the image in place, never the label.
"""

from __future__ import annotations

import miscore
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
]


@miscore.hookimpl
def miscore_register_augmentations() -> list[type[miscore.Augmentation]]:
    return [*SPATIAL, *INTENSITY]
