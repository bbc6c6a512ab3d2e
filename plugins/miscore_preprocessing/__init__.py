"""Preprocessing subfunctions: normalisation, clipping, CT windows, resampling, reorienting,
padding, resizing and foreground cropping, each with its inverse for predictions.

Modules by theme: ``normalization`` (intensity only), ``resampling`` (interpolating grid
changes), ``orientation`` (axis permutation/flips), ``cropping`` (pad and crop). See
docs/preprocessing.md.
"""

from __future__ import annotations

import miscore
from miscore_preprocessing.cropping import CropForeground, Pad
from miscore_preprocessing.normalization import Clip, CtWindow, MinMax, Scale, ZScore
from miscore_preprocessing.orientation import Reorient
from miscore_preprocessing.resampling import Resample, Resize

__all__ = [
    "Clip",
    "CropForeground",
    "CtWindow",
    "MinMax",
    "Pad",
    "Reorient",
    "Resample",
    "Resize",
    "Scale",
    "ZScore",
]


@miscore.hookimpl
def miscore_register_subfunctions() -> list[type[miscore.Subfunction]]:
    return [ZScore, MinMax, Scale, Clip, CtWindow, Resample, Resize, Reorient, Pad, CropForeground]
