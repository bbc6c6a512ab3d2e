"""The cache at a URL: a real S3 server (moto, on 127.0.0.1) reached through s3fs.

The same cases go through a local cache and the S3 cache and must read back equal; crashes,
concurrent writers, the CLI and a training run whose worker processes reopen the URL.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from miscore.cache import (
    CACHE_ENV,
    CacheSettings,
    CaseCache,
    ObjectStoreCache,
    resolve_cache_location,
)
from miscore.testing import synthetic_case
from tests.cli.helpers import run_cli

pytest.importorskip("s3fs", reason="s3fs is needed to reach S3 (pip install -e '.[dev]')")
moto_server = pytest.importorskip(
    "moto.server", reason="moto[server] is needed for a local S3 (pip install -e '.[dev]')"
)

BUCKET = "miscore-test"
SETTINGS = CacheSettings(chunks=(8, 8, 8))


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """A moto S3 server on a free local port; the environment that points boto at it (set in
    this process, and passed to subprocesses)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in (*env, "AWS_PROFILE", CACHE_ENV)}
    os.environ.update(env)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop(CACHE_ENV, None)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(BUCKET)
    try:
        yield env
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def url(s3_env: dict[str, str], request: pytest.FixtureRequest) -> str:
    """A fresh prefix in the bucket per test."""
    return f"s3://{BUCKET}/{request.node.name}"


def save_case(case: Any, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case.id}.npz"
    np.savez(path, image=case.image.array, label=case.label.array, affine=case.image.affine)
    return path


def objects(cache: ObjectStoreCache, folder: str) -> list[str]:
    cache.fs.invalidate_cache()
    try:
        return sorted(p.rsplit("/", 1)[-1] for p in cache.fs.ls(f"{cache.path}/{folder}"))
    except FileNotFoundError:
        return []


# --- where it lives ---------------------------------------------------------------------


