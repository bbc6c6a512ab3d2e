"""``miscore analyze`` and ``miscore plan`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.cli.helpers import assert_one_line_error, run_cli


def test_analyze_then_plan_then_validate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_cli("synth", data, "-n", "3", "--shape", "32", "32", "16", "--seed", "5")
    assert result.returncode == 0, result.stderr

    summary = run_cli("analyze", data)
    assert summary.returncode == 0, summary.stderr
    assert "3 cases, 3 labelled, 3D, 1 channel(s), CT" in summary.stdout
    assert "class 2 tumour" in summary.stdout

    report = tmp_path / "report"
    as_json = run_cli("--quiet", "analyze", data, "--json", "--out", report)
    assert as_json.returncode == 0, as_json.stderr
    fingerprint = json.loads(as_json.stdout)
    assert fingerprint["cases"] == 3
    assert [c["id"] for c in fingerprint["classes"]] == [0, 1, 2]
    assert (report / "histogram_channel0.png").stat().st_size > 1000
    assert json.loads((report / "fingerprint.json").read_text()) == fingerprint

    config = tmp_path / "config.yaml"
    planned = run_cli("plan", data, "--out", config, "--memory-gb", "4")
    assert planned.returncode == 0, planned.stderr
    text = config.read_text()
    assert "# median shape after resampling" in text
    assert yaml.safe_load(text)["data"]["path"] == str(data.resolve())
    valid = run_cli("config", "validate", config)
    assert valid.returncode == 0, valid.stderr
    assert "valid" in valid.stdout


def test_analyze_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    assert "no such file" in assert_one_line_error(run_cli("analyze", tmp_path / "nope"))
