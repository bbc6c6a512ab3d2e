"""Cache build and prediction on Dask (``--scheduler local:2``: a LocalCluster of two worker
processes), through the CLI and the Python API, against the same work done serially."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import zarr

from tests.cli.helpers import assert_one_line_error, run_cli

pytest.importorskip("distributed")

CONFIG = """
data: {classes: 2}
preprocessing: [zscore]
patching: {mode: random, patch_shape: [16, 16, 16], samples_per_case: 1}
model:
  architecture: {name: unet, filters: 4, depth: 2}
  loss: dice_ce
training: {epochs: 1, batch_size: 2, steps_per_epoch: 2, validation_split: 0.0}
cache: {path: cache}
"""

#: a step that fails the first time it sees a case, and always for case_002
FLAKY_PLUGIN = """
import os
from pathlib import Path

import miscore


class Flaky(miscore.Subfunction):
    name = "flaky"

    def preprocess(self, case, training):
        marks = Path(os.environ["FLAKY_MARKS"]) / case.id
        tries = len(marks.read_text().splitlines()) if marks.exists() else 0
        marks.write_text("try\\n" * (tries + 1))
        if case.id == "case_002":
            raise RuntimeError(f"{case.id} never works")
        if tries == 0:
            raise OSError(f"{case.id}: the shared folder went away for a moment")
        return case


@miscore.hookimpl
def miscore_register_subfunctions():
    return [Flaky]
"""


def synth(out: Path, cases: int, seed: int) -> None:
    result = run_cli(
        "synth", out, "--cases", str(cases), "--shape", "32", "32", "32", "--classes", "2",
        "--seed", str(seed),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def damage(path: Path) -> None:
    """Cut a file in half, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/`` (4 cases, 32^3), ``config.yaml``, ``serial/`` (the cache built serially),
    ``model/`` (trained one short epoch) and ``test/`` (4 more cases to predict)."""
    root = tmp_path_factory.mktemp("dask")
    synth(root / "data", 4, 1)
    synth(root / "test", 4, 9)
    (root / "config.yaml").write_text(CONFIG)
    result = run_cli("-q", "cache", "build", "config.yaml", "--data", "data", "--cache", "serial",
                     cwd=root)  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = run_cli("-q", "train", "config.yaml", "--data", "data", "--out", "model", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def light(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the error tests need, without the training of ``root``: ``data/``, ``test/``,
    ``config.yaml`` and a ``model/`` folder (empty: the scheduler is refused before the
    model is read)."""
    root = tmp_path_factory.mktemp("dask_light")
    synth(root / "data", 2, 1)
    synth(root / "test", 1, 9)
    (root / "config.yaml").write_text(CONFIG)
    (root / "model").mkdir()
    return root


