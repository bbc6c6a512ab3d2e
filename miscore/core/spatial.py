"""The coordinate map a spatial augmentation returns (part of the plugin contract).

Coordinates are voxel indices measured from the centre of their grid: the matrix maps an
output voxel (centred on the output patch) to an input voxel (centred on the input region).
The augmentation engine (``miscore.pipeline.augmenting``) composes consecutive maps and
interpolates once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, eq=False)
class SpatialTransform:
    """One sample's coordinate map: output voxel -> input voxel, both centred on their grid.

    Args:
        matrix: ``(ndim + 1, ndim + 1)`` homogeneous matrix (output -> input coordinates).
        displacement: optional ``(ndim, *control)`` displacements (input voxels) at control
            points spread evenly over the output grid, first and last on its edges; added
            after ``matrix`` and smoothed between control points by cubic B-splines.
        order: image interpolation order this transform asks for (1 linear, 3 cubic); a
            composition uses the highest. Labels always use nearest neighbour.
    """

    matrix: npt.NDArray[np.float64]
    displacement: npt.NDArray[np.float32] | None = None
    order: int = 1

    def __post_init__(self) -> None:
        matrix = np.asarray(self.matrix, dtype=np.float64)
        n = matrix.shape[0] - 1
        if matrix.shape != (n + 1, n + 1) or n not in (2, 3):
            raise ValueError(f"a SpatialTransform matrix is 3x3 (2D) or 4x4 (3D); {matrix.shape}")
        object.__setattr__(self, "matrix", matrix)
        if self.displacement is not None:
            field_ = np.asarray(self.displacement, dtype=np.float32)
            if field_.ndim != n + 1 or field_.shape[0] != n:
                raise ValueError(
                    f"a {n}D displacement has shape ({n}, *control); got {field_.shape}"
                )
            object.__setattr__(self, "displacement", field_)
        if self.order not in (1, 3):
            raise ValueError(f"image interpolation order is 1 or 3; got {self.order}")

    @property
    def ndim(self) -> int:
        return int(self.matrix.shape[0] - 1)

    @classmethod
    def identity(cls, ndim: int) -> SpatialTransform:
        return cls(np.eye(ndim + 1))

    @classmethod
    def linear(
        cls,
        linear: npt.ArrayLike,
        translation: npt.ArrayLike | None = None,
        order: int = 1,
    ) -> SpatialTransform:
        """From an ``ndim x ndim`` matrix and a translation (input voxels)."""
        lin = np.asarray(linear, dtype=np.float64)
        n = lin.shape[0]
        matrix = np.eye(n + 1)
        matrix[:n, :n] = lin
        if translation is not None:
            matrix[:n, n] = np.asarray(translation, dtype=np.float64)
        return cls(matrix, order=order)
