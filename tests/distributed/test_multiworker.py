"""Training on several machines, played by two local CPU worker processes of ``miscore train``.

The workers find each other through ``--cluster``/``--task`` (which set ``TF_CONFIG``) on free
local ports; a hard timeout kills them if they hang. The model they train together must be the
one a single process trains with the same global batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from miscore.core.errors import ConfigError
from miscore.pipeline.multiworker import cluster_role, tf_config_for
from tests.cli.helpers import assert_one_line_error, run_cli

# SGD, no augmentation, no dropout, a per-voxel loss: the two workers' half batches give the
# single process's gradient up to the order of float sums (Adam would turn the float noise of
# gradients that are exactly zero in theory, biases before instance norm, into whole steps)
CONFIG = """
data: {classes: 2}
preprocessing: [zscore]
patching: {mode: random, patch_shape: [16, 16, 16], samples_per_case: 2}
augmentation: []
model:
  architecture: {name: unet, filters: 2, depth: 1, normalization: instance}
  loss: categorical_crossentropy
training: {epochs: 2, batch_size: 2, learning_rate: 0.01, optimizer: sgd, inference_dice: false}
cache: {path: cache}
"""

TIMEOUT = 120


def free_ports(count: int) -> list[int]:
    """Ports the system hands out for port 0 (held together, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("localhost", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    except OSError as exc:
        pytest.skip(f"cannot bind local ports: {exc}")
    finally:
        for s in sockets:
            s.close()


def train_two_workers(
    root: Path, *args: str, env: list[dict[str, str]]
) -> list[subprocess.CompletedProcess[str]]:
    """``miscore train`` as worker 0 and worker 1 of a local cluster; killed after TIMEOUT."""
    cluster = ",".join(f"localhost:{port}" for port in free_ports(2))
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "miscore",
                "train",
                "config.yaml",
                "--data",
                "data",
                "--cluster",
                cluster,
                "--task",
                str(task),
                *args,
            ],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env[task]},
        )
        for task in (0, 1)
    ]
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=TIMEOUT)
            results.append(
                subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
            )
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
            process.communicate()
        pytest.fail(f"the two workers did not finish within {TIMEOUT} s")
    return results


def weights(path: Path) -> list[np.ndarray]:
    import keras

    return [np.asarray(w) for w in keras.saving.load_model(path, compile=False).get_weights()]


def largest_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_workers_train_the_single_process_model_and_resume(tmp_path: Path) -> None:
    result = run_cli("synth", tmp_path / "data", "--cases", "3", "--shape", "32", "32", "32",
                     "--classes", "2", "--seed", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (tmp_path / "config.yaml").write_text(CONFIG)
    # one process, the reference, beside the workers (its own cache; theirs they share)
    single = subprocess.Popen(
        [sys.executable, "-m", "miscore", "train", "config.yaml", "--data", "data",
         "--out", "single", "--cache", "cache-single"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    try:
        # epoch 1 on two workers; the other worker's folder is a temporary one, removed
        (tmp_path / "tmp1").mkdir()
        first = train_two_workers(
            tmp_path,
            "--out",
            "multi",
            "--epochs",
            "1",
            env=[{}, {"TMPDIR": str(tmp_path / "tmp1")}],
        )
        _, stderr = single.communicate(timeout=TIMEOUT)
    finally:
        single.kill()
    assert single.returncode == 0, stderr
    for task, run in enumerate(first):
        assert run.returncode == 0, (task, run.stderr[-3000:])
    assert "worker 0 of 2 (chief): 2 replicas in sync" in first[0].stderr
    assert "1 of each global batch of 2 on this worker" in first[1].stderr
    assert "model: multi (1 epochs" in first[0].stdout
    assert "the chief writes multi" in first[1].stdout
    assert not [p for p in (tmp_path / "tmp1").iterdir() if p.name.startswith("miscore-worker")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cache", "cache-single", "config.yaml", "data", "multi", "single", "tmp1",
    ]  # fmt: skip
    model = tmp_path / "multi"
    for name in ("model.keras", "config.yaml", "miscore.json", "history.tsv", "curves.png",
                 "checkpoints/last.keras", "checkpoints/state.json"):  # fmt: skip
        assert (model / name).is_file(), name

    # a worker died: all are restarted with --resume, from the chief's checkpoint
    kept = tmp_path / "worker1"
    second = train_two_workers(
        tmp_path, "--out", "multi", "--resume", env=[{}, {"MISCORE_WORKER_DIR": str(kept)}]
    )
    for task, run in enumerate(second):
        assert run.returncode == 0, (task, run.stderr[-3000:])
        assert "resuming after epoch 1 from multi/checkpoints/last.keras" in run.stderr
    assert "model: multi (2 epochs" in second[0].stdout
    history = (model / "history.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in history[1:]] == ["1", "2"]

    chief = weights(model / "checkpoints" / "last.keras")
    assert largest_difference(chief, weights(kept / "checkpoints" / "last.keras")) == 0.0
    reference = weights(tmp_path / "single" / "checkpoints" / "last.keras")
    # measured: 8e-8 (float sums in another order); the weights are of order 1
    assert largest_difference(chief, reference) < 1e-5
    single_rows = (tmp_path / "single" / "history.tsv").read_text().splitlines()
    losses = [float(row.split("\t")[1]) for row in single_rows[1:]]
    assert np.allclose([float(row.split("\t")[1]) for row in history[1:]], losses, atol=1e-5)


def test_cluster_and_task_become_tf_config_and_a_role() -> None:
    config = tf_config_for(["node1:2222", "node2:2222", "node3:2222"], 1)
    role = cluster_role({"TF_CONFIG": config})
    assert role is not None and (role.index, role.count, role.chief) == (1, 3, False)
    chief = cluster_role({"TF_CONFIG": tf_config_for(["a:1", "b:1"], 0)})
    assert chief is not None and chief.chief
    assert cluster_role({}) is None
    assert cluster_role({"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}}'}) is None  # one task
    with pytest.raises(ConfigError, match="TF_CONFIG: task index 2"):
        cluster_role({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:1"]}, '
                      '"task": {"type": "worker", "index": 2}}'})  # fmt: skip


def test_bad_cluster_options_and_an_indivisible_batch_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG.replace("batch_size: 2", "batch_size: 3"))
    (tmp_path / "data").mkdir()
    cases = {
        ("--cluster", "node1,node2:2222", "--task", "0"): "--cluster: 'node1' is not host:port",
        ("--cluster", "a:1,b:1", "--task", "2"): "--task 2: must be 0 to 1",
        ("--cluster", "a:1,b:1"): "--cluster and --task go together",
        # checked before the cache is built or any worker is waited for
        ("--cluster", "localhost:1,localhost:2", "--task", "1"): (
            "training.batch_size 3 is the global batch and must be divisible by the 2 "
            "replicas in sync"
        ),
    }
    for args, message in cases.items():
        result = run_cli("train", "config.yaml", "--data", "data", *args, cwd=tmp_path)
        assert message in assert_one_line_error(result), args
