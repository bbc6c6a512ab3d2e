"""The data model: a ``Volume`` (array + geometry) and a ``Case`` (id, image, label).

Geometry contract, for every reader and writer:
- ``array`` is channels last: ``(*spatial, C)`` with 2 or 3 spatial axes;
- ``affine`` is 4x4 and maps a voxel index to world millimetres in RAS+ (as nibabel uses);
- array axis ``i`` is affine column ``i``. For 2D volumes, column 2 is the plane's normal.
Readers never resample or reorient; a subfunction does, and undoes it in ``postprocess``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from miscore.core.errors import InputError

CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(eq=False)
class Volume:
    """An image or label array with its geometry.

    Args:
        array: ``(*spatial, C)`` array, channels last.
        affine: 4x4 voxel-index -> world (RAS+, mm) matrix; identity when omitted.
        meta: JSON-able header facts a writer needs to restore the source (dtype, codes, UIDs).
    """

    array: npt.NDArray[Any]
    affine: npt.NDArray[np.float64] = field(default_factory=lambda: np.eye(4))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim not in (3, 4):
            raise InputError(
                f"a Volume array is (*spatial, channels) with 2 or 3 spatial axes; "
                f"got shape {self.array.shape}"
            )
        if self.affine.shape != (4, 4):
            raise InputError(f"a Volume affine is 4x4; got shape {self.affine.shape}")
        if not np.all(np.isfinite(self.affine)):
            raise InputError("a Volume affine must be finite")
        if any(n == 0 for n in self.array.shape):
            raise InputError(f"a Volume has a zero-sized axis: shape {self.array.shape}")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The shape without the channel axis."""
        return tuple(int(n) for n in self.array.shape[:-1])

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return self.array.ndim - 1

    @property
    def channels(self) -> int:
        return int(self.array.shape[-1])

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial array axis (norm of the affine's columns)."""
        norms = np.linalg.norm(self.affine[:3, : self.ndim], axis=0)
        return tuple(float(s) for s in norms)

    @property
    def origin(self) -> tuple[float, float, float]:
        """World position (RAS+, mm) of voxel index 0."""
        return (float(self.affine[0, 3]), float(self.affine[1, 3]), float(self.affine[2, 3]))

    def with_array(self, array: npt.NDArray[Any]) -> Volume:
        """A new Volume on the same grid (same affine and meta) holding ``array``."""
        return Volume(array, self.affine.copy(), dict(self.meta))

    def same_grid(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when both volumes have the same spatial shape and affine (within ``atol`` mm)."""
        return self.spatial_shape == other.spatial_shape and bool(
            np.allclose(self.affine, other.affine, atol=atol)
        )


def check_case_id(case_id: str) -> str:
    """Return ``case_id`` when it is safe as a file name, else raise ``InputError``."""
    if (
        not isinstance(case_id, str)
        or not CASE_ID_PATTERN.fullmatch(case_id)
        or case_id
        in {
            ".",
            "..",
        }
    ):
        raise InputError(
            f"case id {case_id!r} is not allowed: use letters, digits, '.', '_' or '-' only"
        )
    return case_id


@dataclass(eq=False)
class Case:
    """One sample: an image Volume and, for training data, a label Volume of integer classes."""

    id: str
    image: Volume
    label: Volume | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_case_id(self.id)
        if self.label is not None:
            if self.label.channels != 1:
                raise InputError(
                    f"case {self.id}: a label has one channel of class ids; "
                    f"got {self.label.channels} channels"
                )
            if self.label.spatial_shape != self.image.spatial_shape:
                raise InputError(
                    f"case {self.id}: label shape {self.label.spatial_shape} differs from "
                    f"image shape {self.image.spatial_shape}"
                )


@dataclass(frozen=True)
class CaseSource:
    """Where one case lives on disk.

    Args:
        id: the case id (a safe file name).
        images: one path per channel (a multi-channel file or a DICOM folder is one path).
        label: the label map, or None.
        test: True for cases of a test set (``imagesTs``).
    """

    id: str
    images: tuple[Path, ...]
    label: Path | None = None
    test: bool = False
