"""Label maps: integer class ids, one channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from miscore.core.errors import InputError
from miscore.core.volume import Volume


def label_dtype(max_class: int) -> np.dtype[np.integer]:
    """The smallest unsigned integer type that holds class ids up to ``max_class``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_class <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise InputError(f"class id {max_class} is too large for a label map")


def as_label_volume(volume: Volume, source: Path | str) -> Volume:
    """Check that ``volume`` holds one channel of non-negative integer classes and cast it.

    Float arrays are accepted when every value is a whole number (NIfTI labels are often
    stored as float); anything else raises ``InputError`` naming ``source``.
    """
    array = volume.array
    if volume.channels != 1:
        raise InputError(f"{source}: a label map has one channel; got {volume.channels}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise InputError(f"{source}: label map holds NaN or infinite values")
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{source}: label map holds non-integer values; expected class ids")
    elif array.dtype.kind not in "iub":
        raise InputError(f"{source}: label map has dtype {array.dtype}; expected integers")
    if array.size and array.min() < 0:
        raise InputError(f"{source}: label map holds negative values ({array.min()})")
    top = int(array.max()) if array.size else 0
    return Volume(array.astype(label_dtype(top), copy=False), volume.affine, dict(volume.meta))
