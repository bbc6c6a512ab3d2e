"""The training loader: seeded epoch plans, identical batches whatever the worker count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import miscore
from miscore.cache import CacheKey, CacheSettings, CaseCache, MemoryCache
from miscore.pipeline.loader import PatchLoader
from miscore.testing import synthetic_case


def config(**training: object) -> miscore.Config:
    return miscore.parse_config(
        {
            "data": {"classes": 3},
            "patching": {"mode": "random", "patch_shape": [16, 16, 8], "samples_per_case": 3},
            "augmentation": [{"name": "flip", "p": 0.5}, {"name": "rotate", "p": 0.5}],
            "training": {"batch_size": 4, "seed": 7, **training},
        }
    )


def cached_cases(store: CaseCache | MemoryCache, n: int = 4) -> list[object]:
    cases = []
    for i in range(n):
        case = synthetic_case(f"case_{i}", shape=(24 + i, 20, 12), classes=3, seed=i)
        cases.append(store.put(CacheKey(f"{i:040x}", case.id, {}), case))
    return cases


def augmentations(cfg: miscore.Config) -> list[miscore.Augmentation]:
    registry = miscore.PluginManager().registry
    return [registry.create("augmentation", spec) for spec in cfg.augmentation]


def epoch(loader: PatchLoader, index: int) -> list[tuple[np.ndarray, np.ndarray]]:
    try:
        return list(loader.epoch_batches(index))
    finally:
        loader.close()


@pytest.fixture
def disk_cache(tmp_path: Path) -> CaseCache:
    return CaseCache(tmp_path / "cache", CacheSettings(chunks=(8, 8, 8)))


def test_batches_have_the_patch_shape_and_one_hot_targets(disk_cache: CaseCache) -> None:
    cfg = config()
    loader = PatchLoader(cached_cases(disk_cache), cfg, augmentations(cfg), 3)
    assert loader.patch_shape == (16, 16, 8)
    assert loader.steps_per_epoch == 3  # 4 cases x 3 samples / batch 4
    batches = epoch(loader, 0)
    assert len(batches) == 3
    for x, y in batches:
        assert x.shape == (4, 16, 16, 8, 1) and x.dtype == np.float32
        assert y.shape == (4, 16, 16, 8, 3) and y.dtype == np.float32
        np.testing.assert_array_equal(y.sum(axis=-1), 1.0)


def test_same_seed_same_batches_with_one_and_four_workers(disk_cache: CaseCache) -> None:
    cfg = config()
    cases = cached_cases(disk_cache)
    where = {"cache_root": str(disk_cache.root), "cache_settings": disk_cache.settings}
    one = PatchLoader(cases, cfg, augmentations(cfg), 3, **where)
    four_cfg = config(workers=4)
    four = PatchLoader(cases, four_cfg, augmentations(four_cfg), 3, **where)
    assert four.workers == 4
    for index in (0, 1):
        for (x1, y1), (x4, y4) in zip(epoch(one, index), epoch(four, index), strict=True):
            np.testing.assert_array_equal(x1, x4)
            np.testing.assert_array_equal(y1, y4)


def test_epochs_differ_and_repeat_exactly(disk_cache: CaseCache) -> None:
    cfg = config()
    loader = PatchLoader(cached_cases(disk_cache), cfg, augmentations(cfg), 3)
    first, again, second = epoch(loader, 0), epoch(loader, 0), epoch(loader, 1)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, second, strict=True))


def test_memory_cache_gives_the_same_batches_as_the_disk_cache(
    disk_cache: CaseCache,
) -> None:
    cfg = config()
    on_disk = PatchLoader(cached_cases(disk_cache), cfg, augmentations(cfg), 3)
    in_memory = PatchLoader(cached_cases(MemoryCache(keep=8)), cfg, augmentations(cfg), 3)
    for (a, _), (b, _) in zip(epoch(on_disk, 3), epoch(in_memory, 3), strict=True):
        np.testing.assert_array_equal(a, b)


def test_slice_mode_gives_2d_batches(disk_cache: CaseCache) -> None:
    cfg = miscore.parse_config(
        {
            "data": {"classes": 3},
            "patching": {"mode": "slice", "slice_axis": 2, "samples_per_case": 2},
            "training": {"batch_size": 2},
        }
    )
    cases = [c for c in cached_cases(disk_cache) if c.spatial_shape[:2] == (24, 20)]
    loader = PatchLoader(cases, cfg, [], 3)
    assert loader.patch_shape == (24, 20)
    x, y = epoch(loader, 0)[0]
    assert x.shape == (2, 24, 20, 1) and y.shape == (2, 24, 20, 3)


def test_validation_patches_are_fixed_and_unaugmented(disk_cache: CaseCache) -> None:
    cfg = config()
    cases = cached_cases(disk_cache)
    loader = PatchLoader(cases[:2], cfg, augmentations(cfg), 3)
    first = loader.validation(cases[2:])
    again = loader.validation(cases[2:])
    assert first is not None and again is not None
    np.testing.assert_array_equal(first[0], again[0])
    assert first[0].shape == (4, 16, 16, 8, 1)  # 2 cases x 2 patches
    assert loader.validation([]) is None


def test_steps_per_epoch_beyond_one_pass_draws_fresh_samples(disk_cache: CaseCache) -> None:
    cfg = config(steps_per_epoch=7)
    loader = PatchLoader(cached_cases(disk_cache), cfg, [], 3)
    plan = loader.plan(0)
    assert len(plan) == 7 and all(len(batch) == 4 for batch in plan)
    windows = [(s.case, s.window) for batch in plan for s in batch]
    assert len(set(windows)) > 12  # more than one pass' worth of distinct windows


def test_slice_mode_without_patch_shape_refuses_mixed_slice_sizes(
    disk_cache: CaseCache,
) -> None:
    cfg = miscore.parse_config(
        {"data": {"classes": 3}, "patching": {"mode": "slice"}, "training": {"batch_size": 2}}
    )
    with pytest.raises(miscore.InputError, match="one slice size"):
        PatchLoader(cached_cases(disk_cache), cfg, [], 3)  # 24x20, 25x20, ... slices


def test_slice_mode_with_an_in_plane_patch(disk_cache: CaseCache) -> None:
    cfg = miscore.parse_config(
        {
            "data": {"classes": 3},
            "patching": {"mode": "slice", "patch_shape": [16, 16], "samples_per_case": 2},
            "training": {"batch_size": 2},
        }
    )
    loader = PatchLoader(cached_cases(disk_cache), cfg, [], 3)
    assert loader.patch_shape == (16, 16)
    x, y = epoch(loader, 0)[0]
    assert x.shape == (2, 16, 16, 1) and y.shape == (2, 16, 16, 3)


CENTRE_SAMPLER = '''
import miscore


class CentreSampler(miscore.Sampler):
    """Every training window in the middle of the case."""

    name = "centre"

    def windows(self, shape, patch_shape, count, foreground, rng, *, label, patching):
        starts = [(n - p) // 2 for n, p in zip(shape, patch_shape)]
        return [tuple(slice(a, a + p) for a, p in zip(starts, patch_shape))] * count


@miscore.hookimpl
def miscore_register_samplers():
    return [CentreSampler]
'''


def test_a_plugin_sampler_picks_the_windows_with_worker_processes_too(
    disk_cache: CaseCache, tmp_path: Path
) -> None:
    plugin = tmp_path / "centre_sampler.py"
    plugin.write_text(CENTRE_SAMPLER)
    cases = cached_cases(disk_cache)
    where = {
        "cache_root": str(disk_cache.root),
        "cache_settings": disk_cache.settings,
        "local_plugins": [str(plugin)],  # as `miscore train --plugin centre_sampler.py`
    }

    def centre_config(workers: int) -> miscore.Config:
        return miscore.parse_config(
            {
                "data": {"classes": 3},
                "patching": {
                    "mode": "random",
                    "patch_shape": [16, 16, 8],
                    "samples_per_case": 3,
                    "sampler": {"name": "centre"},
                },
                "training": {"batch_size": 4, "seed": 7, "workers": workers},
            }
        )

    default = PatchLoader(cases, config(), [], 3, **where)
    batches = {}
    for workers in (1, 2):
        loader = PatchLoader(cases, centre_config(workers), [], 3, **where)
        assert loader.workers == workers
        plan = loader.plan(0)
        for sample in (s for batch in plan for s in batch):
            shape = cases[sample.case].spatial_shape
            assert sample.window == tuple(
                ((n - p) // 2, (n - p) // 2 + p) for n, p in zip(shape, (16, 16, 8), strict=True)
            )
        batches[workers] = epoch(loader, 0)
        for batch, (x, _) in zip(plan, batches[workers], strict=True):
            for i, sample in enumerate(batch):
                window = tuple(slice(a, b) for a, b in sample.window)
                np.testing.assert_array_equal(x[i], np.asarray(cases[sample.case].image)[window])
    for (x1, y1), (x2, y2) in zip(batches[1], batches[2], strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # the default sampler's windows are random ones
    assert {s.window for batch in default.plan(0) for s in batch} != {
        s.window for batch in loader.plan(0) for s in batch
    }
