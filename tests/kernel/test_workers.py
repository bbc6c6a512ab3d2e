"""Loader worker processes get the session's components: the augmentation objects given to
``PatchLoader``, local plugins of the session's manager; what cannot reach them is refused."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import miscore
from miscore.cache import CacheKey, CacheSettings, CaseCache
from miscore.pipeline.loader import PatchLoader
from miscore.testing import synthetic_case


class StampParams(miscore.AugmentationParams):
    value: float = 5.0


class Stamp(miscore.Augmentation):
    """Sets every image voxel to ``value`` (a mark a batch shows)."""

    name = "stamp"
    Params = StampParams

    def augment(self, image: Any, label: Any, rng: np.random.Generator) -> Any:
        assert isinstance(self.params, StampParams)
        return np.full_like(image, self.params.value), label


class Crash(miscore.Augmentation):
    """Ends the process it runs in, unless it is the main one (a worker killed mid-batch)."""

    name = "crash"

    def augment(self, image: Any, label: Any, rng: np.random.Generator) -> Any:
        if multiprocessing.current_process().name != "MainProcess":
            os._exit(3)
        return image, label


#: a local plugin file: an augmentation that writes the process it ran in
PROCESS_MARK = '''
import multiprocessing
import numpy as np
import miscore


class MarkParams(miscore.AugmentationParams):
    value: float = 3.0


class ProcessMark(miscore.Augmentation):
    """Sets the image to ``value``; the worker's process name goes to the sample."""

    name = "process_mark"
    Params = MarkParams

    def augment(self, image, label, rng):
        assert multiprocessing.current_process().name != "MainProcess"
        return np.full_like(image, self.params.value), label


@miscore.hookimpl
def miscore_register_augmentations():
    return [ProcessMark]
