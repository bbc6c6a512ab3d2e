"""Spatial augmentations: each draws a coordinate map; the kernel composes and applies them.

Every class here implements ``spatial_transform`` (the kernel protocol) and gets ``augment``
from ``SpatialAugmentation``, so it also works on its own. Coordinates are voxel indices
centred on the grid; angles rotate in voxel space (resample to isotropic spacing first for
rotations that respect millimetres).
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

import miscore
from miscore import SpatialTransform, apply_spatial_transforms

Plane = tuple[int, int]


def _planes(ndim: int, planes: list[Plane] | None, name: str) -> list[Plane]:
    """The rotation planes to use, checked against the sample's axes."""
    if planes is None:
        return list(itertools.combinations(range(ndim), 2))
    for plane in planes:
        a, b = plane
        if a == b or not (0 <= a < ndim and 0 <= b < ndim):
            raise miscore.InputError(
                f"{name}.planes: {list(plane)} is not a plane of two different axes of a "
                f"{ndim}D sample (axes 0..{ndim - 1})"
            )
    return [(int(a), int(b)) for a, b in planes]


def _axes(ndim: int, axes: list[int] | None, name: str) -> list[int]:
    if axes is None:
        return list(range(ndim))
    for a in axes:
        if not 0 <= a < ndim:
            raise miscore.InputError(
                f"{name}.axes: {a} is not a spatial axis of a {ndim}D sample (0..{ndim - 1})"
            )
    return [int(a) for a in axes]


def _plane_rotation(ndim: int, plane: Plane, angle: float) -> npt.NDArray[np.float64]:
    a, b = plane
    rotation = np.eye(ndim)
    cos, sin = np.cos(angle), np.sin(angle)
    rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = cos, -sin, sin, cos
    return rotation


class SpatialParams(miscore.AugmentationParams):
    order: Literal[1, 3] = Field(
        1, description="image interpolation: 1 linear, 3 cubic (slower); labels: nearest"
    )


class SpatialAugmentation(miscore.Augmentation):
    """Base of the spatial augmentations: ``augment`` applies ``spatial_transform`` alone."""

    Params: ClassVar[type[miscore.Params]] = SpatialParams

    def augment(
        self,
        image: npt.NDArray[np.floating[Any]],
        label: npt.NDArray[np.integer[Any]] | None,
        rng: np.random.Generator,
    ) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.integer[Any]] | None]:
        shape = tuple(int(s) for s in np.shape(image)[:-1])
        transform = self.spatial_transform(shape, rng)
        assert transform is not None
        return apply_spatial_transforms([transform], image, label)

    def spatial_transform(
        self, shape: tuple[int, ...], rng: np.random.Generator
    ) -> SpatialTransform | None:
        raise NotImplementedError

    @property
    def order(self) -> int:
        return int(getattr(self.params, "order", 1))


class Flip(SpatialAugmentation):
    """Mirror the sample along each chosen axis, each with probability ``axis_p`` (a view)."""

    name = "flip"

    class Params(miscore.AugmentationParams):
        axes: list[int] | None = Field(None, description="spatial axes to mirror; None: all")
        axis_p: float = Field(0.5, ge=0.0, le=1.0, description="probability per axis")

    params: Params

    def spatial_transform(
        self, shape: tuple[int, ...], rng: np.random.Generator
    ) -> SpatialTransform:
        ndim = len(shape)
        signs = np.ones(ndim)
        for a in _axes(ndim, self.params.axes, self.name):
            if rng.random() < self.params.axis_p:
                signs[a] = -1.0
        return SpatialTransform.linear(np.diag(signs))


class Rotate90(SpatialAugmentation):
    """Rotate by a random multiple of 90 degrees in each chosen plane (a view).

    A plane whose two sizes differ only turns by 0 or 180 degrees, so the shape is kept.
    """

    name = "rotate90"

    class Params(miscore.AugmentationParams):
        planes: list[tuple[int, int]] | None = Field(
            None, description="planes as axis pairs, e.g. [[1, 2]]; None: every plane"
        )

    params: Params

    def spatial_transform(
        self, shape: tuple[int, ...], rng: np.random.Generator
    ) -> SpatialTransform:
        ndim = len(shape)
        linear = np.eye(ndim)
        for plane in _planes(ndim, self.params.planes, self.name):
            square = shape[plane[0]] == shape[plane[1]]
            k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
            linear = linear @ np.rint(_plane_rotation(ndim, plane, k * np.pi / 2))
        return SpatialTransform.linear(linear)


