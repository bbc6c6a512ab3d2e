"""Where patches are cut from a volume: windows for training sampling and sliding-window inference.

Numpy only. Functions return *windows*, tuples of ``slice`` objects over the spatial axes, and
never touch image data, so a loader can read just the chunks a window needs from a zarr array
with ``extract_patch``. A window may reach past the array (``start < 0`` or ``stop > n``) when
the image is smaller than the patch or a patch is centred near a border: such slices must go
through ``extract_patch`` (which pads) or ``window_region`` (which clips), never straight into
``array[window]`` (numpy reads a negative start from the end).

Modes (``miscore.core.config.PatchingConfig.mode``):
- ``full``: the whole volume is one window;
- ``slice``: 2D slices along ``slice_axis`` (windows of length 1 on that axis);
- ``grid``: patches on a grid with ``overlap``, covering every voxel, the last one aligned
  to the end of each axis (MIScnn's patchwise-grid);
- ``random``: random crops (MIScnn's patchwise-crop); a ``foreground_ratio`` share of them is
  centred near a voxel of ``foreground_class`` (or any foreground), as nnU-Net oversamples.

Which training windows ``random`` and ``slice`` take is a ``Sampler`` component's choice
(``patching.sampler``; the plugins' default is the bundled ``foreground`` sampler, built on
the helpers here). ``grid``/``full`` training windows and inference windows stay here.

Every random choice takes an explicit ``numpy.random.Generator``: the same seed gives the
same windows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from miscore.core.components import Sampler
from miscore.core.config import PatchingConfig
from miscore.core.errors import ConfigError, InputError, PluginError
from miscore.core.registry import Registry

__all__ = [
    "SAMPLED_MODES",
    "PatchSampler",
    "Window",
    "centred_window",
    "class_locations",
    "create_sampler",
    "extract_patch",
    "full_window",
    "grid_windows",
    "is_blank",
    "pick_foreground",
    "random_window",
    "sample_patch_slices",
    "window_region",
]

#: A window: one slice per spatial axis, ``step`` None, possibly reaching past the array.
Window = tuple[slice, ...]

#: the modes whose training windows a ``Sampler`` chooses
SAMPLED_MODES: tuple[str, ...] = ("random", "slice")


def _check_shapes(shape: Sequence[int], patch_shape: Sequence[int]) -> None:
    if len(shape) != len(patch_shape):
        raise InputError(
            f"patch_shape {tuple(patch_shape)} has {len(patch_shape)} axes; the volume "
            f"{tuple(shape)} has {len(shape)} spatial axes"
        )
    if any(p < 1 for p in patch_shape):
        raise InputError(f"patch_shape must be positive; got {tuple(patch_shape)}")


def _window(starts: Sequence[int], patch_shape: Sequence[int]) -> Window:
    return tuple(slice(int(s), int(s) + int(p)) for s, p in zip(starts, patch_shape, strict=True))


def full_window(shape: Sequence[int]) -> Window:
    """The window of the whole volume."""
    return tuple(slice(0, int(n)) for n in shape)


# --- windows ---------------------------------------------------------------------------


def _axis_starts(n: int, p: int, overlap: float) -> list[int]:
    if n <= p:
        return [-((p - n) // 2)]  # one window, the volume centred in it (padded both sides)
    stride = max(1, math.floor(p * (1 - overlap)))
    starts = list(range(0, n - p, stride))
    starts.append(n - p)  # the last window ends at the end of the axis
    return starts


def grid_windows(shape: Sequence[int], patch_shape: Sequence[int], overlap: float) -> list[Window]:
    """Windows on a grid that cover every voxel, neighbours overlapping by ``overlap``.

    Along each axis windows start every ``floor(p * (1 - overlap))`` voxels and the last one
    is aligned to the end. An axis shorter than the patch gets one window with the volume
    centred in it; ``extract_patch`` pads it and ``window_region`` says where the data sits.
    """
    _check_shapes(shape, patch_shape)
    if not 0 <= overlap < 1:
        raise InputError(f"overlap must be in [0, 1); got {overlap}")
    axes = [_axis_starts(int(n), int(p), overlap) for n, p in zip(shape, patch_shape, strict=True)]
    grids = np.meshgrid(*axes, indexing="ij")
    starts = np.stack([g.ravel() for g in grids], axis=-1)
    return [_window(row, patch_shape) for row in starts]


def _start_range(n: int, p: int) -> tuple[int, int]:
    """Lowest and highest start that keep the patch on the volume (or the volume in the patch)."""
    return min(0, n - p), max(0, n - p)


def random_window(
    shape: Sequence[int], patch_shape: Sequence[int], rng: np.random.Generator
) -> Window:
    """A window at a uniformly random position (for an axis shorter than the patch, the
    volume lies at a random offset inside the padded patch)."""
    _check_shapes(shape, patch_shape)
    starts = []
    for n, p in zip(shape, patch_shape, strict=True):
        low, high = _start_range(int(n), int(p))
        starts.append(int(rng.integers(low, high + 1)))
    return _window(starts, patch_shape)


def centred_window(
    shape: Sequence[int],
    patch_shape: Sequence[int],
    voxel: Sequence[int],
    rng: np.random.Generator,
    jitter: float = 0.25,
) -> Window:
    """A window that holds ``voxel``: centred on it, moved by up to ``jitter`` of the patch
    size at random, then shifted to stay on the volume. ``voxel`` is always inside."""
    _check_shapes(shape, patch_shape)
    if not 0 <= jitter < 0.5:
        raise InputError(f"jitter must be in [0, 0.5); got {jitter}")
    starts = []
    for n, p, v in zip(shape, patch_shape, voxel, strict=True):
        reach = math.floor(p * jitter)
        start = int(v) - p // 2 + int(rng.integers(-reach, reach + 1))
        low, high = _start_range(int(n), int(p))
        starts.append(min(max(start, low), high))
    return _window(starts, patch_shape)


# --- foreground -----------------------------------------------------------------------


def class_locations(
    label: npt.NDArray[Any],
    rng: np.random.Generator,
    max_per_class: int = 10_000,
    min_fraction: float = 0.01,
) -> dict[int, npt.NDArray[np.int64]]:
    """Voxel indices of each foreground class present: a random subset, as nnU-Net stores.

    Args:
        label: class ids, ``(*spatial)`` or ``(*spatial, 1)``.
        max_per_class: at most this many voxels per class ...
        min_fraction: ... unless this share of the class's voxels is more.

    Returns:
        ``{class_id: (k, ndim) int64 array}`` for every class > 0 in ``label``, sorted rows.
        Small enough for a cache to store beside the case.
    """
    array = np.asarray(label)
    if array.ndim >= 2 and array.shape[-1] == 1:
        array = array[..., 0]
    flat = array.reshape(-1)
    hits = np.flatnonzero(flat > 0)
    classes = flat[hits]
    out: dict[int, npt.NDArray[np.int64]] = {}
    for cls in np.unique(classes):
        where = hits[classes == cls]
        count = min(len(where), max_per_class)
        count = max(count, min(len(where), math.ceil(len(where) * min_fraction)))
        chosen = np.sort(rng.choice(where, size=count, replace=False))
        out[int(cls)] = np.stack(np.unravel_index(chosen, array.shape), axis=-1).astype(np.int64)
    return out


def pick_foreground(
    locations: Mapping[int, npt.NDArray[Any]],
    rng: np.random.Generator,
    foreground_class: int | None = None,
) -> npt.NDArray[Any] | None:
    """The voxels a forced patch is centred on: ``foreground_class``'s, or (None, or when the
    case lacks that class) those of a foreground class drawn at random among those present.
    None when the case has no foreground."""
    present = sorted(c for c, v in locations.items() if c > 0 and len(v))
    if not present:
        return None
    if foreground_class is not None and foreground_class in present:
        return locations[foreground_class]
    return locations[present[int(rng.integers(len(present)))]]


def sample_patch_slices(
    shape: Sequence[int],
    patch_shape: Sequence[int],
    rng: np.random.Generator,
    foreground_voxels: npt.NDArray[Any] | None = None,
    jitter: float = 0.25,
) -> Window:
    """One training window: random, or, given ``foreground_voxels`` (``(k, ndim)`` indices,
    e.g. from ``pick_foreground``), centred near one of them drawn at random."""
    if foreground_voxels is not None and len(foreground_voxels):
        voxel = foreground_voxels[int(rng.integers(len(foreground_voxels)))]
        return centred_window(shape, patch_shape, voxel, rng, jitter)
    return random_window(shape, patch_shape, rng)


# --- reading --------------------------------------------------------------------------


def window_region(window: Window, shape: Sequence[int]) -> tuple[Window, Window]:
    """Where a window meets the volume: ``(in_volume, in_patch)`` slices of equal size.

    ``volume[in_volume]`` is the data the window holds, found at ``patch[in_patch]``; use it
    to read a patch, or to add a predicted patch back into a full-size array.
    """
    if len(window) != len(shape):
        raise InputError(f"a window of {len(window)} axes on a volume of {len(shape)} axes")
    in_volume, in_patch = [], []
    for s, n in zip(window, shape, strict=True):
        start, stop = int(s.start), int(s.stop)
        low, high = max(start, 0), min(stop, int(n))
        if low >= high:
            raise InputError(f"window {window} lies outside a volume of shape {tuple(shape)}")
        in_volume.append(slice(low, high))
        in_patch.append(slice(low - start, high - start))
    return tuple(in_volume), tuple(in_patch)


def extract_patch(
    array_like: Any, window: Window, pad_value: float = 0.0, mode: str = "constant"
) -> npt.NDArray[Any]:
    """Read a window from anything sliceable (numpy, zarr), padding where it leaves the array.

    Only the in-volume part is read (one slicing call), so a zarr array loads just the chunks
    the window touches. Axes after the window's (channels) are read whole.

    Args:
        pad_value: value of padded voxels in ``constant`` mode.
        mode: ``constant`` or ``edge`` (repeat the border voxels).
    """
    shape = tuple(int(n) for n in array_like.shape)
    spatial = shape[: len(window)]
    in_volume, in_patch = window_region(window, spatial)
    data = np.asarray(array_like[in_volume])
    widths = [(p.start, (s.stop - s.start) - p.stop) for p, s in zip(in_patch, window, strict=True)]
    if not any(before or after for before, after in widths):
        return data
    widths += [(0, 0)] * (data.ndim - len(window))
    if mode == "edge":
        return np.pad(data, widths, mode="edge")
    if mode != "constant":
        raise InputError(f"padding mode must be 'constant' or 'edge'; got {mode!r}")
    return np.pad(data, widths, constant_values=pad_value)


def is_blank(label_like: Any, window: Window) -> bool:
    """True when the label holds only background (0) inside the window."""
    in_volume, _ = window_region(window, tuple(label_like.shape)[: len(window)])
    return not bool(np.any(np.asarray(label_like[in_volume]) > 0))


# --- the sampler a loader uses -----------------------------------------------------------


def create_sampler(patching: PatchingConfig, registry: Registry) -> Sampler:
    """The sampler ``patching.sampler`` names, or the plugins' default (``miscore_defaults``).

    Raises ``ComponentNotFoundError``/``ConfigError`` naming ``patching.sampler``.
    """
    spec: Any = patching.sampler
    if spec is None:
        spec = registry.defaults.get("sampler")
        if spec is None:
            raise ConfigError(
                "patching.sampler: not set, and no installed plugin supplies a default; "
                "name one in the config"
            )
    sampler = registry.create("sampler", spec, "patching.sampler")
    if not isinstance(sampler, Sampler):
        raise InputError(
            f"patching.sampler: {type(sampler).__name__} is not a Sampler; give a name, a "
            "{name, ...params} mapping or a Sampler"
        )
    return sampler


class PatchSampler:
    """The windows of one ``PatchingConfig``: training samples per epoch and inference windows.

    A loader calls ``training_windows`` for each case every epoch, with a Generator it seeds
    from the training seed and the epoch, and reads each window with ``extract``.

    Args:
        config: the ``patching`` section.
        sampler: the ``Sampler`` that chooses ``random`` and ``slice`` training windows
            (``create_sampler``); not needed for ``grid`` and ``full`` or for inference.
    """

    def __init__(self, config: PatchingConfig, sampler: Sampler | None = None) -> None:
        self.config = config
        self.sampler = sampler

    def patch_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The window shape for a volume of ``shape`` (1 on the slice axis in slice mode)."""
        config = self.config
        ndim = len(shape)
        if config.mode == "full":
            return tuple(int(n) for n in shape)
        if config.mode == "slice":
            if ndim != 3 or config.slice_axis >= ndim:
                raise InputError(f"patching.mode 'slice' needs 3D volumes; got shape {shape}")
            if config.patch_shape is None:
                out = [int(n) for n in shape]
            elif len(config.patch_shape) == ndim - 1:
                out = list(config.patch_shape)
                out.insert(config.slice_axis, 1)
            else:
                out = list(config.patch_shape)
                _check_shapes(shape, out)
            out[config.slice_axis] = 1
            return tuple(out)
        assert config.patch_shape is not None  # PatchingConfig enforces it for grid/random
        _check_shapes(shape, config.patch_shape)
        return tuple(config.patch_shape)

    def inference_windows(self, shape: Sequence[int], overlap: float | None = None) -> list[Window]:
        """Sliding windows covering every voxel (``overlap``: default the config's)."""
        return grid_windows(
            shape, self.patch_shape(shape), self.config.overlap if overlap is None else overlap
        )

    def training_windows(
        self,
        shape: Sequence[int],
        rng: np.random.Generator,
        label: Any = None,
        locations: Mapping[int, npt.NDArray[Any]] | None = None,
    ) -> list[Window]:
        """This epoch's training windows of one case.

        Args:
            shape: the case's spatial shape.
            rng: every random choice comes from it.
            label: the case's label (numpy or zarr, read window by window), needed for
                ``skip_blanks``; and for foreground oversampling when ``locations`` is None.
            locations: ``class_locations`` of the label, e.g. stored by the cache.

        ``grid`` mode gives every grid window in random order, ``full`` the whole volume (with
        ``skip_blanks``, those holding only background are dropped); ``slice`` and ``random``
        the ``samples_per_case`` windows the sampler chooses.
        """
        config = self.config
        patch = self.patch_shape(shape)
        skip = config.skip_blanks and label is not None
        if config.mode in ("full", "grid"):
            windows = grid_windows(shape, patch, config.overlap)
            order = rng.permutation(len(windows))
            windows = [windows[i] for i in order]
            return [w for w in windows if not (skip and is_blank(label, w))]
        if self.sampler is None:
            raise InputError(
                f"patching.mode {config.mode!r} needs a sampler to choose training windows: "
                "PatchSampler(config, create_sampler(config, registry))"
            )
        if locations is None and label is not None and (config.foreground_ratio > 0 or skip):
            locations = class_locations(np.asarray(label), rng)
        shape = tuple(int(n) for n in shape)
        windows = self.sampler.windows(
            shape,
            patch,
            config.samples_per_case,
            dict(locations or {}),
            rng,
            label=label,
            patching=config,
        )
        return [self._checked(w, shape, patch) for w in windows]

    def _checked(self, window: Any, shape: tuple[int, ...], patch: tuple[int, ...]) -> Window:
        """A sampler's window, as the loader needs it: patch-sized and touching the volume."""
        assert self.sampler is not None
        ok = (
            isinstance(window, tuple)
            and len(window) == len(shape)
            and all(isinstance(s, slice) and s.step in (None, 1) for s in window)
        )
        if ok:
            try:
                ok = all(
                    int(s.stop) - int(s.start) == p and int(s.stop) > 0 and int(s.start) < n
                    for s, p, n in zip(window, patch, shape, strict=True)
                )
            except (TypeError, ValueError):
                ok = False
        if not ok:
            raise PluginError(
                f"sampler {self.sampler.name!r} gave the window {window!r}; a window is a tuple "
                f"of {len(shape)} slices of the patch shape {patch} overlapping the volume {shape}"
            )
        return tuple(slice(int(s.start), int(s.stop)) for s in window)

    def extract(self, array_like: Any, window: Window, pad_value: float = 0.0) -> npt.NDArray[Any]:
        """``extract_patch``, with the slice axis dropped in ``slice`` mode (2D patches)."""
        patch = extract_patch(array_like, window, pad_value)
        if self.config.mode == "slice":
            patch = np.squeeze(patch, axis=self.config.slice_axis)
        return patch
