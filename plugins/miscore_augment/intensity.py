"""Intensity augmentations: they change image values only, in place on the sample.

Ranges are in image units; they suit images normalised to zero mean and unit variance (the
``zscore`` preprocessing step). ``per_channel`` draws one value per channel instead of one
for the whole sample.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

import miscore

Image = npt.NDArray[np.float32]


class _RangeParams(miscore.AugmentationParams):
    """Params with a ``[low, high]`` range (``bounds``) a value is drawn from, uniformly."""

    def bounds(self) -> tuple[float, float]:
        raise NotImplementedError

    @model_validator(mode="after")
    def _ordered(self) -> _RangeParams:
        low, high = self.bounds()
        if low > high:
            raise ValueError(f"the range's lower end {low} is above its upper end {high}")
        return self


class _MinMax(_RangeParams):
    min: float
    max: float

    def bounds(self) -> tuple[float, float]:
        return self.min, self.max


class IntensityAugmentation(miscore.Augmentation):
    """Base of the intensity augmentations: ``augment`` copies, ``augment_inplace`` does not."""

    def augment(
        self,
        image: npt.NDArray[np.floating[Any]],
        label: npt.NDArray[np.integer[Any]] | None,
        rng: np.random.Generator,
    ) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.integer[Any]] | None]:
        out = np.array(image, dtype=np.float32, order="C")
        self.augment_inplace(out, rng)
        return out, label

    def augment_inplace(self, image: Image, rng: np.random.Generator) -> bool:
        raise NotImplementedError

    def _draw(self, rng: np.random.Generator, image: Image, per_channel: bool) -> Any:
        """One value, or a ``(C,)`` array when ``per_channel``, from the params' range."""
        params = self.params
        assert isinstance(params, _RangeParams)
        low, high = params.bounds()
        if per_channel:
            return np.asarray(rng.uniform(low, high, size=image.shape[-1]), np.float32)
        return np.float32(rng.uniform(low, high))


def _channels(image: Image) -> npt.NDArray[np.float32]:
    """``(voxels, C)`` view of a C-contiguous image."""
    return image.reshape(-1, image.shape[-1])


class Brightness(IntensityAugmentation):
    """Multiply intensities by a random factor in [min, max]."""

    name = "brightness"

    class Params(_MinMax):
        min: float = Field(0.75, description="smallest factor")
        max: float = Field(1.25, description="largest factor")
        per_channel: bool = Field(False, description="a factor per channel")

    params: Params

    def augment_inplace(self, image: Image, rng: np.random.Generator) -> bool:
        image *= self._draw(rng, image, self.params.per_channel)
        return True


class IntensityShift(IntensityAugmentation):
    """Add a random offset in [min, max] to the intensities."""

    name = "intensity_shift"

    class Params(_MinMax):
        min: float = Field(-0.1, description="smallest offset (image units)")
        max: float = Field(0.1, description="largest offset (image units)")
        per_channel: bool = Field(False, description="an offset per channel")

    params: Params

    def augment_inplace(self, image: Image, rng: np.random.Generator) -> bool:
        image += self._draw(rng, image, self.params.per_channel)
        return True


class Contrast(IntensityAugmentation):
    """Scale intensities around their mean by a random factor in [min, max]."""

    name = "contrast"

    class Params(_MinMax):
        min: float = Field(0.75, description="smallest factor")
        max: float = Field(1.25, description="largest factor")
        per_channel: bool = Field(False, description="a factor per channel")
        preserve_range: bool = Field(True, description="clip to the sample's original range")

    params: Params

    def augment_inplace(self, image: Image, rng: np.random.Generator) -> bool:
        factor = self._draw(rng, image, self.params.per_channel)
        values = _channels(image)
        mean = values.mean(axis=0, dtype=np.float64).astype(np.float32)
        if self.params.preserve_range:
            low, high = values.min(axis=0), values.max(axis=0)
        # (x - mean) * f + mean == x * f + mean * (1 - f): two passes
        values *= factor
        values += mean * (np.float32(1) - factor)
        if self.params.preserve_range:
            np.clip(values, low, high, out=values)
        return True


class Gamma(IntensityAugmentation):
    """Gamma curve: rescale to [0, 1], raise to a random power in [min, max], rescale back."""

    name = "gamma"

    class Params(_MinMax):
        min: float = Field(0.7, gt=0.0, description="smallest exponent")
        max: float = Field(1.5, gt=0.0, description="largest exponent")
        per_channel: bool = Field(False, description="an exponent per channel")
        invert: bool = Field(False, description="apply to the inverted image (darkens highs)")

    params: Params

    def augment_inplace(self, image: Image, rng: np.random.Generator) -> bool:
        gamma = self._draw(rng, image, self.params.per_channel)
        values = _channels(image)
        low, high = values.min(axis=0), values.max(axis=0)
        span = np.maximum(high - low, np.float32(1e-7))
        if self.params.invert:
            values -= high
            values /= -span
        else:
            values -= low
            values /= span
        np.power(values, gamma, out=values)
        if self.params.invert:
            values *= -span
            values += high
        else:
            values *= span
            values += low
        return True


