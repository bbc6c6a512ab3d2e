"""The inference-mode check: a model that is good only in training mode is called out."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from miscore.pipeline.modecheck import degenerate_warning, hard_dice
from tests.cli.helpers import run_cli

CONFIG = """
data: {{classes: 2}}
preprocessing: [zscore]
patching: {{mode: random, patch_shape: [32, 32, 32]}}
model:
  architecture: {{name: unet, filters: 8, depth: 2, normalization: {norm}}}
training: {{epochs: 4, batch_size: 2, steps_per_epoch: 10, learning_rate: 0.003}}
cache: {{path: cache}}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("modecheck")
    result = run_cli(
        "synth", root / "data", "--cases", "4", "--shape", "32", "32", "32", "--classes", "2"
    )
    assert result.returncode == 0, result.stderr
    return root


def history(model: Path) -> list[dict[str, float]]:
    lines = (model / "history.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, map(float, line.split("\t")), strict=True)) for line in lines[1:]]


def test_forty_steps_of_batch_norm_end_with_the_degenerate_model_warning(data: Path) -> None:
    (data / "batch.yaml").write_text(CONFIG.format(norm="batch"))
    result = run_cli("train", "batch.yaml", "--data", "data", "--out", "batch", cwd=data)
    assert result.returncode == 0, result.stderr
    assert "warning: the model is degenerate in inference mode" in result.stderr
    assert "normalization: instance" in result.stderr
    last = history(data / "batch")[-1]
    assert last["dice_training_mode"] - last["dice_inference"] > 0.2
    assert "dice_inference" in result.stderr  # the console shows it every epoch


def test_the_same_steps_with_instance_norm_agree_in_both_modes(data: Path) -> None:
    (data / "instance.yaml").write_text(CONFIG.format(norm="instance"))
    result = run_cli("train", "instance.yaml", "--data", "data", "--out", "inst", cwd=data)
    assert result.returncode == 0, result.stderr
    assert "degenerate" not in result.stderr
    rows = history(data / "inst")
    assert len(rows) == 4
    for row in rows:  # no batch statistics: the two modes compute the same network
        assert row["dice_inference"] == pytest.approx(row["dice_training_mode"], abs=1e-6)
    assert rows[-1]["dice_inference"] > 0.5


def test_hard_dice_pools_patches_and_skips_absent_classes() -> None:
    target = np.zeros((2, 4, 4, 3), np.float32)
    target[..., 0] = 1
    target[0, :2, :, :] = [0, 1, 0]  # class 1 in 8 voxels of the first patch; no class 2
    scores = target.copy()
    scores[0, 0, :, :] = [1, 0, 0]  # 4 of them missed
    assert hard_dice(scores, target) == pytest.approx(2 * 4 / (4 + 8))
    assert math.isnan(hard_dice(np.eye(3)[[0, 0]][:, None, :], np.eye(3)[[0, 0]][:, None, :]))


def test_the_warning_needs_a_gap_between_the_modes() -> None:
    assert degenerate_warning([]) is None
    assert degenerate_warning([{"dice_inference": 0.7, "dice_training_mode": 0.8}]) is None
    assert degenerate_warning([{"loss": 0.1}]) is None
    text = degenerate_warning([{"dice_inference": float("nan"), "dice_training_mode": 0.9}])
    assert text is not None and "Dice 0.000" in text
