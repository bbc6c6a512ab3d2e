"""nnU-Net's foreground oversampling: random windows, a share forced onto foreground."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

import miscore


class ForegroundSampler(miscore.Sampler):
    """Random windows, a foreground_ratio share centred on foreground (nnU-Net oversampling).

    Each window is forced onto foreground with probability ``patching.foreground_ratio``:
    centred near a voxel of ``foreground_class`` (or of a foreground class drawn at random)
    and moved by up to ``jitter`` of the patch. The others lie anywhere. With
    ``patching.skip_blanks`` a window holding only background is redrawn up to ``max_tries``
    times, then centred on foreground; a case without foreground then gives no windows.
    """

    name = "foreground"

    class Params(miscore.Params):
        jitter: float = Field(
            0.25,
            ge=0.0,
            lt=0.5,
            description="how far (share of the patch) a forced window's centre may move off "
            "its foreground voxel",
        )
        max_tries: int = Field(
            20,
            ge=1,
            description="skip_blanks: random windows tried before one is centred on foreground",
        )

    params: Params

    def windows(
        self,
        shape: tuple[int, ...],
        patch_shape: tuple[int, ...],
        count: int,
        foreground: Mapping[int, npt.NDArray[np.int64]],
        rng: np.random.Generator,
        *,
        label: Any,
        patching: miscore.PatchingConfig,
    ) -> list[tuple[slice, ...]]:
        skip = patching.skip_blanks and label is not None
        out = []
        for _ in range(count):
            voxels = None
            if rng.random() < patching.foreground_ratio:
                voxels = miscore.pick_foreground(foreground, rng, patching.foreground_class)
            window = self._window(shape, patch_shape, rng, voxels)
            if skip and voxels is None:
                tries = 1
                while miscore.is_blank(label, window) and tries < self.params.max_tries:
                    window = miscore.random_window(shape, patch_shape, rng)
                    tries += 1
                if miscore.is_blank(label, window):
                    fallback = miscore.pick_foreground(foreground, rng)
                    if fallback is None:
                        return []  # nothing but background in this case
                    window = self._window(shape, patch_shape, rng, fallback)
            out.append(window)
        return out

    def _window(
        self,
        shape: tuple[int, ...],
        patch_shape: tuple[int, ...],
        rng: np.random.Generator,
        voxels: npt.NDArray[Any] | None,
    ) -> tuple[slice, ...]:
        """Centred near one of ``voxels`` drawn at random, or anywhere when there are none."""
        if voxels is not None and len(voxels):
            voxel = voxels[int(rng.integers(len(voxels)))]
            return miscore.centred_window(shape, patch_shape, voxel, rng, self.params.jitter)
        return miscore.random_window(shape, patch_shape, rng)
