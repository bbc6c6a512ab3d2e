"""``miscore bench``: every stage runs on a tiny dataset and the verdict follows the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from miscore.tools.bench import StageTiming, make_verdict
from tests.cli.helpers import assert_one_line_error, run_cli

CONFIG = """
data: {classes: 3}
preprocessing: [{name: clip, min: -150, max: 250}, zscore]
patching: {mode: random, patch_shape: [16, 16, 16], samples_per_case: 2}
augmentation: [{name: rotate, p: 1.0}, {name: flip, p: 1.0}, {name: gaussian_noise, p: 1.0}]
model:
  architecture: {name: unet, filters: 4, depth: 2}
  loss: dice_ce
training: {batch_size: 2}
cache: {path: must-stay-untouched}
"""

STAGES = [
    "read",
    "preprocess",
    "cache_build",
    "cache_read_cold",
    "cache_read_warm",
    "augment",
    "batch",
    "loader",
    "train_step_fixed",
    "train_step",
    "predict",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    result = run_cli(
        "synth", root / "data", "--cases", "3", "--shape", "24", "24", "20", "--classes", "3"
    )
    assert result.returncode == 0, result.stderr
    (root / "config.yaml").write_text(CONFIG)
    return root


def test_json_report_has_every_stage_and_a_consistent_verdict(project: Path) -> None:
    result = run_cli(
        "bench", "config.yaml", "--data", "data", "--json", "--cases", "2", "--repeats", "2",
        cwd=project,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == STAGES
    for stage in stages.values():
        assert stage["repeats"] >= 2, stage
        assert stage["median_s"] > 0, stage
        assert stage["min_s"] <= stage["median_s"]
        assert stage["min_s"] <= stage["mean_s"]
        assert stage["peak_rss_mb"] > 50  # TensorFlow alone is more
    assert report["cases"] == ["case_000", "case_001"]
    assert report["batch_size"] == 2
    assert report["patch_shape"] == [16, 16, 16]
    assert report["machine"]["cpus"] >= 1
    # 24x24x20 with 16^3 windows at overlap 0.5: 2 x 2 x 2 windows
    predict = stages["predict"]
    assert predict["extra"]["windows"] == 8
    assert predict["extra"]["model_s"] > 0
    assert predict["extra"]["overhead_s"] >= 0
    assert predict["extra"]["model_s"] <= predict["median_s"] * 1.5
    verdict = report["verdict"]
    data, model = stages["loader"]["median_s"], stages["train_step_fixed"]["median_s"]
    assert verdict["data_s_per_batch"] == data
    assert verdict["model_s_per_step"] == model
    assert verdict["bound"] == ("data" if data > model else "model")
    assert verdict["factor"] == pytest.approx(max(data, model) / min(data, model), rel=1e-2)
    assert f"{verdict['bound']}-bound by" in verdict["message"]
    # the throw-away cache lives in the temp folder, not where the config points
    assert not (project / "must-stay-untouched").exists()


def test_table_with_process_workers(project: Path) -> None:
    result = run_cli(
        "bench", "config.yaml", "--data", "data", "--cases", "1", "--repeats", "2",
        "--workers", "2",
        cwd=project,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in STAGES:
        assert any(line.startswith(f"{name} ") for line in lines), (name, result.stdout)
    assert "2 loader worker(s)" in result.stdout
    assert "(2 workers), no model" in result.stdout
    assert "in the model," in result.stdout
    assert lines[-1].startswith("verdict: ")


def test_missing_dataset_is_one_line(project: Path) -> None:
    result = run_cli("bench", "config.yaml", "--data", "nowhere", cwd=project)
    assert "nowhere" in assert_one_line_error(result)


def _stage(name: str, seconds: float) -> StageTiming:
    return StageTiming(
        name=name, what=name, unit="batch", median_s=seconds, mean_s=seconds, min_s=seconds,
        repeats=3,
        peak_rss_mb=100.0,
    )  # fmt: skip


def test_verdict_data_bound_names_the_fix() -> None:
    stages = [
        _stage("loader", 0.8),
        _stage("train_step_fixed", 0.2),
        _stage("train_step", 0.8),
        _stage("augment", 0.3),
        _stage("cache_read_warm", 0.05),
    ]
    verdict = make_verdict(stages, workers=1, cpus=8, batch_size=2)
    assert verdict.bound == "data"
    assert verdict.factor == pytest.approx(4.0)
    assert verdict.real_over_limit == pytest.approx(4.0)
    assert "data-bound by 4.0x" in verdict.message
    assert "raise training.workers (now 1, 8 CPUs)" in verdict.message
    saturated = make_verdict(stages, workers=8, cpus=8, batch_size=2)
    assert "lighten the augmentation" in saturated.message


def test_verdict_model_bound() -> None:
    stages = [
        _stage("loader", 0.05),
        _stage("train_step_fixed", 0.5),
        _stage("train_step", 0.52),
        _stage("augment", 0.01),
        _stage("cache_read_warm", 0.01),
    ]
    verdict = make_verdict(stages, workers=2, cpus=2, batch_size=2)
    assert verdict.bound == "model"
    assert verdict.factor == pytest.approx(10.0)
    assert verdict.real_over_limit == pytest.approx(1.04)
    assert "model-bound by 10.0x" in verdict.message