def test_a_url_location_is_kept_and_opens_an_object_store_cache(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_cache_location(None, url + "/") == url
    monkeypatch.setenv(CACHE_ENV, url)
    assert resolve_cache_location(None, None) == url
    monkeypatch.setenv(CACHE_ENV, f"file://{tmp_path}/local")
    assert resolve_cache_location(None, None) == str(tmp_path / "local")
    cache = CaseCache(url, SETTINGS)
    assert isinstance(cache, ObjectStoreCache) and cache.location == url
    local = CaseCache(f"file://{tmp_path}/local")
    assert type(local) is CaseCache and local.location == str(tmp_path / "local")


# --- hits and misses --------------------------------------------------------------------


def test_round_trip_equals_the_local_cache_then_hits_and_misses(url: str, tmp_path: Path) -> None:
    case = synthetic_case("case_001", shape=(24, 20, 12), classes=3)
    path = save_case(case, tmp_path / "data")
    builds: list[str] = []

    def build() -> Any:
        builds.append(case.id)
        return case

    remote = CaseCache(url, SETTINGS)
    local = CaseCache(tmp_path / "cache", SETTINGS)
    key = remote.key(case.id, [path], {"stand-in": 1})
    assert key == local.key(case.id, [path], {"stand-in": 1})  # the location is not in the key
    assert remote.get(key) is None
    stored = remote.get_or_build(key, build)
    expected = local.get_or_build(key, build)
    assert builds == [case.id, case.id]
    hit = remote.get_or_build(key, build)  # a fresh read from S3
    assert builds == [case.id, case.id]
    for entry in (stored, hit):
        np.testing.assert_array_equal(entry.image[...], expected.image[...])
        assert entry.label is not None and expected.label is not None
        np.testing.assert_array_equal(entry.label[...], expected.label[...])
        np.testing.assert_array_equal(entry.affine, expected.affine)
        assert entry.meta == expected.meta and entry.class_voxels == expected.class_voxels
        assert entry.foreground.keys() == expected.foreground.keys() == {1, 2}
        for k in expected.foreground:
            np.testing.assert_array_equal(entry.foreground[k], expected.foreground[k])
    assert hit.image[3:11, 2:9, 1:5].shape == (8, 7, 4, 1)  # a patch, from the chunks
    assert remote.stats() == (1, 1)
    # Touching the input changes its identity: a new key, a miss, a second entry.
    later = path.stat().st_mtime_ns + 5_000_000_000
    os.utime(path, ns=(later, later))
    touched = remote.key(case.id, [path], {"stand-in": 1})
    assert touched != key and remote.get(touched) is None
    remote.get_or_build(touched, build)
    assert len(builds) == 3 and remote.stats() == (1, 2)
    info = remote.info()
    assert (info.location, info.entries, info.cases, info.temp_folders) == (url, 2, 1, 0)
    assert 0 < info.stored_bytes < info.raw_float32_bytes


def test_a_marker_that_names_another_key_or_no_data_is_not_trusted(url: str) -> None:
    case = synthetic_case("odd", shape=(16, 16, 8))
    cache = CaseCache(url, SETTINGS)
    assert isinstance(cache, ObjectStoreCache)
    key = cache.key(case.id, [], {})
    cache.put(key, case)
    marker_path = f"{cache.path}/entries/{key.digest}.json"
    marker = json.loads(cache.fs.cat_file(marker_path))
    for bad in ({"key": "0" * 40}, {"data": "elsewhere/x"}, {"format": 0}):
        cache.fs.pipe_file(marker_path, json.dumps({**marker, **bad}).encode())
        assert cache.get(key) is None and cache.entries() == []
    # A later build replaces the untrusted marker.
    rebuilt = cache.get_or_build(key, lambda: case)
    np.testing.assert_array_equal(rebuilt.image[...], case.image.array)
    assert [e.key for e in cache.entries()] == [key.digest]


# --- crashes and concurrency ------------------------------------------------------------


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    import miscore.cache as mc
    from miscore.testing import synthetic_case

    url, mode, flag = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    case = synthetic_case("race", shape=(48, 40, 24), classes=3)
    cache = mc.CaseCache(url, mc.CacheSettings(chunks=(8, 8, 8)))
    key = cache.key(case.id, [], {"stand-in": 1})
    if mode == "hang":
        def hang(self, digest, marker):  # every array is written; the marker never is
            flag.write_text(marker["data"])
            time.sleep(120)
        mc.ObjectStoreCache._publish_marker = hang
    else:  # wait for the other writer so that both write at once
        flag.with_suffix("." + mode).write_text("ready")
        while len(list(flag.parent.glob(flag.name + ".*"))) < 2:
            time.sleep(0.01)
    cached = cache.put(key, case)
    print(cached.key, float(np.asarray(cached.image[...]).sum()))
    """
)


def run_writer(tmp_path: Path, url: str, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen(
        [sys.executable, str(script), url, mode, str(tmp_path / "flag")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def race_key(cache: CaseCache) -> tuple[Any, Any]:
    case = synthetic_case("race", shape=(48, 40, 24), classes=3)
    return case, cache.key(case.id, [], {"stand-in": 1})


def test_a_killed_writer_leaves_nothing_trusted_and_a_later_put_succeeds(
    url: str, tmp_path: Path
) -> None:
    writer = run_writer(tmp_path, url, "hang")
    flag = tmp_path / "flag"
    deadline = time.monotonic() + 60
    while not flag.exists() and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists(), writer.communicate()[1]
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL
    cache = CaseCache(url, SETTINGS)
    assert isinstance(cache, ObjectStoreCache)
    half_built = flag.read_text()
    assert half_built.removeprefix("data/") in objects(cache, "data")  # the arrays are there...
    assert cache.fs.exists(f"{cache.path}/{half_built}/case.zarr/image/zarr.json")
    case, key = race_key(cache)
    assert half_built.startswith(f"data/{key.digest}.")  # the same entry was being built
    assert cache.get(key) is None  # ...but nothing is trusted
    assert cache.entries() == [] and cache.info().temp_folders == 1
    rebuilt = cache.get_or_build(key, lambda: case)
    np.testing.assert_array_equal(rebuilt.image[...], case.image.array)
    assert [e.key for e in cache.entries()] == [key.digest]
    # The leftover is young, so opening keeps it; clean_temp removes it once old enough.
    assert CaseCache(url, SETTINGS, stale_temp_hours=1).info().temp_folders == 1
    assert cache.clean_temp(older_than_s=0) == 1
    assert half_built.removeprefix("data/") not in objects(cache, "data")
    assert len(objects(cache, "data")) == 1 and cache.get(key) is not None


def test_two_concurrent_writers_leave_one_valid_entry(url: str, tmp_path: Path) -> None:
    writers = [run_writer(tmp_path, url, mode) for mode in ("a", "b")]
    outputs = [w.communicate(timeout=120) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [o[1] for o in outputs]
    assert len({tuple(out.split()) for out, _ in outputs}) == 1  # same key, same data
    cache = CaseCache(url, SETTINGS)
    assert isinstance(cache, ObjectStoreCache)
    case, key = race_key(cache)
    assert [e.key for e in cache.entries()] == [key.digest]
    assert objects(cache, "entries") == [f"{key.digest}.json"]
    assert len(objects(cache, "data")) == 1  # the loser deleted its own prefix
    assert cache.info().temp_folders == 0
    cached = cache.get(key)
    assert cached is not None
    np.testing.assert_array_equal(cached.image[...], case.image.array)
    # A writer that publishes after the winner (here, deterministically) reads the winner's.
    marker_path = f"{cache.path}/entries/{key.digest}.json"
    winner = cache.fs.cat_file(marker_path)
    assert cache.put(key, case).key == key.digest
    assert cache.fs.cat_file(marker_path) == winner
    assert len(objects(cache, "data")) == 1 and cache.info().temp_folders == 0


def test_a_conflict_on_the_marker_put_is_asked_again_not_overwritten(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 answers racing conditional PUTs with 409 (EBUSY through s3fs): the PUT is asked
    again, gets "exists", and the writer reads the winner's entry instead of overwriting."""
    cache = CaseCache(url, SETTINGS)
    assert isinstance(cache, ObjectStoreCache)
    case, key = race_key(cache)
    winner = cache.put(key, case)
    marker_path = f"{cache.path}/entries/{key.digest}.json"
    published = cache.fs.cat_file(marker_path)
    cache.fs.rm(marker_path)  # as if the winner's PUT had not landed yet when we asked
    calls: list[str] = []
    real_pipe = cache.fs.pipe_file

    def racing_pipe(path: str, value: bytes, mode: str = "overwrite", **kw: Any) -> None:
        if path == marker_path:
            calls.append(mode)
            if len(calls) == 1:  # the winner's PUT lands while ours conflicts
                real_pipe(path, published)
                raise OSError(errno.EBUSY, "ConditionalRequestConflict")
        real_pipe(path, value, mode=mode, **kw)

    monkeypatch.setattr(cache.fs, "pipe_file", racing_pipe)
    again = cache.put(key, case)
    assert calls == ["create", "create"]  # asked again; never a blind overwrite
    assert cache.fs.cat_file(marker_path) == published
    np.testing.assert_array_equal(again.image[...], winner.image[...])
    assert cache.info().temp_folders == 0  # the loser removed its never-named prefix


@pytest.mark.filterwarnings("ignore:Object at image is not recognized")
def test_an_entry_removed_under_a_reader_is_a_miss_not_a_crash(url: str) -> None:
    cache = CaseCache(url, SETTINGS)
    assert isinstance(cache, ObjectStoreCache)
    case, key = race_key(cache)
    cache.put(key, case)
    marker = json.loads(cache.fs.cat_file(f"{cache.path}/entries/{key.digest}.json"))
    # `cache clear` in another process got as far as the image array, not the group
    cache.fs.rm(f"{cache.path}/{marker['data']}/case.zarr/image", recursive=True)
    assert cache.get(key) is None
    rebuilt = cache.get_or_build(key, lambda: case)  # the dangling marker is replaced
    np.testing.assert_array_equal(rebuilt.image[...], case.image.array)


def test_clean_temp_removes_only_unnamed_stale_prefixes(url: str) -> None:
    cache = CaseCache(url, SETTINGS)
    assert isinstance(cache, ObjectStoreCache)
    case, key = race_key(cache)
    cache.put(key, case)
    named = objects(cache, "data")
    assert len(named) == 1
    # a lost build of the same key (complete arrays, no marker names it), one of another key
    # that never published, both a day old; and the named prefix is old too
    day_old = int(time.time()) - 86400
    for digest in (key.digest, "f" * 40):
        lost = f"{digest}.{day_old}.1.abcd1234"
        cache.fs.pipe_file(f"{cache.path}/data/{lost}/case.zarr/zarr.json", b"{}")
    assert cache.clean_temp(older_than_s=3600) == 2
    assert objects(cache, "data") == named
    assert cache.get(key) is not None


# --- housekeeping and the command line --------------------------------------------------


def test_clear_older_than_uses_the_recorded_hits(url: str) -> None:
    cache = CaseCache(url, SETTINGS)
    assert isinstance(cache, ObjectStoreCache)
    keys = []
    for i in range(3):
        case = synthetic_case(f"case_{i}", shape=(16, 16, 8), seed=i)
        keys.append(cache.key(case.id, [], {}))
        cache.get_or_build(keys[-1], lambda case=case: case)
    # Entries 0 and 1 were built ten days ago; entry 1 was used (a hit) just now.
    for key in keys[:2]:
        path = f"{cache.path}/entries/{key.digest}.json"
        marker = json.loads(cache.fs.cat_file(path))
        marker["created"] -= 10 * 86400
        cache.fs.pipe_file(path, json.dumps(marker).encode())
    assert cache.get_or_build(keys[1], lambda: pytest.fail("a hit builds nothing")).id == "case_1"
    used = {e.case_id: e.last_used for e in cache.entries()}
    assert used["case_0"] < time.time() - 9 * 86400 < used["case_1"]
    assert cache.clear(older_than_days=5) == 1
    assert sorted(e.case_id for e in cache.entries()) == ["case_1", "case_2"]
    assert len(objects(cache, "data")) == 2 and cache.stats() == (1, 3)
    assert cache.clear() == 2
    assert (objects(cache, "entries"), objects(cache, "data"), objects(cache, "stats")) == (
        [],
        [],
        [],
    )


def test_cli_info_and_clear_on_the_url(url: str, s3_env: dict[str, str]) -> None:
    cache = CaseCache(url, SETTINGS)
    for i in range(2):
        case = synthetic_case(f"case_{i}", shape=(16, 16, 8), seed=i)
        cache.get_or_build(cache.key(case.id, [], {}), lambda case=case: case)
    cache.get_or_build(cache.key("case_0", [], {}), lambda: synthetic_case("case_0"))
    result = run_cli("cache", "info", "--json", "--cache", url, env=s3_env)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["location"] == url
    assert (info["entries"], info["cases"], info["hits"], info["misses"]) == (2, 2, 1, 2)
    assert 0 < info["stored_bytes"] < info["raw_float32_bytes"]
    text = run_cli("cache", "info", env={**s3_env, CACHE_ENV: url})
    assert f"cache: {url}" in text.stdout and "entries: 2 (2 cases)" in text.stdout
    assert "hit rate: 33%" in text.stdout
    kept = run_cli("cache", "clear", "--older-than", "1", "--cache", url, env=s3_env)
    assert kept.returncode == 0 and f"removed 0 entries from {url}" in kept.stderr
    cleared = run_cli("cache", "clear", "--cache", url, env=s3_env)
    assert cleared.returncode == 0 and "removed 2 entries" in cleared.stderr
    assert CaseCache(url, SETTINGS).info().entries == 0


def test_build_with_workers_then_train_with_process_workers_on_the_url(
    url: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    synth = run_cli(
        "synth", tmp_path / "data", "--cases", "4", "--shape", "16", "16", "16",
        "--classes", "2", "--seed", "1",
    )  # fmt: skip
    assert synth.returncode == 0, synth.stderr
    (tmp_path / "config.yaml").write_text(
        "data: {classes: 2}\n"
        "preprocessing: [{name: clip, min: -150, max: 250}, zscore]\n"
        "patching: {mode: random, patch_shape: [16, 16, 16], samples_per_case: 1}\n"
        "model:\n"
        "  architecture: {name: unet, filters: 4, depth: 2}\n"
        "  loss: dice_ce\n"
        "training: {epochs: 1, steps_per_epoch: 2, batch_size: 2, workers: 2}\n"
    )
    build = run_cli(
        "cache", "build", "config.yaml", "--data", "data", "--workers", "2", "--cache", url,
        env=s3_env, cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert f"cache {url}:" in build.stderr and "built 4, cached 0, failed 0" in build.stderr
    train = run_cli(
        "train", "config.yaml", "--data", "data", "--out", "model", "--cache", url,
        env=s3_env, cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert (tmp_path / "model" / "model.keras").is_file()
    info = CaseCache(url, SETTINGS).info()
    # train found every case the build made (4 hits, no new entry; its loader's worker
    # processes reopened the URL to read them), and nothing was left half-written.
    assert (info.entries, info.cases, info.temp_folders) == (4, 4, 0)
    assert (info.hits, info.misses) == (4, 4)
