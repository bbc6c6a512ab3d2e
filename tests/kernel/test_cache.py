"""The zarr cache of preprocessed cases: keys, hits and misses, crashes, concurrency, storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import zarr
from pydantic import Field

import miscore
from miscore.cache import (
    CACHE_ENV,
    CacheSettings,
    CaseCache,
    Compression,
    MemoryCache,
    open_cache,
    pipeline_fingerprint,
    resolve_cache_location,
    split_cacheable,
)
from miscore.cache.chunkread import CompressedArray
from miscore.testing import oblique_affine, synthetic_case

# --- a stand-in preprocessing plugin and input files ------------------------------------


class Scale(miscore.Subfunction):
    """Multiply the image by a factor (a deterministic step with inverse state)."""

    name = "test_scale"

    class Params(miscore.Params):
        factor: float = Field(1.0, description="multiplier")

    def preprocess(self, case: miscore.Case, training: bool) -> miscore.Case:
        factor = self.params.factor  # type: ignore[attr-defined]
        out = miscore.Case(
            case.id, case.image.with_array(case.image.array * factor), case.label, dict(case.meta)
        )
        self.set_state(out, {"factor": factor, "original_shape": list(case.image.spatial_shape)})
        return out


def make_plugin(version: str) -> types.ModuleType:
    module = types.ModuleType("cache_test_plugin")

    @miscore.hookimpl
    def miscore_register_subfunctions() -> list[type[miscore.Subfunction]]:
        return [Scale]

    module.miscore_register_subfunctions = miscore_register_subfunctions  # type: ignore[attr-defined]
    module.__version__ = version  # type: ignore[attr-defined]
    return module


def save_case(case: miscore.Case, folder: Path) -> Path:
    """Write a case as an ``.npz`` input file (image, label, affine)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case.id}.npz"
    assert case.label is not None
    np.savez(path, image=case.image.array, label=case.label.array, affine=case.image.affine)
    return path


def load_case(path: Path) -> miscore.Case:
    with np.load(path, allow_pickle=False) as data:
        image = miscore.Volume(data["image"], data["affine"])
        label = miscore.Volume(data["label"], data["affine"])
    return miscore.Case(path.name.removesuffix(".npz"), image, label)


class Pipeline:
    """Reads an input file and runs the steps, counting how often it had to."""

    def __init__(self, manager: miscore.PluginManager, factor: float = 1.0) -> None:
        self.manager = manager
        self.steps = [
            manager.registry.create("subfunction", {"name": "test_scale", "factor": factor})
        ]
        self.builds = 0

    def fingerprint(self) -> dict[str, Any]:
        return pipeline_fingerprint(self.steps, self.manager, training=True, classes=3)

    def build(self, path: Path) -> miscore.Case:
        self.builds += 1
        case = load_case(path)
        for step in self.steps:
            case = step.preprocess(case, training=True)
        return case

    def get(self, cache: miscore.cache.CaseStore, path: Path) -> miscore.cache.CachedCase:
        key = cache.key(path.name.removesuffix(".npz"), [path], self.fingerprint())
        return cache.get_or_build(key, lambda: self.build(path))


@pytest.fixture
def manager(plugin_manager: miscore.PluginManager) -> miscore.PluginManager:
    plugin_manager.register(make_plugin("1.0"), "cachetest", version="1.0")
    return plugin_manager


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    return save_case(synthetic_case("case_001", shape=(24, 20, 12), classes=3), tmp_path / "data")


# --- hits and misses --------------------------------------------------------------------


def test_second_run_hits_and_reads_the_same_case(
    tmp_path: Path, manager: miscore.PluginManager, input_file: Path
) -> None:
    pipeline = Pipeline(manager, factor=2.0)
    first = pipeline.get(CaseCache(tmp_path / "cache"), input_file)
    again = pipeline.get(CaseCache(tmp_path / "cache"), input_file)  # a new process, in effect
    assert pipeline.builds == 1
    assert first.key == again.key
    original = load_case(input_file)
    np.testing.assert_array_equal(again.image[...], original.image.array * 2.0)
    assert again.label is not None
    np.testing.assert_array_equal(again.label[...], original.label.array)  # type: ignore[union-attr]
    info = CaseCache(tmp_path / "cache").info()
    assert (info.entries, info.hits, info.misses, info.hit_rate) == (1, 1, 1, 0.5)


