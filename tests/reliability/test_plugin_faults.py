"""A plugin that is installed but fails to load is reported as such, everywhere.

Two fake distributions on ``PYTHONPATH``: ``tp-nets-pkg`` (entry point ``tp_nets``: the
architecture ``tp_unet`` and the command ``tp-report``) and ``tp-losses-pkg`` (entry point
``tp_losses``: the loss ``tp_dice``). ``TP_BREAK=nets`` or ``TP_BREAK=losses`` makes one of
them raise on import, as a broken dependency would.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli
from tests.reliability.conftest import synth
from tests.reliability.helpers import assert_error_last

NETS = """
import os

import miscore

if "nets" in os.environ.get("TP_BREAK", ""):
    raise ImportError("No module named 'tp_native_kernels'")

from miscore_unet.standard import UNet


class TPUNet(UNet):
    name = "tp_unet"


@miscore.hookimpl
def miscore_register_architectures():
    return [TPUNet]


@miscore.hookimpl
def miscore_register_commands(app):
    @app.command("tp-report")
    def tp_report() -> None:
        print("tp report")
"""

LOSSES = """
import os

import miscore

if "losses" in os.environ.get("TP_BREAK", ""):
    raise ImportError("No module named 'tp_native_kernels'")

from miscore_losses.components import DiceCELoss


class TPDice(DiceCELoss):
    name = "tp_dice"


@miscore.hookimpl
def miscore_register_losses():
    return [TPDice]
"""

CONFIG = """
data: {classes: 2}
preprocessing: [zscore]
patching: {mode: random, patch_shape: [16, 16, 16]}
model:
  architecture: {name: tp_unet, filters: 4, depth: 2}
  loss: tp_dice
training: {epochs: 1, batch_size: 2}
cache: {path: cache}
"""


def _distribution(site: Path, module: str, dist: str, version: str, source: str) -> None:
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[miscore]\n{module} = {module}\n")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``site/`` (the two distributions), ``data/``, ``config.yaml`` and ``model/``, trained
    with both plugins loading."""
    root = tmp_path_factory.mktemp("plugin_faults")
    site = root / "site"
    site.mkdir()
    _distribution(site, "tp_nets", "tp-nets-pkg", "0.1", NETS)
    _distribution(site, "tp_losses", "tp-losses-pkg", "0.2", LOSSES)
    synth(root / "data", cases=2)
    (root / "config.yaml").write_text(CONFIG)
    trained = run_cli(
        "-q", "train", "config.yaml", "--data", "data", "--out", "model", cwd=root, env=_env(root)
    )
    assert trained.returncode == 0, trained.stderr
    return root


def _env(root: Path, broken: str = "") -> dict[str, str]:
    path = os.pathsep.join([str(root / "site"), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, "TP_BREAK": broken}


FAILED_NETS = (
    "plugin 'tp_nets' (distribution tp-nets-pkg 0.1) is installed but failed to load: "
    "ImportError: No module named 'tp_native_kernels'"
)


def test_predict_names_the_plugin_that_failed_to_load_and_its_distribution(
    root: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "predict", root / "model", root / "data" / "imagesTr", "--out", tmp_path / "out",
        env=_env(root, broken="nets"),
    )  # fmt: skip
    line = assert_error_last(result)
    assert FAILED_NETS in line
    assert "miscore plugins" in line
    assert "install tp_nets" not in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_predict_does_not_need_the_loss_plugin(root: Path, tmp_path: Path) -> None:
    result = run_cli(
        "-q", "predict", root / "model", root / "data" / "imagesTr", "--out", tmp_path / "out",
        env=_env(root, broken="losses"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 2


def test_a_command_of_a_plugin_that_failed_to_load_names_the_failure(root: Path) -> None:
    assert run_cli("tp-report", env=_env(root)).stdout.strip() == "tp report"
    result = run_cli("tp-report", env=_env(root, broken="nets"))
    assert result.returncode == 2, result.stderr
    assert "No such command" in result.stderr
    assert FAILED_NETS in result.stderr
    assert "Traceback" not in result.stderr


def test_a_component_of_a_failed_plugin_names_the_failure_before_any_guess(
    root: Path, tmp_path: Path
) -> None:
    shutil.copy(root / "config.yaml", tmp_path / "config.yaml")
    result = run_cli("config", "validate", tmp_path / "config.yaml", env=_env(root, "nets"))
    line = assert_error_last(result)
    assert "no architecture named 'tp_unet'" in line
    assert FAILED_NETS in line
    if "did you mean" in line:  # a guess may follow, but the failed plugin comes first
        assert line.index(FAILED_NETS) < line.index("did you mean")


def test_plugins_lists_the_failure_with_its_distribution(root: Path) -> None:
    result = run_cli("plugins", env=_env(root, broken="nets"))
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert FAILED_NETS in text
