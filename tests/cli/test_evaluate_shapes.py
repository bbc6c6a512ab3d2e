"""``miscore evaluate`` with predictions whose file shape differs from the ground truth's.

A ``(X, Y, Z, 1)`` NIfTI (what several tools write for a label map) is read as the one channel
of a ``(X, Y, Z)`` label map, with a note on stderr; any other shape is refused in one line
naming both files and both shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from tests.cli.helpers import assert_one_line_error, run_cli

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def _labels() -> npt.NDArray[np.uint8]:
    array = np.zeros((16, 16, 12), np.uint8)
    array[4:10, 4:10, 3:8] = 1
    array[11:14, 2:5, 2:4] = 2
    return array


def _save(path: Path, array: npt.NDArray[np.uint8]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), path)
    return path


def test_a_trailing_singleton_axis_is_the_channel_with_a_note(tmp_path: Path) -> None:
    truth = _labels()
    for case in ("a", "b"):
        _save(tmp_path / "gt" / f"{case}.nii.gz", truth)
        _save(tmp_path / "pred" / f"{case}.nii.gz", truth[..., None])  # (16, 16, 12, 1)
    assert nib.load(tmp_path / "pred" / "a.nii.gz").shape == (16, 16, 12, 1)
    result = run_cli("evaluate", tmp_path / "pred", tmp_path / "gt", "-m", "dice", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(r["case"], r["class"], r["values"]["dice"]) for r in data["rows"]] == [
        ("a", 1, 1.0),
        ("a", 2, 1.0),
        ("b", 1, 1.0),
        ("b", 2, 1.0),
    ]
    notes = [line for line in result.stderr.splitlines() if line.startswith("miscore: note:")]
    assert len(notes) == 1, result.stderr  # one note for the run, not one per case
    assert "2 prediction(s)" in notes[0]
    assert str(tmp_path / "pred" / "a.nii.gz") in notes[0]
    assert "(16, 16, 12, 1)" in notes[0] and "(16, 16, 12)" in notes[0]


def test_the_note_shows_with_quiet_too(tmp_path: Path) -> None:
    gt = _save(tmp_path / "gt.nii.gz", _labels())
    pred = _save(tmp_path / "pred.nii.gz", _labels()[..., None])
    result = run_cli("-q", "evaluate", pred, gt, "-m", "dice", "--json")
    assert result.returncode == 0, result.stderr
    assert "miscore: note: 1 prediction(s)" in result.stderr


def test_other_shapes_are_refused_naming_both_files_and_shapes(tmp_path: Path) -> None:
    truth = _labels()
    gt = _save(tmp_path / "gt.nii.gz", truth)
    wrong = {
        "two_channels": np.stack([truth, truth], axis=-1),  # (16, 16, 12, 2)
        "leading_axis": truth[None],  # (1, 16, 16, 12)
        "cropped": truth[:15],  # (15, 16, 12)
    }
    for name, array in wrong.items():
        pred = _save(tmp_path / f"{name}.nii.gz", array)
        line = assert_one_line_error(run_cli("-q", "evaluate", pred, gt, "-m", "dice"))
        assert str(pred) in line and str(gt) in line, line
        assert str(array.shape) in line and str(truth.shape) in line, line