def entries(cache: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every entry of a local cache: its key (folder name) -> its arrays."""
    found: dict[str, dict[str, np.ndarray]] = {}
    for folder in sorted((cache / "entries").iterdir()):
        group = zarr.open_group(str(folder / "case.zarr"), mode="r")
        found[folder.name] = {name: np.asarray(array[...]) for name, array in group.arrays()}
    return found


def assert_same_entries(a: Path, b: Path) -> None:
    first, second = entries(a), entries(b)
    assert sorted(first) == sorted(second)
    assert len(first) == 4
    for key, arrays in first.items():
        assert sorted(arrays) == sorted(second[key]), key
        for name, array in arrays.items():
            np.testing.assert_array_equal(array, second[key][name], err_msg=f"{key}/{name}")


@pytest.mark.distributed
def test_cache_build_on_a_local_cluster_gives_the_serial_entries(root: Path) -> None:
    result = run_cli(
        "cache", "build", "config.yaml", "--data", "data", "--cache", "dask",
        "--scheduler", "local:2", cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "dask: 2 workers, 2 threads" in result.stderr
    assert "built 4, cached 0, failed 0" in result.stderr
    assert_same_entries(root / "serial", root / "dask")


@pytest.mark.distributed
def test_cache_build_from_the_python_api_on_a_running_scheduler(root: Path, tmp_path: Path) -> None:
    """``tcp://``: a scheduler and a worker started as a cluster's nodes start them."""
    address_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m"]
    nodes = [
        subprocess.Popen(
            [*dask, "distributed.cli.dask_scheduler", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(address_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [*dask, "distributed.cli.dask_worker", "--nthreads", "1", "--no-dashboard",
             "--local-directory", str(tmp_path), "--scheduler-file", str(address_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
        ),
    ]  # fmt: skip
    try:
        for _ in range(600):
            if address_file.is_file() and address_file.read_text().strip():
                break
            time.sleep(0.1)
        address = json.loads(address_file.read_text())["address"]
        assert address.startswith("tcp://")
        script = (
            "import miscore\n"
            "pipeline = miscore.Pipeline.from_config('config.yaml')\n"
            f"results = pipeline.build_cache('data', cache='api', scheduler='{address}')\n"
            "print(sorted(r.case_id for r in results), sum(r.hit for r in results))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300
        )
    finally:
        for node in nodes:
            node.terminate()
            node.wait(timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['case_000', 'case_001', 'case_002', 'case_003'] 0"
    assert f"at {address}" in result.stderr
    assert_same_entries(root / "serial", root / "api")


@pytest.mark.distributed
def test_a_failing_case_is_retried_once_and_one_that_keeps_failing_is_named(
    root: Path, tmp_path: Path
) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY_PLUGIN)
    (tmp_path / "config.yaml").write_text(CONFIG.replace("[zscore]", "[flaky, zscore]"))
    marks = tmp_path / "marks"
    marks.mkdir()
    result = run_cli(
        "--plugin", "flaky.py", "cache", "build", "config.yaml", "--data", root / "data",
        "--scheduler", "local:2", env={"FLAKY_MARKS": str(marks)}, cwd=tmp_path,
    )  # fmt: skip
    line = assert_one_line_error_last(result, code=1)
    # each case failed once and was retried on a worker; case_002 failed twice and is named
    assert {p.name: len(p.read_text().splitlines()) for p in marks.iterdir()} == {
        "case_000": 2, "case_001": 2, "case_002": 2, "case_003": 2,
    }  # fmt: skip
    assert "built 3, cached 0, failed 1" in result.stderr
    assert line.startswith("miscore: error: 1 of 4 cases failed: case_002: "), line
    assert "case_002 never works" in line and "(tried twice)" in line
    assert len(list((tmp_path / "cache" / "entries").iterdir())) == 3


def assert_one_line_error_last(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The run failed with ``code``; its last stderr line is the one error line."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("miscore: error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def predicted(root: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """From the Python API (one process: TensorFlow started once): ``test/`` predicted
    serially into ``serial_out/`` and on a LocalCluster into ``api_out/``. Through the CLI:
    a copy with case_001's image cut in half, on a LocalCluster into ``dask_out/``."""
    script = (
        "import miscore\n"
        "model = miscore.load_model('model')\n"
        "model.predict('test', out='serial_out')\n"
        "paths = model.predict('test', out='api_out', scheduler='local:2')\n"
        "print(*[p.name for p in paths])\n"
    )
    api = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert api.returncode == 0, api.stderr
    assert api.stdout.split() == [f"case_00{i}.nii.gz" for i in range(4)]
    damaged = root / "test_damaged"
    shutil.copytree(root / "test", damaged)
    damage(damaged / "imagesTr" / "case_001_0000.nii.gz")
    dask = run_cli(
        "predict", "model", "test_damaged", "--out", "dask_out", "--scheduler", "local:2",
        cwd=root,
    )  # fmt: skip
    return root, dask


def labels(path: Path) -> tuple[np.ndarray, np.ndarray, np.dtype[Any]]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine, image.get_data_dtype()


@pytest.mark.distributed
def test_predict_on_a_local_cluster_writes_the_serial_label_files(
    predicted: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, result = predicted
    assert "dask: 2 workers, 2 threads" in result.stderr
    for case in ("case_000", "case_002", "case_003"):
        serial = labels(root / "serial_out" / f"{case}.nii.gz")
        on_dask = labels(root / "dask_out" / f"{case}.nii.gz")
        assert on_dask[2] == serial[2]
        np.testing.assert_array_equal(on_dask[1], serial[1])
        np.testing.assert_array_equal(on_dask[0], serial[0])


@pytest.mark.distributed
def test_a_damaged_input_is_named_the_others_finish_and_nothing_is_half_written(
    predicted: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, result = predicted
    line = assert_one_line_error_last(result, code=2)
    assert line.startswith("miscore: error: 1 of 4 cases failed (the others are written): "), line
    assert "case_001: " in line and "case_001_0000.nii.gz: not a readable NIfTI file" in line
    assert "(tried twice)" not in line  # bad input is not retried
    assert "case_001 -> failed: " in result.stderr
    written = sorted(p.name for p in (root / "dask_out").iterdir())
    assert written == ["case_000.nii.gz", "case_002.nii.gz", "case_003.nii.gz"]


@pytest.mark.distributed
def test_predict_from_the_python_api_on_a_local_cluster(
    predicted: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, _ = predicted
    for i in range(4):
        serial = labels(root / "serial_out" / f"case_00{i}.nii.gz")
        on_dask = labels(root / "api_out" / f"case_00{i}.nii.gz")
        assert on_dask[2] == serial[2]
        np.testing.assert_array_equal(on_dask[1], serial[1])
        np.testing.assert_array_equal(on_dask[0], serial[0])


@pytest.mark.parametrize("command", ["cache", "predict"])
def test_without_the_dask_extra_scheduler_is_a_one_line_error(
    light: Path, tmp_path: Path, command: str
) -> None:
    fake = tmp_path / "site" / "distributed"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named distributed')\n")
    args = (
        ["cache", "build", "config.yaml", "--data", "data", "--cache", str(tmp_path / "c")]
        if command == "cache"
        else ["predict", "model", "test", "--out", str(tmp_path / "out")]
    )
    result = run_cli(
        *args, "--scheduler", "local:2", env={"PYTHONPATH": str(tmp_path / "site")}, cwd=light
    )
    line = assert_one_line_error(result, code=2)
    assert "pip install 'miscore[dask]'" in line, line
    assert not (tmp_path / "c").exists() and not (tmp_path / "out").exists()


def test_a_scheduler_that_is_neither_local_nor_an_address_is_named(light: Path) -> None:
    result = run_cli("cache", "build", "config.yaml", "--scheduler", "locl:2", cwd=light)
    line = assert_one_line_error(result, code=2)
    assert "--scheduler locl:2: expected local:N" in line, line
