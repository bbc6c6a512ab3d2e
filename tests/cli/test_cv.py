"""``miscore cv`` on a small synthetic dataset, and the ensemble ``miscore predict CV_DIR``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.cli.helpers import assert_one_line_error, run_cli

CONFIG = """
data: {classes: 3, class_names: [background, organ, tumour]}
preprocessing: [{name: clip, min: -150, max: 250}, zscore]
patching: {mode: random, patch_shape: [32, 32, 32], samples_per_case: 1}
model:
  architecture: {name: unet, filters: 4, depth: 2}
  loss: dice_ce
training: {epochs: 2, batch_size: 2, learning_rate: 0.003}
inference: {keep_largest: [1]}
evaluation: {metrics: [dice, hd95, {name: nsd, tolerance_mm: 2.0}, volume_true_ml]}
cache: {path: cache}
"""
CASES = [f"case_{i:03d}" for i in range(6)]


def load_nifti(path: Path) -> Any:
    """A NIfTI image (``shape``, ``affine``, ``dataobj``)."""
    return nib.load(path)


@pytest.fixture(scope="module")
def cv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-fold cross-validation of a tiny 3D U-Net (2 epochs) on 6 cases of 32^3."""
    root = tmp_path_factory.mktemp("cv")
    result = run_cli(
        "synth", root / "data", "--cases", "6", "--shape", "32", "32", "32",
        "--classes", "3", "--seed", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (root / "config.yaml").write_text(CONFIG)
    result = run_cli(
        "cv", "config.yaml", "--data", "data", "--scheme", "kfold", "--folds", "3",
        "--out", "cv", cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "cross-validation: cv (3 folds" in result.stdout
    (root / "cv.stdout").write_text(result.stdout)
    (root / "cv.stderr").write_text(result.stderr)
    return root


def test_every_artefact_is_written(cv: Path) -> None:
    out = cv / "cv"
    for name in ("splits.json", "crossval.json", "metrics.tsv", "summary.tsv", "report.json"):
        assert (out / name).is_file(), name
    for name in ("curves_loss.png", "box_dice.png", "box_hd95.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report = json.loads((out / "report.json").read_text())
    assert sorted(c for fold in report["folds"] for c in fold["test"]) == CASES
    for i, fold in enumerate(report["folds"]):
        folder = out / f"fold_{i}"
        for name in ("model.keras", "miscore.json", "history.tsv", "curves.png"):
            assert (folder / "model" / name).is_file(), (i, name)
        history = (folder / "model" / "history.tsv").read_text().splitlines()
        assert [line.split("\t")[0] for line in history[1:]] == ["1", "2"]
        assert "epoch 2:" in (folder / "train.log").read_text()
        training = json.loads((folder / "model" / "miscore.json").read_text())
        assert sorted(training["training_cases"]) == sorted(fold["train"])
        used = {(c["kind"], c["name"]) for c in training["components"]}
        assert {("evaluator", "kfold"), ("sampler", "foreground")} <= used
        assert not set(fold["train"]) & set(fold["test"])
        for case in fold["test"]:
            prediction = folder / "predictions" / f"{case}.nii.gz"
            truth = load_nifti(cv / "data" / "labelsTr" / f"{case}.nii.gz")
            written = load_nifti(prediction)
            assert written.shape == truth.shape
            np.testing.assert_allclose(written.affine, truth.affine, atol=1e-4)
            assert fold["predictions"][case] == f"fold_{i}/predictions/{case}.nii.gz"


def test_the_postprocessing_decision_is_reported_and_written_into_the_models(cv: Path) -> None:
    report = json.loads((cv / "cv" / "report.json").read_text())
    decision = report["postprocessing"]
    assert decision["metric"] == "dice" and decision["cases"] == 6 and decision["applied"]
    assert [c["class"] for c in decision["classes"]] == [1, 2]
    dice = {s["class"]: s["mean"] for s in report["summary"] if s["metric"] == "dice"}
    kept = []
    for trial in decision["classes"]:
        # the folds' predictions follow the config (keep_largest: [1]); the decision starts
        # from the predictions without postprocessing
        as_configured = trial["dice_largest" if trial["class"] == 1 else "dice_before"]
        assert as_configured == pytest.approx(dice[trial["class"]], abs=1e-6)
        assert trial["keep"] == (trial["dice_largest"] > trial["dice_before"])
        assert trial["dice_after"] == max(trial["dice_before"], trial["dice_largest"])
        kept += [trial["class"]] if trial["keep"] else []
    setting = decision["keep_largest"]
    assert setting == {0: False, 1: kept, 2: True}[len(kept)]  # none, a list, all
    for i in range(3):  # the decision replaces the config's setting in every fold model
        stored = yaml.safe_load((cv / "cv" / f"fold_{i}" / "model" / "config.yaml").read_text())
        assert stored["inference"]["keep_largest"] == setting
    assert "postprocessing: inference.keep_largest = " in (cv / "cv.stderr").read_text()
    line = f"; inference.keep_largest {json.dumps(setting)})"
    assert line in (cv / "cv.stdout").read_text()


def test_each_overlay_gif_has_one_frame_per_slice(cv: Path) -> None:
    gifs = sorted((cv / "cv").glob("fold_*/overlays/*.gif"))
    assert [g.stem for g in sorted(gifs, key=lambda g: g.stem)] == CASES
    for gif in gifs:
        with Image.open(gif) as image:
            assert getattr(image, "n_frames", 1) == 32  # the last axis of a 32^3 case


def test_metrics_tsv_has_one_row_per_test_case_and_class(cv: Path) -> None:
    with (cv / "cv" / "metrics.tsv").open() as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    assert len(rows) == 6 * 2  # 6 test cases x classes 1 and 2
    # the columns are the config's evaluation.metrics, in order
    assert list(rows[0]) == [
        "fold",
        "case",
        "class",
        "dice",
        "hd95",
        "nsd",
        "volume_true_ml",
        "empty",
    ]
    assert sorted((r["case"], r["class"]) for r in rows) == [
        (c, k) for c in CASES for k in ("1", "2")
    ]
    report = json.loads((cv / "cv" / "report.json").read_text())
    fold_of = {c: f"fold_{f['index']}" for f in report["folds"] for c in f["test"]}
    assert all(r["fold"] == fold_of[r["case"]] for r in rows)
    dice = np.array([float(r["dice"]) for r in rows if r["class"] == "1"])
    assert np.all((dice >= 0) & (dice <= 1))
    summary = {
        (s["class"], s["metric"]): s for s in csv.DictReader(
            (cv / "cv" / "summary.tsv").open(), delimiter="\t"
        )
    }  # fmt: skip
    assert float(summary[("1", "dice")]["mean"]) == pytest.approx(dice.mean(), abs=1e-5)
    assert summary[("1", "dice")]["n"] == "6"


def test_splits_json_round_trips_through_splits(cv: Path) -> None:
    result = run_cli(
        "cv", "config.yaml", "--data", "data", "--splits", "cv/splits.json",
        "--only-splits", "--out", "again", cwd=cv,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    first = json.loads((cv / "cv" / "splits.json").read_text())
    again = json.loads((cv / "again" / "splits.json").read_text())
    assert again["folds"] == first["folds"]
    assert (
        again["evaluator"] == first["evaluator"] == {"name": "kfold", "folds": 3, "shuffle": True}
    )


def test_rerunning_into_a_finished_folder_is_refused(cv: Path) -> None:
    result = run_cli("cv", "config.yaml", "--data", "data", "--out", "cv", cwd=cv)
    line = assert_one_line_error(result)
    assert "already holds a cross-validation; use --resume" in line


def test_predict_with_the_cv_folder_averages_the_folds(cv: Path) -> None:
    image = cv / "data" / "imagesTr" / "case_000_0000.nii.gz"
    result = run_cli("predict", "cv", image, "--out", "ensemble", cwd=cv)
    assert result.returncode == 0, result.stderr
    written = load_nifti(cv / "ensemble" / "case_000.nii.gz")
    source = load_nifti(image)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)

    from miscore import PluginManager
    from miscore.data.dataset import Dataset
    from miscore.pipeline.inference import EnsemblePredictor, load_model
    from miscore.pipeline.postprocessing import keep_largest_component

    plugins = PluginManager()
    ensemble = load_model(cv / "cv", plugins)
    assert isinstance(ensemble, EnsemblePredictor)
    assert [m.model_dir for m in ensemble.members] == [
        cv / "cv" / f"fold_{i}" / "model" for i in range(3)
    ]
    case = Dataset.discover(cv / "data", plugins.registry).load("case_000", label=False)
    label, probs = ensemble.predict_case(case, with_probabilities=True)
    assert probs is not None
    each = []
    for member in ensemble.members:
        _, member_probs = member.predict_case(case, with_probabilities=True)
        assert member_probs is not None
        each.append(member_probs.array)
    mean = np.mean(each, axis=0)
    np.testing.assert_allclose(probs.array, mean, atol=1e-5)
    # the argmax, postprocessed as miscore cv decided (the fold models' inference settings)
    kept = ensemble.config.inference.largest_component_classes(3)
    expected = keep_largest_component(np.argmax(probs.array, axis=-1), kept)
    np.testing.assert_array_equal(label.array[..., 0], expected)
    np.testing.assert_array_equal(np.asarray(written.dataobj), label.array[..., 0])


def test_the_console_table_shows_every_metric_asked_for_in_order(cv: Path, tmp_path: Path) -> None:
    # a copy of the finished folder, resumed: no training, the test cases scored again
    shutil.copytree(cv / "cv", tmp_path / "cv")
    asked = ["recall", "dice", "volume_true_ml", "precision"]
    result = run_cli(
        "cv", cv / "config.yaml", "--data", cv / "data", "--out", tmp_path / "cv", "--resume",
        "--no-overlays", *(arg for name in asked for arg in ("--metric", name)), cwd=cv,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    known = {"dice", "iou", "precision", "recall", "hd95", "nsd", "volume_true_ml"}
    shown = [w for line in result.stdout.splitlines() for w in line.split() if w in known]
    assert shown == asked * 2, result.stdout  # classes 1 and 2, each with every metric


def test_resume_keeps_the_finished_folds_and_can_keep_the_configs_postprocessing(
    cv: Path,
) -> None:
    # last in the module: it rewrites the reports (to the same values but the postprocessing
    # setting) and the models' inference settings, but no model
    before = (cv / "cv" / "fold_0" / "model" / "model.keras").stat().st_mtime_ns
    decided = json.loads((cv / "cv" / "report.json").read_text())["postprocessing"]
    (cv / "config_lcc.yaml").write_text(CONFIG.replace("keep_largest: [1]", "keep_largest: [2]"))
    result = run_cli(
        "cv", "config_lcc.yaml", "--data", "data", "--out", "cv", "--resume",
        "--no-postprocessing-decision", cwd=cv,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"inference.keep_largest {json.dumps(decided['keep_largest'])}, not written)" in (
        result.stdout
    )
    again = json.loads((cv / "cv" / "report.json").read_text())["postprocessing"]
    assert again == {**decided, "applied": False}  # computed from the raw predictions again
    for i in range(3):
        stored = yaml.safe_load((cv / "cv" / f"fold_{i}" / "model" / "config.yaml").read_text())
        assert stored["inference"]["keep_largest"] == [2]
    assert result.stderr.count("already trained for 2 epochs") == 3
    assert (cv / "cv" / "fold_0" / "model" / "model.keras").stat().st_mtime_ns == before
    log = (cv / "cv" / "fold_0" / "train.log").read_text()
    assert "epoch 2:" in log and "already trained for 2 epochs" in log
    rows = (cv / "cv" / "metrics.tsv").read_text().splitlines()
    assert len(rows) == 1 + 12
