"""miscore.pipeline.evaluate: per-case, per-class metric rows, the summary, TSV and JSON reports."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from miscore_metrics import DEFAULT_METRICS

import miscore
from miscore.pipeline.evaluate import EvaluationReport, evaluate

AFFINE = np.diag([1.5, 0.5, 2.0, 1.0])  # anisotropic: axis 0 is 1.5 mm


@pytest.fixture(scope="module")
def registry() -> miscore.Registry:
    return miscore.PluginManager(disabled=(), trace=False).registry


def labels(*boxes: tuple[int, tuple[int, int, int], int]) -> miscore.Volume:
    """A 24x16x16 label volume with an 8-voxel cube of ``class`` at ``start`` per box."""
    array = np.zeros((24, 16, 16, 1), np.uint8)
    for class_id, (x, y, z), side in boxes:
        array[x : x + side, y : y + side, z : z + side] = class_id
    return miscore.Volume(array, AFFINE)


def two_cases() -> list[tuple[str, miscore.Volume, miscore.Volume]]:
    truth_a = labels((1, (4, 4, 4), 8), (2, (0, 0, 0), 2))
    pred_a = labels((1, (6, 4, 4), 8))  # class 1 shifted 2 voxels along axis 0; class 2 missed
    truth_b = labels((1, (4, 4, 4), 8))
    pred_b = labels((1, (4, 4, 4), 8))  # perfect, and no class 2 anywhere
    return [("a", pred_a, truth_a), ("b", pred_b, truth_b)]


def test_rows_per_case_and_class_with_known_numbers(registry: miscore.Registry) -> None:
    report = evaluate(two_cases(), registry)
    assert report.metrics == list(DEFAULT_METRICS)
    assert report.classes == [1, 2]
    assert [(r.case, r.class_id, r.empty) for r in report.rows] == [
        ("a", 1, ""),
        ("a", 2, "pred"),
        ("b", 1, ""),
        ("b", 2, "both"),  # class 2 absent from both volumes of case b
    ]
    a1, a2, b1, b2 = (r.values for r in report.rows)
    assert a1["dice"] == pytest.approx(6 / 8)
    assert a1["iou"] == pytest.approx(6 / 10)
    assert 0 < a1["hd95"] <= 2 * 1.5
    assert a1["volume_true_ml"] == pytest.approx(512 * 1.5 * 0.5 * 2.0 / 1000)
    assert a2["dice"] == 0.0
    assert math.isnan(a2["hd95"]) and math.isnan(a2["assd"])
    assert a2["volume_true_ml"] == pytest.approx(8 * 1.5 / 1000)
    assert b1["dice"] == 1.0 and b1["hd95"] == 0.0 and b1["nsd"] == 1.0
    assert b2["dice"] == 1.0 and b2["hd95"] == 0.0 and b2["volume_pred_ml"] == 0.0


def test_summary_is_nan_aware(registry: miscore.Registry) -> None:
    report = evaluate(two_cases(), registry)
    dice1 = report.stats(1, "dice")
    assert dice1.mean == pytest.approx((0.75 + 1.0) / 2)
    assert dice1.median == pytest.approx(0.875)
    assert dice1.std == pytest.approx(0.125)
    assert (dice1.n, dice1.n_nan) == (2, 0)
    hd95_2 = report.stats(2, "hd95")
    assert (hd95_2.n, hd95_2.n_nan) == (1, 1)
    assert hd95_2.mean == 0.0  # only case b counts; case a is NaN (prediction empty)
    np.testing.assert_allclose(report.column("dice", 2), [0.0, 1.0])


def test_explicit_classes_and_metrics_with_params(registry: miscore.Registry) -> None:
    metrics = ["dice", {"name": "nsd", "tolerance_mm": 3.0}, "volume_diff_ml"]
    report = evaluate(two_cases(), registry, metrics=metrics, classes=[1])
    assert report.metrics == ["dice", "nsd", "volume_diff_ml"]
    assert report.metric_params["nsd"] == {"tolerance_mm": 3.0}
    assert [r.class_id for r in report.rows] == [1, 1]
    assert report.rows[0].values["nsd"] == 1.0  # a 2-voxel (3 mm) shift is within tolerance
    assert report.rows[0].values["volume_diff_ml"] == 0.0
    with pytest.raises(miscore.InputError, match="asked for twice"):
        evaluate(two_cases(), registry, metrics=["dice", "dice"])
    with pytest.raises(miscore.ComponentNotFoundError, match="did you mean 'dice'"):
        evaluate(two_cases(), registry, metrics=["dise"])


def test_refuses_pairs_on_different_grids(registry: miscore.Registry) -> None:
    truth = labels((1, (4, 4, 4), 8))
    moved = miscore.Volume(truth.array, np.diag([1.0, 0.5, 2.0, 1.0]))
    with pytest.raises(miscore.InputError, match="case c7: the prediction's grid"):
        evaluate([("c7", moved, truth)], registry)
    smaller = miscore.Volume(truth.array[:20], AFFINE)
    with pytest.raises(miscore.InputError, match=r"c8.*shape \(20, 16, 16\)"):
        evaluate([("c8", smaller, truth)], registry)
    with pytest.raises(miscore.InputError, match="case a is given twice"):
        evaluate([*two_cases(), two_cases()[0]], registry)


def test_float_labels_are_accepted_non_integers_refused(registry: miscore.Registry) -> None:
    truth = labels((1, (4, 4, 4), 8))
    as_float = miscore.Volume(truth.array.astype(np.float32), AFFINE)
    report = evaluate([("f", as_float, truth)], registry, metrics=["dice"])
    assert report.rows[0].values["dice"] == 1.0
    fractional = miscore.Volume(truth.array * 0.5, AFFINE)
    with pytest.raises(miscore.InputError, match=r"case f prediction.*non-integer"):
        evaluate([("f", fractional, truth)], registry, metrics=["dice"])


def test_tsv_file_reads_back(registry: miscore.Registry, tmp_path: Path) -> None:
    report = evaluate(two_cases(), registry)
    path = report.write_tsv(tmp_path / "out" / "metrics.tsv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == ["case", "class", *DEFAULT_METRICS, "empty"]
    assert [(r["case"], r["class"], r["empty"]) for r in rows] == [
        ("a", "1", ""),
        ("a", "2", "pred"),
        ("b", "1", ""),
        ("b", "2", "both"),
    ]
    assert float(rows[0]["dice"]) == pytest.approx(0.75)
    assert rows[1]["hd95"] == "nan"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".miscore-tmp-")]
    summary = report.write_summary_tsv(tmp_path / "summary.tsv").read_text().splitlines()
    assert summary[0].split("\t") == ["class", "metric", "mean", "std", "median", "n", "n_nan"]
    assert "2\thd95\t0\t0\t0\t1\t1" in summary


def test_json_report_is_strict_and_round_trips(registry: miscore.Registry, tmp_path: Path) -> None:
    report = evaluate(two_cases(), registry)
    path = report.write_json(tmp_path / "report.json")
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert data["rows"][1]["class"] == 2
    assert data["rows"][1]["values"]["hd95"] is None
    back = EvaluationReport.read_json(path)
    assert math.isnan(back.rows[1].values["hd95"])
    assert back.rows[0].values == report.rows[0].values
    assert back.stats(1, "dice") == report.stats(1, "dice")


def test_two_dimensional_volumes(registry: miscore.Registry) -> None:
    truth = np.zeros((16, 16, 1), np.uint8)
    truth[4:8, 4:8] = 1
    pred = np.zeros_like(truth)
    pred[5:9, 4:8] = 1
    affine = np.diag([0.5, 0.5, 1.0, 1.0])
    report = evaluate(
        [("s", miscore.Volume(pred, affine), miscore.Volume(truth, affine))], registry
    )
    assert report.rows[0].values["dice"] == pytest.approx(0.75)
    assert report.rows[0].values["hd95"] == pytest.approx(0.5)


# --- the CLI: miscore evaluate PRED GT ----------------------------------------------------


def write_nifti(path: Path, volume: miscore.Volume) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.array[..., 0], volume.affine), str(path))


def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "miscore", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for case_id, p, t in two_cases():
        write_nifti(pred / f"{case_id}.nii.gz", p)
        write_nifti(gt / f"{case_id}.nii.gz", t)
    write_nifti(gt / "c.nii.gz", labels((1, (0, 0, 0), 4)))  # ground truth not predicted
    (gt / "README.txt").write_text("notes")  # not a label file: skipped
    return pred, gt


def test_cli_pairs_nifti_files_by_case_id(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, gt = folders
    out, report_path = tmp_path / "metrics.tsv", tmp_path / "report.json"
    result = run_cli("evaluate", pred, gt, "--out", out, "--report", report_path, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(r["case"], r["class"], r["empty"]) for r in data["rows"]] == [
        ("a", 1, ""),
        ("a", 2, "pred"),
        ("b", 1, ""),
        ("b", 2, "both"),
    ]
    assert data["rows"][0]["values"]["dice"] == pytest.approx(0.75)
    assert data["rows"][0]["values"]["volume_true_ml"] == pytest.approx(0.768)
    assert "1 ground-truth case(s) have no prediction" in result.stderr
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [float(r["dice"]) for r in rows] == pytest.approx([0.75, 0.0, 1.0, 1.0])
    assert EvaluationReport.read_json(report_path).stats(1, "dice").mean == pytest.approx(0.875)


def test_cli_table_classes_and_metrics(folders: tuple[Path, Path]) -> None:
    pred, gt = folders
    result = run_cli(
        "evaluate", pred, gt, "--classes", "1", "-m", "dice", "-m", "nsd", "--nsd-tolerance", "3"
    )
    assert result.returncode == 0, result.stderr
    assert "2 case(s)" in result.stdout
    lines = [line for line in result.stdout.splitlines() if "dice" in line or "nsd" in line]
    assert len(lines) == 2
    assert "0.8750" in lines[0]  # mean Dice of class 1
    assert "1.0000" in lines[1]  # both shifts within 3 mm
    assert "hd95" not in result.stdout


def test_cli_errors_name_the_case(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, gt = folders
    moved = miscore.Volume(labels((1, (4, 4, 4), 8)).array, np.diag([1.0, 1.0, 1.0, 1.0]))
    write_nifti(pred / "b.nii.gz", moved)
    result = run_cli("evaluate", pred, gt)
    assert result.returncode == 2
    assert "case b: the prediction's grid" in result.stderr
    write_nifti(pred / "zz.nii.gz", moved)
    result = run_cli("evaluate", pred, gt)
    assert result.returncode == 2
    assert "no ground truth for 1 predicted case(s): zz" in result.stderr
    result = run_cli("evaluate", pred, gt, "--classes", "one")
    assert result.returncode == 2
    assert "--classes: 'one' is not a class id" in result.stderr
    result = run_cli("evaluate", tmp_path / "nothing", gt)
    assert result.returncode == 2
    assert "no such file or folder" in result.stderr


def test_cli_ground_truth_as_an_msd_dataset(tmp_path: Path) -> None:
    root, pred = tmp_path / "Task01", tmp_path / "pred"
    for case_id, p, t in two_cases():
        image = t.with_array(t.array.astype(np.float32) * 100)
        write_nifti(root / "imagesTr" / f"{case_id}_0000.nii.gz", image)
        write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", t)
        write_nifti(pred / f"{case_id}.nii.gz", p)
    write_nifti(root / "imagesTs" / "t1_0000.nii.gz", labels())  # unlabelled: never paired
    result = run_cli("evaluate", pred, root, "--json", "-m", "dice", "-c", "1,2")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["values"]["dice"] for r in data["rows"]] == pytest.approx([0.75, 0.0, 1.0, 1.0])
    assert data["classes"] == [1, 2]
