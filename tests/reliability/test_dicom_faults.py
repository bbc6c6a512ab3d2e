"""Broken DICOM folders through the CLI, and DICOM tags that try to leave the output folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.cli.helpers import assert_one_line_error, run_cli
from tests.plugins.dicom_helpers import SeriesSpec, stored_values, write_series
from tests.reliability.helpers import files_under, tree_hash

SHAPE = (12, 10, 6)


def _series(folder: Path, **spec: object) -> list[Path]:
    return write_series(folder, SeriesSpec(shape=SHAPE, **spec), stored_values(SHAPE))  # type: ignore[arg-type]


def _missing_slice(folder: Path) -> None:
    _series(folder)[2].unlink()


def _duplicate_position(folder: Path) -> None:
    spec = SeriesSpec(shape=SHAPE)
    positions = [spec.position(k) for k in range(SHAPE[2])]
    positions[3] = positions[2]
    write_series(folder, spec, stored_values(SHAPE), positions=positions)


def _no_pixel_data(folder: Path) -> None:
    import pydicom

    for path in _series(folder):
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path)


def _no_dicom(folder: Path) -> None:
    folder.mkdir()
    for i in range(3):
        (folder / f"IM{i:04d}").write_bytes(b"\0" * 200)


def _truncated_pixel_data(folder: Path) -> None:
    path = _series(folder)[3]
    path.write_bytes(path.read_bytes()[:-50])


def _garbled_vr(folder: Path) -> None:
    path = _series(folder)[1]
    data = path.read_bytes()
    modality = b"\x08\x00\x60\x00CS"  # (0008,0060) Modality, explicit VR
    assert data.count(modality) == 1
    path.write_bytes(data.replace(modality, b"\x08\x00\x60\x00C\xd7"))


DICOM_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "pixel data cut short": (_truncated_pixel_data, "damaged pixel data"),
    "a garbled VR": (_garbled_vr, "damaged DICOM data (NotImplementedError"),
    "missing slice": (_missing_slice, "missing slices"),
    "two slices at one position": (_duplicate_position, "same position"),
    "no pixel data": (_no_pixel_data, "pixel data"),
    "no DICOM at all": (_no_dicom, "no dataset layout recognised"),
}


@pytest.mark.parametrize("fault", sorted(DICOM_FAULTS))
def test_a_broken_series_is_one_line_naming_it(fault: str, tmp_path: Path) -> None:
    folder = tmp_path / "series"
    damage, expected = DICOM_FAULTS[fault]
    damage(folder)
    before = tree_hash(folder)
    line = assert_one_line_error(run_cli("info", folder))
    assert "series" in line and expected in line, line
    assert tree_hash(folder) == before


def test_two_series_in_one_folder_read_the_larger_or_the_one_asked_for(tmp_path: Path) -> None:
    folder = tmp_path / "two"
    _series(folder, description="small")
    big = (12, 10, 9)
    write_series(folder, SeriesSpec(shape=big, description="big"), stored_values(big), prefix="B")
    result = run_cli("info", folder, "--json")
    assert result.returncode == 0, result.stderr
    assert '"shape": [\n    12,\n    10,\n    9\n  ]' in result.stdout


def test_dicom_tags_with_dot_dot_never_leave_the_output_folder(
    reliability_root: Path, tmp_path: Path
) -> None:
    import pydicom

    series = tmp_path / "inputs" / "patient1"
    for path in _series(series, description="../../evil"):
        ds = pydicom.dcmread(path)
        ds.PatientID = "../../../escape"
        ds.PatientName = "..\\..\\x"
        ds.save_as(path)
    out = tmp_path / "work" / "out"
    result = run_cli("-q", "predict", reliability_root / "model", series, "--out", out)
    assert result.returncode == 0, result.stderr
    assert files_under(out) == ["patient1.nii.gz"]
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents]
    assert all(series in p.parents for p in outside), outside
    assert np.asarray(  # the prediction is on the series' grid
        __import__("nibabel").load(out / "patient1.nii.gz").shape
    ).tolist() == list(SHAPE)
