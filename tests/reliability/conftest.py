"""Fixtures: a small synthetic dataset and a tiny trained model, made through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.helpers import run_cli

CONFIG = """
data: {classes: 2}
preprocessing: [zscore]
patching: {mode: random, patch_shape: [16, 16, 16]}
model:
  architecture: {name: unet, filters: 4, depth: 2}
  loss: dice_ce
training: {epochs: 1, batch_size: 2}
cache: {path: cache}
"""


def synth(out: Path, cases: int = 3, seed: int = 1) -> Path:
    result = run_cli(
        "synth", out, "--cases", str(cases), "--shape", "16", "16", "16", "--classes", "2",
        "--seed", str(seed),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def reliability_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``data/`` (3 MSD cases, 16^3, 2 classes), ``config.yaml`` and ``model/``
    (trained one epoch). Tests copy what they change."""
    root = tmp_path_factory.mktemp("reliability")
    synth(root / "data")
    (root / "config.yaml").write_text(CONFIG)
    result = run_cli("-q", "train", "config.yaml", "--data", "data", "--out", "model", cwd=root)
    assert result.returncode == 0, result.stderr
    return root