class Rotate(SpatialAugmentation):
    """Rotate by a random angle in [-max_angle, max_angle] degrees in each chosen plane."""

    name = "rotate"

    class Params(SpatialParams):
        max_angle: float = Field(15.0, ge=0.0, le=180.0, description="largest angle, degrees")
        planes: list[tuple[int, int]] | None = Field(
            None, description="planes as axis pairs, e.g. [[0, 1]]; None: every plane"
        )

    params: Params

    def spatial_transform(
        self, shape: tuple[int, ...], rng: np.random.Generator
    ) -> SpatialTransform:
        ndim = len(shape)
        linear = np.eye(ndim)
        limit = np.deg2rad(self.params.max_angle)
        for plane in _planes(ndim, self.params.planes, self.name):
            linear = linear @ _plane_rotation(ndim, plane, rng.uniform(-limit, limit))
        return SpatialTransform.linear(linear, order=self.order)


class Scale(SpatialAugmentation):
    """Zoom by a random factor in [min, max] (above 1 enlarges the content)."""

    name = "scale"

    class Params(SpatialParams):
        min: float = Field(0.85, gt=0.0, description="smallest zoom factor")
        max: float = Field(1.25, gt=0.0, description="largest zoom factor")
        isotropic: bool = Field(True, description="one factor for all axes, else one per axis")

    params: Params

    def spatial_transform(
        self, shape: tuple[int, ...], rng: np.random.Generator
    ) -> SpatialTransform:
        low, high = sorted((self.params.min, self.params.max))
        count = 1 if self.params.isotropic else len(shape)
        factors = np.broadcast_to(rng.uniform(low, high, size=count), (len(shape),))
        return SpatialTransform.linear(np.diag(1.0 / factors), order=self.order)


class Shift(SpatialAugmentation):
    """Translate by up to ``max_shift`` of the size along each axis; edges are duplicated."""

    name = "shift"

    class Params(SpatialParams):
        max_shift: float = Field(
            0.1, ge=0.0, le=1.0, description="largest shift, as a fraction of the axis size"
        )
        axes: list[int] | None = Field(None, description="spatial axes to shift; None: all")

    params: Params

    def spatial_transform(
        self, shape: tuple[int, ...], rng: np.random.Generator
    ) -> SpatialTransform:
        ndim = len(shape)
        shift = np.zeros(ndim)
        for a in _axes(ndim, self.params.axes, self.name):
            limit = self.params.max_shift * shape[a]
            shift[a] = rng.uniform(-limit, limit)
        return SpatialTransform.linear(np.eye(ndim), shift, order=self.order)


class Elastic(SpatialAugmentation):
    """Elastic deformation: random control-point displacements, smoothed by cubic B-splines.

    Control points sit every ``spacing`` voxels; each moves by a normal draw of standard
    deviation ``magnitude`` voxels per axis. Only the coarse grid is random, so the cost is
    that of the final interpolation.
    """

    name = "elastic"

    class Params(SpatialParams):
        magnitude: float = Field(
            3.0, ge=0.0, description="standard deviation of control-point moves, voxels"
        )
        spacing: int = Field(24, ge=2, description="distance between control points, voxels")

    params: Params

    def spatial_transform(
        self, shape: tuple[int, ...], rng: np.random.Generator
    ) -> SpatialTransform:
        control = [max(2, round((n - 1) / self.params.spacing) + 1) for n in shape]
        field = rng.standard_normal((len(shape), *control), dtype=np.float32)
        field *= np.float32(self.params.magnitude)
        return SpatialTransform(np.eye(len(shape) + 1), field, order=self.order)


SPATIAL: list[type[miscore.Augmentation]] = [Flip, Rotate90, Rotate, Scale, Shift, Elastic]