class _NoiseBuffer(threading.local):
    """A reused buffer for noise draws: a fresh large array costs page faults each sample."""

    def __init__(self) -> None:
        self.array = np.empty(0, np.float32)

    def get(self, size: int) -> npt.NDArray[np.float32]:
        if self.array.size != size:
            self.array = np.empty(size, np.float32)
        return self.array


_NOISE = _NoiseBuffer()


class GaussianNoise(IntensityAugmentation):
    """Add Gaussian noise of a random standard deviation in [min_std, max_std]."""

    name = "gaussian_noise"

    class Params(_RangeParams):
        min_std: float = Field(0.0, ge=0.0, description="smallest standard deviation")
        max_std: float = Field(0.1, ge=0.0, description="largest standard deviation")
        per_channel: bool = Field(False, description="a standard deviation per channel")

        def bounds(self) -> tuple[float, float]:
            return self.min_std, self.max_std

    params: Params

    def augment_inplace(self, image: Image, rng: np.random.Generator) -> bool:
        std = self._draw(rng, image, self.params.per_channel)
        noise = _NOISE.get(image.size).reshape(image.shape)
        rng.standard_normal(dtype=np.float32, out=noise)
        noise *= std
        image += noise
        return True


class GaussianBlur(IntensityAugmentation):
    """Blur with a Gaussian of random width in [min_sigma, max_sigma] voxels (each channel)."""

    name = "gaussian_blur"

    class Params(_RangeParams):
        min_sigma: float = Field(0.5, ge=0.0, description="smallest sigma, voxels")
        max_sigma: float = Field(1.0, ge=0.0, description="largest sigma, voxels")
        per_channel: bool = Field(False, description="a sigma per channel")

        def bounds(self) -> tuple[float, float]:
            return self.min_sigma, self.max_sigma

    params: Params

    def augment_inplace(self, image: Image, rng: np.random.Generator) -> bool:
        from scipy import ndimage

        sigmas = np.broadcast_to(
            self._draw(rng, image, self.params.per_channel), (image.shape[-1],)
        )
        for c, sigma in enumerate(sigmas):
            if sigma > 0:
                channel = image[..., c]
                channel[...] = ndimage.gaussian_filter(
                    channel, float(sigma), mode="nearest", truncate=3.0, output=np.float32
                )
        return True


def _upsample_linear(coarse: npt.NDArray[np.float32], n: int, axis: int) -> npt.NDArray[np.float32]:
    """Linear interpolation of ``coarse`` (``m`` samples on ``axis``) back to ``n`` voxels.

    Two gathers and a blend: the same numbers as an ``(n, m)`` interpolation matrix, but
    without BLAS in the per-sample path (a tensordot cost 42 ms per 64^3 sample there).
    """
    m = coarse.shape[axis]
    if m == 1:
        return np.repeat(coarse, n, axis=axis)
    position = np.linspace(0.0, m - 1.0, n)
    lower = np.minimum(np.floor(position).astype(np.intp), m - 2)
    shape = [1] * coarse.ndim
    shape[axis] = n
    upper_weight = (position - lower).astype(np.float32).reshape(shape)
    low = np.take(coarse, lower, axis=axis)
    high = np.take(coarse, lower + 1, axis=axis)
    out: npt.NDArray[np.float32] = low + (high - low) * upper_weight
    return out


class LowResolution(IntensityAugmentation):
    """Simulate a coarser scan: sample every 1/zoom voxels, then interpolate back linearly.

    The zoom is drawn in [min_zoom, max_zoom] (1 keeps the resolution), one for all axes.
    """

    name = "low_resolution"

    class Params(_RangeParams):
        min_zoom: float = Field(0.5, gt=0.0, le=1.0, description="smallest zoom (coarsest)")
        max_zoom: float = Field(1.0, gt=0.0, le=1.0, description="largest zoom")
        axes: list[int] | None = Field(None, description="spatial axes to coarsen; None: all")

        def bounds(self) -> tuple[float, float]:
            return self.min_zoom, self.max_zoom

    params: Params

    def augment_inplace(self, image: Image, rng: np.random.Generator) -> bool:
        zoom = float(self._draw(rng, image, False))
        ndim = image.ndim - 1
        axes = range(ndim) if self.params.axes is None else self.params.axes
        coarse: npt.NDArray[np.float32] = image
        for a in axes:
            if not 0 <= a < ndim:
                raise miscore.InputError(
                    f"{self.name}.axes: {a} is not a spatial axis of a {ndim}D sample"
                )
            n = image.shape[a]
            m = max(1, round(n * zoom))
            if m == n:
                continue
            nearest = np.rint(np.linspace(0, n - 1, m)).astype(np.intp)
            coarse = np.take(coarse, nearest, axis=a)
            coarse = _upsample_linear(coarse, n, a)
        if coarse is not image:
            image[...] = coarse
        return True


INTENSITY: list[type[miscore.Augmentation]] = [
    Brightness,
    IntensityShift,
    Contrast,
    Gamma,
    GaussianNoise,
    GaussianBlur,
    LowResolution,
]