def test_changing_a_preprocessing_parameter_misses(
    tmp_path: Path, manager: miscore.PluginManager, input_file: Path
) -> None:
    cache = CaseCache(tmp_path / "cache")
    one = Pipeline(manager, factor=1.0).get(cache, input_file)
    pipeline = Pipeline(manager, factor=3.0)
    three = pipeline.get(cache, input_file)
    assert pipeline.builds == 1
    assert one.key != three.key
    np.testing.assert_allclose(three.image[...], one.image[...] * 3.0, rtol=1e-6)
    assert three.meta["steps"]["test_scale"]["factor"] == 3.0
    # Defaults are filled in before hashing: `factor: 1.0` written out is the same entry.
    same = Pipeline(manager)
    same.steps = [manager.registry.create("subfunction", "test_scale")]
    assert same.get(cache, input_file).key == one.key and same.builds == 0


def test_a_new_plugin_version_misses(
    tmp_path: Path, manager: miscore.PluginManager, input_file: Path
) -> None:
    cache = CaseCache(tmp_path / "cache")
    old = Pipeline(manager).get(cache, input_file)
    manager.unregister("cachetest")
    manager.register(make_plugin("1.1"), "cachetest", version="1.1")
    pipeline = Pipeline(manager)
    assert pipeline.fingerprint()["plugins"] == {"cachetest": "1.1"}
    new = pipeline.get(cache, input_file)
    assert pipeline.builds == 1 and new.key != old.key
    assert len(cache.entries()) == 2


