"""A cache entry removed while training reads it stops the run with one line naming the entry.

Before: a missing chunk file read as zeros (zarr's fill value), so the loader went on training
on blank images with background labels. Now the loader's thread and process workers, and
``miscore train``, stop with a ``CacheError`` that names the case and the entry.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

import miscore
from miscore.cache import CacheKey, CacheSettings, CaseCache
from miscore.cache.entries import STORE
from miscore.core.errors import CacheError
from miscore.pipeline.loader import PatchLoader
from miscore.testing import synthetic_case
from tests.cli.helpers import run_cli
from tests.reliability.helpers import assert_error_last


def config(workers: int) -> miscore.Config:
    return miscore.parse_config(
        {
            "data": {"classes": 2},
            "patching": {"mode": "random", "patch_shape": [16, 16, 16], "samples_per_case": 4},
            "training": {"batch_size": 2, "seed": 3, "workers": workers},
        }
    )


def cached_cases(cache: CaseCache) -> list[miscore.cache.CachedCase]:
    cases = []
    for i in range(3):
        case = synthetic_case(f"phantom_{i}", shape=(32, 32, 32), classes=2, seed=i)
        cases.append(cache.put(CacheKey(f"{i + 1:040x}", case.id, {}), case))
    return cases


def remove_chunks(cache: CaseCache, key: str) -> None:
    """Remove an entry's image and label chunk files (its marker and metadata stay)."""
    for array in ("image", "label"):
        shutil.rmtree(cache.entry_path(key) / STORE / array / "c")


@pytest.mark.parametrize("workers", [1, 2], ids=["thread", "processes"])
def test_chunks_removed_between_epochs_stop_the_loader(tmp_path: Path, workers: int) -> None:
    cache = CaseCache(tmp_path / "cache", CacheSettings(chunks=(8, 8, 8)))
    cases = cached_cases(cache)
    cfg = config(workers)
    loader = PatchLoader(
        cases, cfg, [], 2, cache_root=str(cache.root), cache_settings=cache.settings
    )
    try:
        assert len(list(loader.epoch_batches(0))) == loader.steps_per_epoch  # workers started
        remove_chunks(cache, cases[1].key)
        with pytest.raises(CacheError) as caught:
            list(loader.epoch_batches(1))
    finally:
        loader.close()
    message = str(caught.value)
    assert "phantom_1" in message and cases[1].key in message
    assert "\n" not in message


def test_an_entry_removed_before_the_workers_start_is_named(tmp_path: Path) -> None:
    """A worker process opens its entries when it starts: one gone is named, in one line."""
    cache = CaseCache(tmp_path / "cache", CacheSettings(chunks=(8, 8, 8)))
    cases = cached_cases(cache)
    loader = PatchLoader(
        cases, config(2), [], 2, cache_root=str(cache.root), cache_settings=cache.settings
    )
    shutil.rmtree(cache.entry_path(cases[1].key))
    try:
        with pytest.raises(miscore.PipelineError) as caught:
            list(loader.epoch_batches(0))
    finally:
        loader.close()
    message = str(caught.value)
    assert "failed to start: CacheError: cache entry of case phantom_1" in message, message
    assert cases[1].key in message and "removed while this run read it" in message
    assert "\n" not in message


def test_cache_clear_during_a_thread_loader_is_an_error(tmp_path: Path) -> None:
    cache = CaseCache(tmp_path / "cache", CacheSettings(chunks=(8, 8, 8)))
    cases = cached_cases(cache)
    loader = PatchLoader(cases, config(1), [], 2)
    try:
        list(loader.epoch_batches(0))
        assert cache.clear() == 3
        with pytest.raises(CacheError, match="phantom_"):
            list(loader.epoch_batches(1))
    finally:
        loader.close()


#: a local plugin that empties the cache after the first epoch, as `miscore cache clear`
#: run in another terminal would
CLEAR_AFTER_FIRST_EPOCH = """
import shutil
from pathlib import Path

import miscore


@miscore.hookimpl
def miscore_epoch_end(epoch, logs, model_dir):
    if epoch == 1:
        shutil.rmtree(Path({cache!r}) / "entries")
"""

CONFIG = """
data: {classes: 2}
preprocessing: [zscore]
patching: {mode: random, patch_shape: [16, 16, 16]}
model:
  architecture: {name: unet, filters: 4, depth: 2}
  loss: dice_ce
training: {epochs: 3, batch_size: 2, steps_per_epoch: 2, workers: 2}
cache: {path: cache}
"""


def test_train_stops_with_one_line_naming_the_removed_entry(tmp_path: Path) -> None:
    # loader processes: the error crosses the process pool and Keras's generator wrapping
    # (the thread loader's error takes the same way through Keras)
    made = run_cli(
        "synth", tmp_path / "data", "--cases", "2", "--shape", "32", "32", "32", "--classes", "2"
    )
    assert made.returncode == 0, made.stderr
    (tmp_path / "config.yaml").write_text(CONFIG)
    plugin = tmp_path / "clear_cache.py"
    plugin.write_text(
        textwrap.dedent(CLEAR_AFTER_FIRST_EPOCH.format(cache=str(tmp_path / "cache")))
    )
    result = run_cli(
        "-q", "--plugin", plugin, "train", "config.yaml", "--data", "data", "--out", "model",
        cwd=tmp_path,
    )  # fmt: skip
    line = assert_error_last(result, code=1)
    assert "cache entry" in line and "case_" in line, line
    assert "run again" in line, line
