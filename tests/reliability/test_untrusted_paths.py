"""Every path built from data stays inside its root: dataset.json entries, case ids, synth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import miscore
from miscore.core.volume import check_case_id
from miscore.data.dataset import Dataset
from tests.cli.helpers import assert_one_line_error, run_cli
from tests.reliability.helpers import files_under


@pytest.mark.parametrize("case_id", ["..", ".", "a/b", "a\\b", "../x", "", "x\0y", "a b"])
def test_unsafe_case_ids_are_refused(case_id: str) -> None:
    with pytest.raises(miscore.InputError, match="not allowed"):
        check_case_id(case_id)


ESCAPES = [
    "../outside.nii.gz",
    "imagesTr/../../outside.nii.gz",
    "/etc/passwd",
    "link/outside.nii.gz",  # a symlink in the dataset pointing out of it
]


@pytest.mark.parametrize("entry", ESCAPES)
def test_dataset_json_entries_cannot_leave_the_dataset(
    entry: str, reliability_root: Path, tmp_path: Path, installed_plugins: miscore.PluginManager
) -> None:
    data = tmp_path / "data"
    shutil.copytree(reliability_root / "data", data)
    shutil.copy(data / "imagesTr" / "case_000_0000.nii.gz", tmp_path / "outside.nii.gz")
    (data / "link").symlink_to(tmp_path)
    info = json.loads((data / "dataset.json").read_text())
    info["training"] = [{"image": entry, "label": "./labelsTr/case_000.nii.gz"}]
    (data / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(miscore.InputError, match="leaves the dataset folder"):
        Dataset.discover(data, installed_plugins.registry)


def test_a_label_entry_cannot_leave_the_dataset_either(
    reliability_root: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(reliability_root / "data", data)
    info = json.loads((data / "dataset.json").read_text())
    info["training"] = [{"image": "./imagesTr/case_000.nii.gz", "label": "../../etc/passwd"}]
    (data / "dataset.json").write_text(json.dumps(info))
    line = assert_one_line_error(run_cli("info", data))
    assert "leaves the dataset folder" in line and "dataset.json" in line


def test_a_file_named_dot_dot_gives_no_case_id(reliability_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy(
        reliability_root / "data" / "imagesTr" / "case_000_0000.nii.gz", folder / "..nii.gz"
    )
    result = run_cli(
        "-q", "predict", reliability_root / "model", folder / "..nii.gz", "--out", tmp_path / "out"
    )
    assert "not allowed" in assert_one_line_error(result)
    assert files_under(tmp_path / "out") == []


def test_synth_writes_only_under_its_output_folder(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    result = run_cli(
        "synth", parent / "out", "--cases", "2", "--shape", "8", "8", "8", "--classes", "2"
    )
    assert result.returncode == 0, result.stderr
    assert [p.name for p in parent.iterdir()] == ["out"]
    assert len(files_under(parent / "out")) == 5  # 2 images, 2 labels, dataset.json