def test_touching_the_input_misses_unless_keyed_by_content(
    tmp_path: Path, manager: miscore.PluginManager, input_file: Path
) -> None:
    by_stat = CaseCache(tmp_path / "stat")
    by_content = CaseCache(tmp_path / "content", CacheSettings(content_hash=True))
    pipeline = Pipeline(manager)
    before = [pipeline.get(c, input_file).key for c in (by_stat, by_content)]
    stat = input_file.stat()
    os.utime(input_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = [pipeline.get(c, input_file).key for c in (by_stat, by_content)]
    assert after[0] != before[0]  # mtime changed: rebuilt
    assert after[1] == before[1]  # same bytes: still a hit
    assert pipeline.builds == 3
    # New bytes miss in both modes.
    case = load_case(input_file)
    case.image.array[0, 0, 0, 0] += 1.0
    save_case(case, input_file.parent)
    assert pipeline.get(by_content, input_file).key != before[1]
    assert pipeline.builds == 4


def test_cache_settings_are_part_of_the_key(
    tmp_path: Path, manager: miscore.PluginManager, input_file: Path
) -> None:
    pipeline = Pipeline(manager)
    keys = {
        pipeline.get(CaseCache(tmp_path / "c", settings), input_file).key
        for settings in (
            CacheSettings(),
            CacheSettings(compression="zstd"),
            CacheSettings(float16=True),
        )
    }
    assert len(keys) == 3 and pipeline.builds == 3
    # the chunk shape (from the patch) changes how an entry is stored, not what it holds:
    # another patch size reuses the entries
    rechunked = pipeline.get(CaseCache(tmp_path / "c", CacheSettings(chunks=(8, 8, 8))), input_file)
    assert rechunked.key in keys and pipeline.builds == 3


def test_a_non_deterministic_step_is_refused(manager: miscore.PluginManager) -> None:
    class Noisy(Scale):
        deterministic: ClassVar[bool] = False

    with pytest.raises(miscore.InputError, match="not deterministic"):
        pipeline_fingerprint([Noisy()], manager, training=True)
    first, noisy, last = Scale(factor=2.0), Noisy(), Scale()
    assert split_cacheable([first, noisy, last]) == ([first], [noisy, last])
    assert split_cacheable([first, last]) == ([first, last], [])


# --- what is stored ---------------------------------------------------------------------


def test_meta_affine_and_arrays_round_trip_exactly(tmp_path: Path) -> None:
    case = synthetic_case("oblique", shape=(20, 18, 10), classes=3, oblique=True)
    affine = oblique_affine(spacing=(0.7, 0.9123456789, 3.3), angles_deg=(11.1, -7.3, 29.9))
    case.image.affine = affine
    case.label.affine = affine  # type: ignore[union-attr]
    case.image.meta = {"dtype": "int16", "scl_slope": 0.1, "descrip": "CT ÄÖ"}
    case.meta = {
        "steps": {"0.resample": {"spacing": [1 / 3, 0.1, 2.5e-7], "shape": [512, 512, 97]}},
        "source": {"uid": "1.2.840.113619.2.55.3", "big": 2**53 + 1, "flag": True, "none": None},
    }
    cache = CaseCache(tmp_path / "cache")
    key = cache.key(case.id, [], {"stand-in": "identity"})
    cached = cache.put(key, case)
    back = cache.get(key)
    assert back is not None and back.key == cached.key
    assert isinstance(back.image, zarr.Array)  # lazily sliceable
    assert np.array_equal(back.affine, affine)  # bit-exact float64
    assert back.label_affine is not None and np.array_equal(back.label_affine, affine)
    assert back.meta == case.meta
    assert back.image_meta == case.image.meta
    restored = back.to_case()
    np.testing.assert_array_equal(restored.image.array, case.image.array.astype(np.float32))
    np.testing.assert_array_equal(restored.label.array, case.label.array)  # type: ignore[union-attr]
    assert restored.label.array.dtype == np.uint8  # type: ignore[union-attr]
    assert restored.image.spacing == pytest.approx(case.image.spacing, abs=0)


def test_patches_read_from_chunks_equal_the_array(tmp_path: Path) -> None:
    case = synthetic_case("patchy", shape=(40, 36, 20), classes=2)
    cache = CaseCache(tmp_path / "cache", CacheSettings(chunks=(16, 16, 16)))
    cached = cache.put(cache.key(case.id, [], {}), case)
    assert isinstance(cached.image, zarr.Array)
    assert cached.image.chunks == (16, 16, 16, 1)
    assert isinstance(cached.label, zarr.Array) and cached.label.chunks == (16, 16, 16, 1)
    rng = np.random.default_rng(3)
    for _ in range(5):
        lo = [int(rng.integers(0, n - 8)) for n in (40, 36, 20)]
        box = tuple(slice(a, a + 8) for a in lo)
        np.testing.assert_array_equal(cached.image[box], case.image.array[box])
        np.testing.assert_array_equal(cached.label[box], case.label.array[box])  # type: ignore[union-attr]


def test_foreground_coordinates_lie_in_their_class(tmp_path: Path) -> None:
    case = synthetic_case("fg", shape=(30, 30, 16), classes=3)
    label = case.label.array[..., 0]  # type: ignore[union-attr]
    settings = CacheSettings(foreground_samples=50, seed=7)
    cache = CaseCache(tmp_path / "cache", settings)
    key = cache.key(case.id, [], {})
    cached = cache.put(key, case)
    assert sorted(cached.foreground) == [1, 2]
    for k, coords in cached.foreground.items():
        assert coords.shape == (min(50, int((label == k).sum())), 3)
        assert coords.dtype == np.int32
        assert np.all(label[tuple(coords.T)] == k)
        assert len({tuple(c) for c in coords}) == len(coords)  # no repeats
    assert cached.class_voxels == {k: int((label == k).sum()) for k in range(3)}
    # Same seed, same subset (in another cache, as after `cache clear`).
    again = CaseCache(tmp_path / "other", settings).put(key, case)
    for k in cached.foreground:
        np.testing.assert_array_equal(again.foreground[k], cached.foreground[k])
    # Coordinates given by the caller are stored as given.
    given = {1: [[1, 2, 3], [4, 5, 6]]}
    mine = CaseCache(tmp_path / "mine").put(key, case, foreground=given)
    np.testing.assert_array_equal(mine.foreground[1], np.array(given[1]))
    assert list(mine.foreground) == [1]


def test_float16_halves_the_image_bytes(tmp_path: Path) -> None:
    case = synthetic_case("half", shape=(32, 32, 16), classes=2)
    sizes = {}
    for half in (False, True):
        cache = CaseCache(tmp_path / str(half), CacheSettings(float16=half, compression="none"))
        cached = cache.put(cache.key(case.id, [], {}), case)
        folder = cache.entry_path(cached.key) / "case.zarr" / "image" / "c"
        sizes[half] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert cached.image.dtype == (np.float16 if half else np.float32)
        np.testing.assert_allclose(cached.image[...], case.image.array, rtol=1e-3, atol=0.05)
    assert sizes[True] * 2 == sizes[False] == 32 * 32 * 16 * 4


def test_float16_refuses_values_it_cannot_hold(tmp_path: Path) -> None:
    case = synthetic_case("hot")
    case.image.array[0, 0, 0, 0] = 1e5
    cache = CaseCache(tmp_path / "cache", CacheSettings(float16=True))
    with pytest.raises(miscore.PipelineError, match="float16"):
        cache.put(cache.key(case.id, [], {}), case)
    assert cache.entries() == [] and cache.info().temp_folders == 0


def test_compression_makes_the_cache_smaller_than_raw_float32(tmp_path: Path) -> None:
    case = synthetic_case("small", shape=(48, 48, 24), classes=3)
    ratios = {}
    codecs: tuple[Compression, ...] = ("zstd", "lz4", "none")
    for codec in codecs:
        cache = CaseCache(tmp_path / codec, CacheSettings(compression=codec))
        cache.put(cache.key(case.id, [], {}), case)
        ratios[codec] = cache.info().ratio
    # Uncompressed, a uint8 label takes a quarter of its float32 size: (4 + 1) / 8 of raw.
    assert ratios["none"] is not None and 0.62 < ratios["none"] < 0.7
    # Even on this noisy float image, zstd keeps the cache under half of raw float32.
    assert ratios["zstd"] is not None and ratios["zstd"] < min(0.5, ratios["none"])
    assert ratios["lz4"] is not None and ratios["lz4"] < ratios["none"]


def test_memory_mode_serves_the_same_interface(
    tmp_path: Path, manager: miscore.PluginManager, input_file: Path
) -> None:
    pipeline = Pipeline(manager, factor=2.0)
    on_disk = pipeline.get(CaseCache(tmp_path / "cache"), input_file)
    memory = MemoryCache(keep=1)
    in_memory = pipeline.get(memory, input_file)
    assert pipeline.builds == 2
    # held compressed, like the disk entry, and read the same way
    assert isinstance(in_memory.image, CompressedArray)
    assert in_memory.image.nbytes_stored < np.asarray(on_disk.image).nbytes
    assert in_memory.key == on_disk.key
    np.testing.assert_array_equal(in_memory.image[2:9, 3:7], on_disk.image[2:9, 3:7])
    assert in_memory.meta == on_disk.meta
    assert np.array_equal(in_memory.affine, on_disk.affine)
    for k in on_disk.foreground:
        np.testing.assert_array_equal(in_memory.foreground[k], on_disk.foreground[k])
    pipeline.get(memory, input_file)
    assert pipeline.builds == 2 and (memory.hits, memory.misses) == (1, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data"]  # nothing written


def test_open_cache_follows_the_config(tmp_path: Path) -> None:
    config = miscore.parse_config(
        {
            "cache": {"path": str(tmp_path / "c"), "compression": "lz4", "float16": True},
            "patching": {"mode": "random", "patch_shape": [128, 32, 16]},
        }
    )
    cache = open_cache(config)
    assert isinstance(cache, CaseCache) and cache.root == tmp_path / "c"
    assert cache.settings.chunks == (64, 32, 16) and cache.settings.float16
    # A new training seed keeps the cache (the settings, hence the keys, are unchanged).
    config.training.seed = 123
    assert open_cache(config).settings == cache.settings
    config.cache.enabled = False
    assert isinstance(open_cache(config), MemoryCache)


def test_cache_location_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = miscore.parse_config({"cache": {"path": str(tmp_path / "from_config")}})
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert resolve_cache_location(config) == str(tmp_path / "from_config")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "from_env"))
    assert resolve_cache_location(config) == str(tmp_path / "from_env")
    assert resolve_cache_location(config, str(tmp_path / "cli")) == str(tmp_path / "cli")
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_location(miscore.Config()) == str(tmp_path / "xdg" / "miscore")
    assert resolve_cache_location(None, "~/c") == str(tmp_path / "home" / "c")


