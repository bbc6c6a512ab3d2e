"""Callbacks, learning-rate schedules and postprocessors from plugins, through the CLI.

A local plugin file (``--plugin extras.py``) registers one component of each kind; the
bundled ``miscore_training`` and ``miscore_postprocessing`` plugins provide the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.cli.helpers import assert_one_line_error, run_cli

EXTRAS = '''
import json
from pathlib import Path

import keras
import numpy as np

import miscore


@keras.saving.register_keras_serializable(package="extras")
class HalvingRate(keras.optimizers.schedules.LearningRateSchedule):
    """The rate halves every ``every`` steps."""

    def __init__(self, rate, every):
        self.rate = rate
        self.every = every

    def __call__(self, step):
        halvings = keras.ops.floor(keras.ops.cast(step, "float32") / self.every)
        return self.rate * keras.ops.power(0.5, halvings)

    def get_config(self):
        return {"rate": self.rate, "every": self.every}


class Halving(miscore.LRSchedule):
    """Halves the rate every two steps."""

    name = "halving"

    def build(self, initial_rate, total_steps):
        return HalvingRate(initial_rate, 2)


class EpochFile(miscore.Callback):
    """Writes each epoch's optimizer rate and loss to epochs.jsonl."""

    name = "epoch_file"

    def build(self, model_dir):
        class Write(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                row = {"epoch": epoch + 1, "rate": rate, "loss": float(logs["loss"])}
                with open(Path(model_dir) / "epochs.jsonl", "a") as file:
                    file.write(json.dumps(row) + "\\n")

        return Write()


class HollowCube(miscore.Postprocessor):
    """Replaces the prediction by a hollow cube of class 1."""

    name = "hollow_cube"

    def apply(self, prediction, n_classes):
        array = np.zeros_like(prediction.array)
        array[4:14, 4:14, 4:14] = 1
        array[8:10, 8:10, 8:10] = 0
        return prediction.with_array(array)


@miscore.hookimpl
def miscore_register_lr_schedules():
    return [Halving]


@miscore.hookimpl
def miscore_register_callbacks():
    return [EpochFile]


@miscore.hookimpl
def miscore_register_postprocessors():
    return [HollowCube]
'''

CONFIG = """
data: {classes: 2}
preprocessing: [{name: clip, min: -150, max: 250}, zscore]
patching: {mode: random, patch_shape: [32, 32, 32]}
augmentation: [{name: flip, p: 0.5}]
model:
  architecture: {name: unet, filters: 8, depth: 2}
  loss: dice_ce
training:
  epochs: 2
  steps_per_epoch: 2
  batch_size: 2
  learning_rate: 0.004
  inference_dice: false
TRAINING
cache: {path: cache}
"""


def synth(root: Path, seed: int = 1) -> None:
    result = run_cli(
        "synth", root / "data", "--cases", "2", "--shape", "32", "32", "32",
        "--classes", "2", "--seed", str(seed),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def history_rates(model: Path) -> list[float]:
    rows = [line.split("\t") for line in (model / "history.tsv").read_text().splitlines()]
    column = rows[0].index("learning_rate")
    return [float(row[column]) for row in rows[1:]]


@pytest.fixture(scope="module")
def extras_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained with the local plugin's schedule, callback and postprocessor."""
    root = tmp_path_factory.mktemp("extras")
    synth(root)
    (root / "extras.py").write_text(EXTRAS)
    training = """  lr_schedule: halving
  callbacks: [epoch_file, {name: epoch_snapshots, every: 1}]
inference:
  postprocessing: [hollow_cube, fill_holes]"""
    (root / "config.yaml").write_text(CONFIG.replace("TRAINING", training))
    result = run_cli(
        "--plugin", "extras.py", "train", "config.yaml", "--data", "data", "--out", "model",
        cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root


def test_a_plugin_callback_runs_every_epoch_and_sees_the_plugin_schedule(
    extras_model: Path,
) -> None:
    model = extras_model / "model"
    rows = [json.loads(line) for line in (model / "epochs.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    # halving every 2 steps, 2 steps per epoch: 0.004 -> 0.002 after epoch 1 -> 0.001
    np.testing.assert_allclose([row["rate"] for row in rows], [0.002, 0.001], rtol=1e-6)
    np.testing.assert_allclose(history_rates(model), [0.002, 0.001], rtol=1e-5)
    # the bundled epoch_snapshots callback kept both epochs' models
    snapshots = sorted(p.name for p in (model / "snapshots").iterdir())
    assert snapshots == ["epoch_0001.keras", "epoch_0002.keras"]


def test_resume_continues_a_plugin_schedule_from_the_checkpoint(
    extras_model: Path, tmp_path: Path
) -> None:
    import shutil

    shutil.copytree(extras_model, tmp_path, dirs_exist_ok=True)
    result = run_cli(
        "--plugin", "extras.py", "train", "config.yaml", "--data", "data", "--out", "model",
        "--resume", "--epochs", "3", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch 2" in result.stderr
    # the schedule was restored with the optimizer's step count, not started again
    np.testing.assert_allclose(history_rates(tmp_path / "model"), [0.002, 0.001, 0.0005], rtol=1e-5)


def test_miscore_json_lists_every_component_with_its_plugin(extras_model: Path) -> None:
    info = json.loads((extras_model / "model" / "miscore.json").read_text())
    kinds: dict[str, list[str]] = {}
    plugins: dict[str, str] = {}
    for record in info["components"]:
        kinds.setdefault(record["kind"], []).append(record["name"])
        plugins[record["name"]] = record["plugin"]
        assert record["version"], record
    assert kinds["io"] == ["nifti"]
    assert kinds["subfunction"] == ["clip", "zscore"]
    assert kinds["augmentation"] == ["flip"]
    assert kinds["architecture"] == ["unet"]
    assert kinds["loss"] == ["dice_ce"]
    assert kinds["lr_schedule"] == ["halving"]
    assert kinds["callback"] == ["epoch_file", "epoch_snapshots"]
    assert kinds["postprocessor"] == ["hollow_cube", "fill_holes"]
    assert plugins["epoch_snapshots"] == "training"
    assert plugins["fill_holes"] == "postprocessing"
    assert plugins["nifti"] == "nifti" and plugins["flip"] == "augment"
    local = {plugins["halving"], plugins["epoch_file"], plugins["hollow_cube"]}
    assert len(local) == 1 and "extras" in local.pop()


def test_postprocessors_run_in_order_before_the_prediction_is_written(
    extras_model: Path,
) -> None:
    result = run_cli(
        "--plugin", "extras.py", "predict", "model", "data", "--out", "pred", cwd=extras_model
    )
    assert result.returncode == 0, result.stderr
    written = sorted((extras_model / "pred").iterdir())
    assert len(written) == 2
    expected = np.zeros((32, 32, 32), np.uint8)
    expected[4:14, 4:14, 4:14] = 1  # hollow_cube, then fill_holes filled its hole
    for path in written:
        np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), expected)
    assert not [p for p in (extras_model / "pred").iterdir() if ".miscore-tmp-" in p.name]


def test_a_missing_postprocessor_plugin_is_named(extras_model: Path) -> None:
    result = run_cli("predict", "model", "data", "--out", "nope", cwd=extras_model)
    line = assert_one_line_error(result)
    assert "postprocessor 'hollow_cube'" in line and "install" in line


def test_poly_resumed_after_a_time_limit_stop_follows_the_uninterrupted_schedule(
    tmp_path: Path,
) -> None:
    synth(tmp_path, seed=2)
    training = """  lr_schedule: poly
  callbacks: [{name: time_limit, minutes: 0.0001}]"""
    (tmp_path / "config.yaml").write_text(CONFIG.replace("TRAINING", training))
    args = ("train", "config.yaml", "--data", "data", "--out", "model")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert len(history_rates(tmp_path / "model")) == 1  # the time limit stopped epoch 1
    resumed = run_cli(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1" in resumed.stderr
    # poly over 2 epochs of 2 steps: rate * (1 - step / 4) ** 0.9 after steps 2 and 4
    expected = [0.004 * (1 - step / 4) ** 0.9 for step in (2, 4)]
    np.testing.assert_allclose(history_rates(tmp_path / "model"), expected, atol=1e-8)
    state = json.loads((tmp_path / "model" / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2
