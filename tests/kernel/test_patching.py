"""Patch windows: grid coverage, padding, foreground oversampling, blank skipping, seeds,
and the samplers (plugins) that choose random and slice training windows."""

from __future__ import annotations

import functools
import math
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import miscore
from miscore.core.config import PatchingConfig
from miscore.pipeline.patching import (
    PatchSampler,
    class_locations,
    create_sampler,
    extract_patch,
    grid_windows,
    pick_foreground,
    sample_patch_slices,
    window_region,
)


@functools.cache
def installed() -> miscore.Registry:
    return miscore.PluginManager(disabled=(), trace=False).registry


def patch_sampler(config: PatchingConfig) -> PatchSampler:
    """What the loader uses: the sampler ``config`` names, or the plugins' default."""
    return PatchSampler(config, create_sampler(config, installed()))


def coverage(shape: tuple[int, ...], windows: list[tuple[slice, ...]]) -> np.ndarray:
    counts = np.zeros(shape, np.int32)
    for window in windows:
        in_volume, _ = window_region(window, shape)
        counts[in_volume] += 1
    return counts


@pytest.mark.parametrize(
    ("shape", "patch", "overlap"),
    [
        ((50, 37, 20), (16, 16, 8), 0.5),
        ((50, 37, 20), (16, 16, 8), 0.0),
        ((64, 64, 64), (32, 32, 32), 0.25),
        ((10, 37, 5), (16, 16, 8), 0.5),  # smaller than the patch on two axes
        ((30, 40), (12, 25), 0.33),
    ],
)
def test_grid_windows_cover_every_voxel(
    shape: tuple[int, ...], patch: tuple[int, ...], overlap: float
) -> None:
    windows = grid_windows(shape, patch, overlap)
    assert all(tuple(s.stop - s.start for s in w) == patch for w in windows)
    counts = coverage(shape, windows)
    assert counts.min() >= 1
    for axis, (n, p) in enumerate(zip(shape, patch, strict=True)):
        starts = sorted({w[axis].start for w in windows})
        if n >= p:
            assert starts[0] == 0 and starts[-1] == n - p  # last window aligned to the end
            steps = np.diff(starts)
            assert all(steps <= max(1, math.floor(p * (1 - overlap))))
        else:
            assert starts == [-((p - n) // 2)]  # one window, the volume centred in it


def test_grid_with_no_overlap_tiles_exactly() -> None:
    windows = grid_windows((32, 48, 16), (16, 16, 16), 0.0)
    assert len(windows) == 2 * 3 * 1
    assert coverage((32, 48, 16), windows).max() == 1


def test_extract_patch_pads_at_borders_and_reads_zarr(tmp_path: Path) -> None:
    volume = np.arange(10 * 12 * 6, dtype=np.float32).reshape(10, 12, 6, 1)
    store = zarr.open_array(
        tmp_path / "img.zarr", mode="w", shape=volume.shape, chunks=(4, 4, 4, 1), dtype="f4"
    )
    store[...] = volume
    (window,) = grid_windows((10, 12, 6), (16, 16, 8), 0.5)
    for source in (volume, store):
        patch = extract_patch(source, window, pad_value=-1.0)
        assert patch.shape == (16, 16, 8, 1)
        in_volume, in_patch = window_region(window, (10, 12, 6))
        assert np.array_equal(patch[in_patch], volume[in_volume])
        assert (patch == -1).sum() == 16 * 16 * 8 - volume.size
    # an inner window is read as is
    inner = (slice(2, 6), slice(0, 12), slice(1, 5))
    assert np.array_equal(extract_patch(store, inner), volume[2:6, :, 1:5])
    edge = extract_patch(volume, (slice(-2, 3), slice(0, 2), slice(0, 1)), mode="edge")
    assert np.array_equal(edge[0], volume[0, 0:2, 0:1])


def test_window_outside_the_volume_is_refused() -> None:
    with pytest.raises(miscore.InputError, match="outside"):
        extract_patch(np.zeros((4, 4, 4)), (slice(5, 9), slice(0, 4), slice(0, 4)))


def blob_label(shape: tuple[int, int, int] = (64, 64, 32)) -> np.ndarray:
    """A small cube of class 1 and a smaller one of class 2 in one corner."""
    label = np.zeros(shape, np.uint8)
    label[4:10, 4:10, 2:6] = 1
    label[50:53, 55:58, 25:27] = 2
    return label


def contains(label: np.ndarray, window: tuple[slice, ...], cls: int | None = None) -> bool:
    patch = extract_patch(label, window)
    return bool(np.any(patch > 0) if cls is None else np.any(patch == cls))


def test_class_locations_subsample_and_point_at_the_class() -> None:
    label = blob_label()
    locations = class_locations(label[..., None], np.random.default_rng(0), max_per_class=50)
    assert sorted(locations) == [1, 2]
    assert len(locations[1]) == 50  # 144 voxels, capped at 50
    assert len(locations[2]) == 18  # fewer than the cap: all
    for cls, voxels in locations.items():
        assert np.all(label[tuple(voxels.T)] == cls)
    assert pick_foreground({}, np.random.default_rng(0)) is None


@pytest.mark.parametrize(("ratio", "cls"), [(0.33, None), (0.5, 2), (0.0, 2)])
def test_foreground_share_follows_the_ratio(ratio: float, cls: int | None) -> None:
    label = blob_label()
    patch = (16, 16, 8)
    config = PatchingConfig(
        mode="random",
        patch_shape=list(patch),
        foreground_ratio=ratio,
        foreground_class=cls,
        samples_per_case=400,
    )
    sampler = patch_sampler(config)
    rng = np.random.default_rng(42)
    windows = sampler.training_windows(label.shape, rng, label=label)
    assert len(windows) == 400
    share = np.mean([contains(label, w, cls) for w in windows])
    # forced windows always hold the class, the others by chance
    q = random_hit_share(label, patch, cls)
    expected = ratio + (1 - ratio) * q
    sigma = math.sqrt(expected * (1 - expected) / len(windows))
    assert abs(share - expected) <= 4 * sigma + 1e-9, (share, expected, sigma)


def random_hit_share(label: np.ndarray, patch: tuple[int, ...], cls: int | None) -> float:
    """Share of all window positions that hold ``cls``, from a cumulative sum (exact)."""
    mask = (label > 0) if cls is None else (label == cls)
    summed = np.pad(mask.astype(np.int64), [(1, 0)] * 3).cumsum(0).cumsum(1).cumsum(2)
    a, b, c = patch
    n0, n1, n2 = (n - p + 1 for n, p in zip(label.shape, patch, strict=True))
    s = summed
    counts = (
        s[a : a + n0, b : b + n1, c : c + n2]
        - s[:n0, b : b + n1, c : c + n2]
        - s[a : a + n0, :n1, c : c + n2]
        - s[a : a + n0, b : b + n1, :n2]
        + s[:n0, :n1, c : c + n2]
        + s[:n0, b : b + n1, :n2]
        + s[a : a + n0, :n1, :n2]
        - s[:n0, :n1, :n2]
    )
    return float(np.mean(counts > 0))


def test_forced_windows_hold_the_chosen_class() -> None:
    label = blob_label()
    locations = class_locations(label, np.random.default_rng(0))
    rng = np.random.default_rng(3)
    for _ in range(200):
        voxels = pick_foreground(locations, rng, foreground_class=2)
        window = sample_patch_slices(label.shape, (16, 16, 8), rng, voxels)
        assert contains(label, window, 2)
        assert all(s.start >= 0 and s.stop <= n for s, n in zip(window, label.shape, strict=True))


def test_skip_blanks_never_yields_a_background_patch() -> None:
    label = blob_label()
    config = PatchingConfig(
        mode="random",
        patch_shape=[16, 16, 8],
        foreground_ratio=0.0,
        skip_blanks=True,
        samples_per_case=100,
    )
    windows = patch_sampler(config).training_windows(label.shape, np.random.default_rng(0), label)
    assert len(windows) == 100
    assert all(contains(label, w) for w in windows)
    grid = PatchingConfig(mode="grid", patch_shape=[16, 16, 8], skip_blanks=True, overlap=0.0)
    grid_kept = patch_sampler(grid).training_windows(label.shape, np.random.default_rng(0), label)
    assert 0 < len(grid_kept) < len(grid_windows(label.shape, (16, 16, 8), 0.0))
    assert all(contains(label, w) for w in grid_kept)
    blank = np.zeros_like(label)
    assert (
        patch_sampler(config).training_windows(label.shape, np.random.default_rng(0), blank) == []
    )


def test_same_seed_same_windows() -> None:
    label = blob_label()
    config = PatchingConfig(
        mode="random", patch_shape=[16, 16, 8], samples_per_case=30, skip_blanks=True
    )
    sampler = patch_sampler(config)

    def draw(seed: int) -> list[tuple[slice, ...]]:
        return sampler.training_windows(label.shape, np.random.default_rng(seed), label)

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_slice_mode_gives_2d_patches() -> None:
    label = blob_label()
    image = np.random.default_rng(0).normal(size=(*label.shape, 2)).astype(np.float32)
    config = PatchingConfig(
        mode="slice", slice_axis=2, foreground_ratio=1.0, foreground_class=2, samples_per_case=20
    )
    sampler = patch_sampler(config)
    assert sampler.patch_shape(label.shape) == (64, 64, 1)
    windows = sampler.training_windows(label.shape, np.random.default_rng(0), label)
    assert {w[2].start for w in windows} <= {25, 26}  # the slices holding class 2
    patch = sampler.extract(image, windows[0])
    assert patch.shape == (64, 64, 2)
    inference = sampler.inference_windows(label.shape)
    assert len(inference) == 32
    assert coverage(label.shape, inference).min() == 1
    in_plane = PatchingConfig(mode="slice", slice_axis=0, patch_shape=[32, 32])
    assert patch_sampler(in_plane).patch_shape(label.shape) == (1, 32, 32)


def test_full_mode_is_one_window() -> None:
    sampler = patch_sampler(PatchingConfig(mode="full"))
    assert sampler.training_windows((9, 8, 7), np.random.default_rng(0)) == [
        (slice(0, 9), slice(0, 8), slice(0, 7))
    ]
    assert len(sampler.inference_windows((9, 8, 7))) == 1


def test_patch_shape_must_match_the_volume() -> None:
    sampler = patch_sampler(PatchingConfig(mode="random", patch_shape=[16, 16]))
    with pytest.raises(miscore.InputError, match="3 spatial axes"):
        sampler.training_windows((32, 32, 32), np.random.default_rng(0))


# --- samplers: plugins choose the random and slice training windows ----------------------


def bounds(windows: list[tuple[slice, ...]]) -> list[tuple[tuple[int, int], ...]]:
    return [tuple((s.start, s.stop) for s in w) for w in windows]


def test_the_default_sampler_gives_the_windows_it_always_gave() -> None:
    # recorded with the sampler the kernel had before samplers were plugins
    assert installed().defaults["sampler"] == {"name": "foreground"}
    label = blob_label()
    config = PatchingConfig(
        mode="random",
        patch_shape=[16, 16, 8],
        samples_per_case=6,
        foreground_ratio=0.5,
        skip_blanks=True,
    )
    windows = patch_sampler(config).training_windows(
        label.shape, np.random.default_rng(2024), label
    )
    assert bounds(windows) == [
        ((4, 20), (1, 17), (5, 13)),
        ((48, 64), (45, 61), (20, 28)),
        ((2, 18), (0, 16), (1, 9)),
        ((47, 63), (45, 61), (21, 29)),
        ((41, 57), (48, 64), (19, 27)),
        ((0, 16), (1, 17), (0, 8)),
    ]
    slices = PatchingConfig(
        mode="slice",
        slice_axis=2,
        patch_shape=[32, 32],
        samples_per_case=3,
        foreground_ratio=1.0,
        foreground_class=2,
    )
    windows = patch_sampler(slices).training_windows(label.shape, np.random.default_rng(5), label)
    assert bounds(windows) == [
        ((32, 64), (32, 64), (26, 27)),
        ((32, 64), (32, 64), (25, 26)),
        ((32, 64), (32, 64), (25, 26)),
    ]
    named = config.model_copy(update={"sampler": miscore.ComponentSpec(name="foreground")})
    again = patch_sampler(named).training_windows(label.shape, np.random.default_rng(2024), label)
    assert again == windows_of(config, label, 2024)


def windows_of(config: PatchingConfig, label: np.ndarray, seed: int) -> list[tuple[slice, ...]]:
    return patch_sampler(config).training_windows(label.shape, np.random.default_rng(seed), label)


class CentreSampler(miscore.Sampler):
    """Every window in the middle of the volume (a test sampler)."""

    name = "centre"

    class Params(miscore.Params):
        shift: int = 0

    params: Params

    def windows(
        self,
        shape: tuple[int, ...],
        patch_shape: tuple[int, ...],
        count: int,
        foreground: Any,
        rng: np.random.Generator,
        *,
        label: Any,
        patching: miscore.PatchingConfig,
    ) -> list[tuple[slice, ...]]:
        starts = [(n - p) // 2 + self.params.shift for n, p in zip(shape, patch_shape, strict=True)]
        window = tuple(slice(a, a + p) for a, p in zip(starts, patch_shape, strict=True))
        return [window] * count


@pytest.fixture
def with_centre(installed_plugins: miscore.PluginManager) -> miscore.Registry:
    plugin = types.SimpleNamespace(
        miscore_register_samplers=miscore.hookimpl(lambda: [CentreSampler])
    )
    installed_plugins.register(plugin, "centre_sampler")
    return installed_plugins.registry


def test_a_plugin_sampler_chooses_the_training_windows(with_centre: miscore.Registry) -> None:
    label = blob_label()
    config = PatchingConfig(
        mode="random", patch_shape=[16, 16, 8], samples_per_case=4, sampler={"name": "centre"}
    )
    sampler = PatchSampler(config, create_sampler(config, with_centre))
    windows = sampler.training_windows(label.shape, np.random.default_rng(0), label)
    assert bounds(windows) == [((24, 40), (24, 40), (12, 20))] * 4
    shifted = config.model_copy(update={"sampler": {"name": "centre", "shift": 2}})
    sampler = PatchSampler(shifted, create_sampler(shifted, with_centre))
    assert bounds(sampler.training_windows(label.shape, np.random.default_rng(0)))[0] == (
        (26, 42),
        (26, 42),
        (14, 22),
    )
    # grid training windows and inference windows are not a sampler's
    grid = PatchingConfig(mode="grid", patch_shape=[32, 32, 32], sampler={"name": "centre"})
    every = PatchSampler(grid).training_windows(label.shape, np.random.default_rng(0))
    assert sorted(bounds(every)) == sorted(bounds(grid_windows(label.shape, (32, 32, 32), 0.5)))


def test_sampler_names_and_params_are_checked(with_centre: miscore.Registry) -> None:
    config = PatchingConfig(mode="random", patch_shape=[16, 16, 8], sampler={"name": "centr"})
    with pytest.raises(
        miscore.ComponentNotFoundError,
        match=r"patching\.sampler\.name: no sampler named 'centr' \(did you mean 'centre'\?\)",
    ):
        create_sampler(config, with_centre)
    typo = config.model_copy(update={"sampler": {"name": "foreground", "jiter": 0.1}})
    with pytest.raises(miscore.ConfigError, match=r"patching\.sampler\.foreground\.jiter"):
        create_sampler(typo, with_centre)


def test_a_sampler_giving_wrong_windows_is_named(with_centre: miscore.Registry) -> None:
    config = PatchingConfig(
        mode="random", patch_shape=[16, 16, 8], sampler={"name": "centre", "shift": 99}
    )
    sampler = PatchSampler(config, create_sampler(config, with_centre))
    with pytest.raises(miscore.PluginError, match="sampler 'centre' gave the window"):
        sampler.training_windows(blob_label().shape, np.random.default_rng(0))