# --- crashes and concurrency ------------------------------------------------------------

RACE_SETTINGS = CacheSettings(chunks=(8, 8, 8))
WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    import miscore, miscore.cache as mc, miscore.cache.local as local
    from miscore.testing import synthetic_case

    root, mode, flag = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    case = synthetic_case("race", shape=(48, 40, 24), classes=3)
    cache = mc.CaseCache(root, mc.CacheSettings(chunks=(8, 8, 8)))
    key = cache.key(case.id, [], {"stand-in": 1})
    if mode == "hang":
        def hang(folder, marker):  # every array is written; the marker never is
            flag.write_text(str(folder))
            time.sleep(120)
        local._write_marker = hang
    else:  # wait for the other writer so that both write at once
        flag.with_suffix("." + mode).write_text("ready")
        while len(list(flag.parent.glob(flag.name + ".*"))) < 2:
            time.sleep(0.01)
    cached = cache.put(key, case)
    print(cached.key, float(np.asarray(cached.image[...]).sum()))
    """
)


def run_writer(tmp_path: Path, root: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen(
        [sys.executable, str(script), str(root), mode, str(tmp_path / "flag")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_killed_build_is_never_trusted_and_is_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    writer = run_writer(tmp_path, root, "hang")
    flag = tmp_path / "flag"
    deadline = time.monotonic() + 60
    while not flag.exists() and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists(), writer.communicate()[1]
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL
    half_built = Path(flag.read_text())
    assert (half_built / "case.zarr" / "image" / "zarr.json").exists()  # the data was there...
    cache = CaseCache(root, RACE_SETTINGS)
    case = synthetic_case("race", shape=(48, 40, 24), classes=3)
    key = cache.key(case.id, [], {"stand-in": 1})
    assert half_built.name.startswith(key.digest)  # the same entry was being built
    assert cache.get(key) is None  # ...but no entry is trusted
    assert cache.entries() == [] and cache.info().temp_folders == 1
    rebuilt = cache.get_or_build(key, lambda: case)
    np.testing.assert_array_equal(rebuilt.image[...], case.image.array)
    assert [e.key for e in cache.entries()] == [key.digest]
    # The leftover is removed once old (on open after `stale_temp_hours`, or by clean_temp).
    assert CaseCache(root, RACE_SETTINGS, stale_temp_hours=1).info().temp_folders == 1
    assert cache.clean_temp(older_than_s=0) == 1 and not half_built.exists()


def test_two_concurrent_writers_leave_one_valid_entry(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    writers = [run_writer(tmp_path, root, mode) for mode in ("a", "b")]
    outputs = [w.communicate(timeout=120) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [o[1] for o in outputs]
    results = {tuple(out.split()) for out, _ in outputs}
    assert len(results) == 1  # same key, same data for both
    cache = CaseCache(root, RACE_SETTINGS)
    assert len(cache.entries()) == 1
    assert cache.info().temp_folders == 0  # the loser discarded its copy
    case = synthetic_case("race", shape=(48, 40, 24), classes=3)
    key = cache.key(case.id, [], {"stand-in": 1})
    cached = cache.get(key)
    assert cached is not None
    np.testing.assert_array_equal(cached.image[...], case.image.array)
    # A writer that loses the rename (here, deterministically) keeps the winner's entry.
    winner = (cache.entry_path(key) / "complete.json").read_text()
    assert cache.put(key, case).key == key.digest
    assert (cache.entry_path(key) / "complete.json").read_text() == winner
    assert len(cache.entries()) == 1 and cache.info().temp_folders == 0


def test_an_entry_without_its_marker_is_replaced(tmp_path: Path) -> None:
    case = synthetic_case("copied")
    cache = CaseCache(tmp_path / "cache")
    key = cache.key(case.id, [], {})
    cache.put(key, case)
    marker = cache.entry_path(key) / "complete.json"
    # A marker naming another key (a folder renamed by hand) is not trusted either.
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "key": "0" * 40}))
    assert cache.get(key) is None
    marker.unlink()
    assert cache.get(key) is None and cache.entries() == []
    rebuilt = cache.get_or_build(key, lambda: case)
    assert rebuilt.key == key.digest and cache.get(key) is not None


def test_clear_removes_entries_by_last_use(tmp_path: Path) -> None:
    cache = CaseCache(tmp_path / "cache")
    keys = []
    for i in range(3):
        case = synthetic_case(f"case_{i}", seed=i)
        keys.append(cache.key(case.id, [], {}))
        cache.put(keys[-1], case)
    old = time.time() - 10 * 86400
    for key in keys[:2]:
        os.utime(cache.entry_path(key) / "complete.json", (old, old))
    assert cache.clear(older_than_days=5) == 2
    assert [e.case_id for e in cache.entries()] == ["case_2"]
    assert cache.clear() == 1 and cache.entries() == []
    assert cache.info().stored_bytes == 0


# --- the command line -------------------------------------------------------------------


def test_cli_info_and_clear(tmp_path: Path) -> None:
    from tests.cli.helpers import assert_one_line_error, run_cli

    cache = CaseCache(tmp_path / "cache")
    for i in range(2):
        case = synthetic_case(f"case_{i}", seed=i)
        cache.get_or_build(cache.key(case.id, [], {}), lambda case=case: case)
    cache.get_or_build(cache.key("case_0", [], {}), lambda: synthetic_case("case_0"))
    env = {CACHE_ENV: str(tmp_path / "cache")}
    result = run_cli("cache", "info", "--json", env=env)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["entries"], info["cases"], info["hits"], info["misses"]) == (2, 2, 1, 2)
    assert 0 < info["stored_bytes"] < info["raw_float32_bytes"]
    text = run_cli("cache", "info", "--cache", str(tmp_path / "cache"))
    assert "entries: 2 (2 cases)" in text.stdout and "hit rate: 33%" in text.stdout
    kept = run_cli("cache", "clear", "--older-than", "1", env=env)
    assert kept.returncode == 0 and "removed 0 entries" in kept.stderr
    cleared = run_cli("cache", "clear", env=env)
    assert cleared.returncode == 0 and "removed 2 entries" in cleared.stderr
    assert CaseCache(tmp_path / "cache").info().entries == 0
    assert_one_line_error(run_cli("cache", "info", "--config", str(tmp_path / "missing.yaml")))


def test_cli_build_in_shards_with_workers_then_hits(
    tmp_path: Path, installed_plugins: miscore.PluginManager
) -> None:
    from miscore.cache import cache_dataset_case
    from miscore.data.dataset import Dataset
    from miscore.data.preprocess import build_steps
    from miscore.tools.synth import write_dataset
    from tests.cli.helpers import assert_one_line_error, run_cli

    data = tmp_path / "data"
    write_dataset(data, installed_plugins.registry, n_cases=5, shape=(24, 24, 16), classes=3)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        "data: {classes: 3}\n"
        "preprocessing: [{name: clip, min: -200, max: 300}, zscore]\n"
        "patching: {mode: random, patch_shape: [16, 16, 16]}\n"
    )
    cache = tmp_path / "cache"
    shard0 = run_cli(
        "cache", "build", config_file, "--data", data, "--shard", "0/2", "--cache", cache
    )
    assert shard0.returncode == 0, shard0.stderr
    assert "built 3, cached 0, failed 0" in shard0.stderr  # cases 0, 2, 4
    both = run_cli(
        "cache", "build", config_file, "--data", data, "--workers", "2", env={CACHE_ENV: str(cache)}
    )
    assert both.returncode == 0, both.stderr
    assert "built 2, cached 3, failed 0" in both.stderr
    info = CaseCache(cache).info()
    assert (info.entries, info.cases, info.temp_folders) == (5, 5, 0)
    # Training keys cases the same way: every case is now a hit, preprocessed as configured.
    config = miscore.load_config(config_file)
    store = open_cache(config, str(cache))
    dataset = Dataset.discover(data, installed_plugins.registry)
    steps = build_steps(config.preprocessing, installed_plugins.registry)
    for case_id in dataset.ids:
        entry, hit = cache_dataset_case(store, dataset, case_id, steps, installed_plugins, config)
        assert hit
        image = np.asarray(entry.image[...], dtype=np.float64)
        assert abs(image.mean()) < 1e-3 and abs(image.std() - 1) < 1e-3  # zscore
        assert entry.image.chunks == (16, 16, 16, 1)  # type: ignore[attr-defined]
        source = dataset.source(case_id)
        assert entry.meta["source"]["images"] == [str(p) for p in source.images]
        assert set(entry.foreground) <= {1, 2} and entry.foreground
    # Bad input is one line, exit code 2.
    assert_one_line_error(
        run_cli("cache", "build", config_file, "--data", data, "--shard", "2/2", "--cache", cache)
    )
    off = tmp_path / "off.yaml"
    off.write_text("cache: {enabled: false}\n")
    error = assert_one_line_error(run_cli("cache", "build", off, "--data", data))
    assert "cache.enabled is false" in error