'''


def config(workers: int, augmentation: list[Any] | None = None) -> miscore.Config:
    return miscore.parse_config(
        {
            "data": {"classes": 3},
            "patching": {"mode": "random", "patch_shape": [8, 8, 8], "samples_per_case": 2},
            "augmentation": augmentation or [],
            "training": {"batch_size": 2, "seed": 3, "workers": workers},
        }
    )


@pytest.fixture
def disk_cases(tmp_path: Path) -> tuple[CaseCache, list[Any]]:
    cache = CaseCache(tmp_path / "cache", CacheSettings(chunks=(8, 8, 8)))
    cases = []
    for i in range(2):
        case = synthetic_case(f"case_{i}", shape=(16, 16, 12), classes=3, seed=i)
        cases.append(cache.put(CacheKey(f"{i:040x}", case.id, {}), case))
    return cache, cases


def first_epoch(loader: PatchLoader) -> list[tuple[np.ndarray, np.ndarray]]:
    try:
        return list(loader.epoch_batches(0))
    finally:
        loader.close()


def test_augmentation_objects_given_to_the_loader_run_in_its_workers(
    disk_cases: tuple[CaseCache, list[Any]],
) -> None:
    cache, cases = disk_cases
    # the config names no augmentation: the workers must use the objects, not the config
    loader = PatchLoader(
        cases,
        config(workers=2),
        [Stamp(p=1.0, value=5.0)],
        3,
        cache_root=str(cache.root),
        cache_settings=cache.settings,
        plugins=miscore.PluginManager(),
    )
    assert loader.workers == 2
    batches = first_epoch(loader)
    assert batches
    for x, _ in batches:
        np.testing.assert_array_equal(x, 5.0)


def load_module_from_file(name: str, path: Path) -> ModuleType:
    """A module made from a file outside ``sys.path``, as an embedding program may do."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("how", ["local_plugins", "register"])
def test_a_local_plugin_of_the_session_manager_reaches_the_workers(
    disk_cases: tuple[CaseCache, list[Any]], tmp_path: Path, how: str
) -> None:
    cache, cases = disk_cases
    plugin = tmp_path / f"process_mark_{how}.py"
    plugin.write_text(PROCESS_MARK)
    if how == "local_plugins":  # as --plugin FILE
        manager = miscore.PluginManager(local_plugins=[str(plugin)])
    else:  # a module the program made from a file, registered from Python
        manager = miscore.PluginManager()
        manager.register(load_module_from_file(f"marks_{tmp_path.name}", plugin))
    cfg = config(workers=2, augmentation=[{"name": "process_mark", "p": 1.0, "value": 3.0}])
    mark = manager.registry.create("augmentation", cfg.augmentation[0])
    # no local_plugins= here: the workers recreate the object the loader is given
    loader = PatchLoader(
        cases, cfg, [mark], 3, cache_root=str(cache.root), cache_settings=cache.settings,
        plugins=manager,
    )  # fmt: skip
    for x, _ in first_epoch(loader):
        np.testing.assert_array_equal(x, 3.0)


def test_the_sampler_comes_from_the_session_manager(
    disk_cases: tuple[CaseCache, list[Any]],
) -> None:
    _, cases = disk_cases

    class Corner(miscore.Sampler):
        """Always the first window."""

        name = "corner_of_this_session"

        def windows(
            self, shape: Any, patch_shape: Any, count: int, foreground: Any, rng: Any, **_: Any
        ) -> Any:
            return [tuple(slice(0, p) for p in patch_shape)] * count

    class Session:
        @miscore.hookimpl
        def miscore_register_samplers(self) -> list[type[miscore.Sampler]]:
            return [Corner]

    manager = miscore.PluginManager()
    manager.register(Session(), "this_session")
    cfg = miscore.parse_config(
        {
            "data": {"classes": 3},
            "patching": {
                "mode": "random",
                "patch_shape": [8, 8, 8],
                "sampler": "corner_of_this_session",
            },
        }
    )
    loader = PatchLoader(cases, cfg, [], 3, plugins=manager)
    windows = {s.window for batch in loader.plan(0) for s in batch}
    assert windows == {((0, 8), (0, 8), (0, 8))}


def test_an_augmentation_that_cannot_be_sent_to_a_worker_is_refused(
    disk_cases: tuple[CaseCache, list[Any]],
) -> None:
    cache, cases = disk_cases

    class Local(miscore.Augmentation):  # a class inside a function: not importable
        """Does nothing."""

        name = "local_nothing"

        def augment(self, image: Any, label: Any, rng: np.random.Generator) -> Any:
            return image, label

    with pytest.raises(miscore.ConfigError) as caught:
        PatchLoader(
            cases, config(workers=2), [Local()], 3, cache_root=str(cache.root),
            cache_settings=cache.settings, plugins=miscore.PluginManager(),
        )  # fmt: skip
    message = str(caught.value)
    assert message.startswith("training.workers: augmentation 'local_nothing'"), message
    assert "workers: 1" in message and "--plugin" in message
    assert "\n" not in message
    # one worker (a thread) takes it
    loader = PatchLoader(
        cases, config(workers=1), [Local()], 3, cache_root=str(cache.root),
        cache_settings=cache.settings, plugins=miscore.PluginManager(),
    )  # fmt: skip
    assert len(first_epoch(loader)) == loader.steps_per_epoch


def test_a_worker_that_dies_is_reported_not_broken_process_pool(
    disk_cases: tuple[CaseCache, list[Any]],
) -> None:
    cache, cases = disk_cases
    loader = PatchLoader(
        cases, config(workers=2), [Crash(p=1.0)], 3, cache_root=str(cache.root),
        cache_settings=cache.settings, plugins=miscore.PluginManager(),
    )  # fmt: skip
    with pytest.raises(miscore.PipelineError, match="a loader worker process ended abruptly"):
        first_epoch(loader)


def write_dataset(root: Path) -> Path:
    return miscore.synthesize(root, cases=2, shape=(16, 16, 16), classes=2, seed=1).root


def api_pipeline(augmentation: list[Any], **overrides: Any) -> miscore.Pipeline:
    return miscore.Pipeline(
        {
            "model": {"architecture": {"name": "unet", "filters": 2, "depth": 1}},
            "training": {"validation_split": 0.0},
        },
        classes=2,
        patch_shape=(8, 8, 8),
        epochs=1,
        batch_size=2,
        augmentation=augmentation,
        **overrides,
    )


def test_an_api_session_augmentation_object_is_refused_with_the_reason(tmp_path: Path) -> None:
    """``Pipeline(augmentation=[obj])`` registers ``obj`` for this session only, under a class
    made at run time: a worker process cannot recreate it, and training says so before any
    work (not ``BrokenProcessPool`` mid-epoch)."""
    data = write_dataset(tmp_path / "data")
    pipeline = api_pipeline([Stamp(p=1.0, value=2.0)], workers=2)
    with pytest.raises(miscore.ConfigError) as caught:
        pipeline.train(data, out=tmp_path / "model", cache=str(tmp_path / "cache"))
    message = str(caught.value)
    assert message.startswith("training.workers: augmentation 'python_augmentation_"), message
    assert "(SessionStamp object)" in message and "made at run time" in message
    assert "training.workers: 1" in message and "--plugin FILE" in message
    assert not any((tmp_path / "cache" / "entries").iterdir())  # before the cache was built
    assert not (tmp_path / "model" / "model.keras").exists()


def test_an_object_holding_state_its_params_do_not_recreate_is_refused(
    disk_cases: tuple[CaseCache, list[Any]],
) -> None:
    cache, cases = disk_cases
    stamp = Stamp(p=1.0)
    stamp.table = np.arange(3)  # type: ignore[attr-defined]  # set after construction
    with pytest.raises(
        miscore.ConfigError, match=r"attributes its params do not recreate \(table\)"
    ):
        PatchLoader(
            cases, config(workers=2), [stamp], 3, cache_root=str(cache.root),
            cache_settings=cache.settings, plugins=miscore.PluginManager(),
        )  # fmt: skip
