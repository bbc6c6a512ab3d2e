"""Loader worker processes (``training.workers: 2``) through the CLI: a local plugin's
augmentation runs in them; a worker that cannot start is named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.helpers import run_cli
from tests.reliability.conftest import synth
from tests.reliability.helpers import assert_error_last

#: an augmentation that records the process it ran in (``log``), one line per sample
MARKS = '''
import multiprocessing
from pathlib import Path

import miscore


class MarkParams(miscore.AugmentationParams):
    log: str


class ProcessMark(miscore.Augmentation):
    """Appends its process's name to ``log``."""

    name = "process_mark"
    Params = MarkParams

    def augment(self, image, label, rng):
        with Path(self.params.log).open("a") as out:
            out.write(multiprocessing.current_process().name + "\\n")
        return image, label


@miscore.hookimpl
def miscore_register_augmentations():
    return [ProcessMark]
'''

#: the same plugin, but it cannot be imported in any process but the main one
MAIN_ONLY = (
    "import multiprocessing\n"
    'if multiprocessing.current_process().name != "MainProcess":\n'
    '    raise RuntimeError("the licence server is not reachable from this process")\n' + MARKS
)

CONFIG = """
data: {{classes: 2}}
patching: {{mode: random, patch_shape: [8, 8, 8], samples_per_case: 2}}
augmentation: [{{name: process_mark, p: 1.0, log: {log}}}]
model:
  architecture: {{name: unet, filters: 2, depth: 1}}
  loss: dice_ce
training: {{epochs: 1, batch_size: 2, workers: 2, inference_dice: false}}
cache: {{path: cache}}
"""


@pytest.fixture(scope="module")
def worker_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    synth(root / "data", cases=2)
    return root


def setup(root: Path, name: str, plugin: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "marks.py").write_text(plugin)
    (folder / "config.yaml").write_text(CONFIG.format(log=folder / "marks.log"))
    return folder


def test_a_local_plugin_augmentation_runs_in_the_worker_processes(worker_root: Path) -> None:
    """``MISCORE_PLUGINS=marks.py`` (as ``--plugin marks.py``): the workers recreate the
    plugin's augmentation; every sample was augmented in a worker process."""
    folder = setup(worker_root, "env", MARKS)
    result = run_cli(
        "-q", "train", "config.yaml", "--data", str(worker_root / "data"), "--out", "model",
        cwd=folder, env={"MISCORE_PLUGINS": "marks.py"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (folder / "model" / "model.keras").is_file()
    processes = (folder / "marks.log").read_text().split()
    assert processes and all(p.startswith("SpawnProcess-") for p in processes), processes


def test_a_worker_that_fails_to_start_is_named_in_one_line(worker_root: Path) -> None:
    folder = setup(worker_root, "fails", MAIN_ONLY)
    result = run_cli(
        "--plugin", "marks.py", "train", "config.yaml", "--data", str(worker_root / "data"),
        "--out", "model", cwd=folder,
    )  # fmt: skip
    line = assert_error_last(result, code=1)
    assert line.startswith("miscore: error: loader worker SpawnProcess-"), line
    assert "failed to start: PluginError: importing miscore_local_marks" in line
    assert f"({folder / 'marks.py'})" in line
    assert "RuntimeError: the licence server is not reachable from this process" in line
    assert "BrokenProcessPool" not in result.stderr
    assert not (folder / "model" / "model.keras").exists()


def test_a_cache_build_worker_that_fails_to_start_is_named_in_one_line(
    worker_root: Path,
) -> None:
    """``miscore cache build --workers 2``: the same start-up failure, in the build's pool."""
    folder = setup(worker_root, "build_fails", MAIN_ONLY)
    result = run_cli(
        "--plugin", "marks.py", "cache", "build", "config.yaml",
        "--data", str(worker_root / "data"), "--workers", "2", cwd=folder,
    )  # fmt: skip
    line = assert_error_last(result, code=1)
    assert line.startswith("miscore: error: cache build worker SpawnProcess-"), line
    assert "RuntimeError: the licence server is not reachable from this process" in line
    assert "BrokenProcessPool" not in result.stderr
