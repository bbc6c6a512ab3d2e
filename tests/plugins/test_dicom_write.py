"""The dicom plugin's writers: a Volume as a CT series folder (round trip), NIfTI predictions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from miscore_dicom import DicomIO

import miscore
from miscore.testing import oblique_affine, synthetic_volume
from tests.plugins.dicom_helpers import SeriesSpec, stored_values, write_series


def files_in(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


@pytest.mark.parametrize("oblique", [False, True])
def test_float_volume_round_trips_within_rescale_rounding(tmp_path: Path, oblique: bool) -> None:
    volume = synthetic_volume(shape=(24, 20, 12), oblique=oblique, seed=1)
    io = DicomIO()

    written = io.write(volume, tmp_path / "case_001")
    back = io.read(written)

    assert written == tmp_path / "case_001" and written.is_dir()
    assert len(files_in(written)) == 12
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".miscore-tmp-")]
    assert back.spatial_shape == volume.spatial_shape
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
    slope = float(back.meta["rescale_slope"])
    value_range = float(volume.array.max() - volume.array.min())
    assert slope == pytest.approx(value_range / 65534, rel=1e-3)
    assert np.max(np.abs(back.array - volume.array)) <= slope / 2 + 1e-4
    ds = pydicom.dcmread(files_in(written)[0])
    assert ds.Modality == "CT" and ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.PatientID == "case_001"
    assert ds.pixel_array.dtype == np.int16


def test_integer_volume_round_trips_exactly_and_simpleitk_agrees(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(-1024, 3000, size=(16, 12, 8, 1)).astype(np.int16)
    volume = miscore.Volume(array, oblique_affine(spacing=(0.7, 0.9, 3.0)))
    written = DicomIO().write(volume, tmp_path / "ct")

    back = DicomIO().read(written)

    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
    reader = sitk.ImageSeriesReader()  # type: ignore[no-untyped-call]
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(written)))  # type: ignore[no-untyped-call]
    image = reader.Execute()  # type: ignore[no-untyped-call]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), array[..., 0])
    direction = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    np.testing.assert_allclose(direction * [[-1], [-1], [1]], volume.affine[:3, :3], atol=1e-5)


def test_wide_integer_range_uses_an_intercept(tmp_path: Path) -> None:
    array = np.arange(6 * 5 * 3, dtype=np.int32).reshape(6, 5, 3, 1) * 700
    volume = miscore.Volume(array, np.diag([1.0, 1.0, 2.0, 1.0]))
    back = DicomIO().read(DicomIO().write(volume, tmp_path / "wide"))
    np.testing.assert_array_equal(back.array, array)


def test_same_volume_gives_the_same_uids_and_overwrites_atomically(tmp_path: Path) -> None:
    volume = synthetic_volume(shape=(8, 8, 4), seed=2)
    io = DicomIO()
    io.write(volume, tmp_path / "a")
    first = [pydicom.dcmread(p).SOPInstanceUID for p in files_in(tmp_path / "a")]
    (tmp_path / "a" / "stale.dcm").write_text("left from before")

    io.write(volume, tmp_path / "a")

    again = [pydicom.dcmread(p).SOPInstanceUID for p in files_in(tmp_path / "a")]
    assert first == again and len(set(first)) == 4
    assert not (tmp_path / "a" / "stale.dcm").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".miscore-tmp-")]


def test_prediction_for_dicom_input_is_written_as_nifti_on_the_dicom_grid(tmp_path: Path) -> None:
    spec = SeriesSpec(shape=(10, 8, 5))
    write_series(tmp_path / "ct", spec, stored_values(spec.shape), rng=np.random.default_rng(1))
    image = DicomIO().read(tmp_path / "ct")
    mask = np.zeros((10, 8, 5, 1), np.uint8)
    mask[2:5, 1:3, 4] = 2

    written = DicomIO().write(image.with_array(mask), tmp_path / "ct.nii.gz", reference=image)

    nifti: Any = nib.load(written)
    np.testing.assert_allclose(nifti.affine, spec.affine_ras(), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), mask[..., 0])
    assert DicomIO.write_suffix == ".nii.gz"


def test_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    io = DicomIO()
    with pytest.raises(miscore.InputError, match="writes NIfTI"):
        io.write(synthetic_volume(shape=(4, 4, 4)), tmp_path / "x.png")
    with pytest.raises(miscore.InputError, match="holds one channel; the volume has 2"):
        io.write(synthetic_volume(shape=(4, 4, 4), channels=2), tmp_path / "two")
    skewed = np.eye(4)
    skewed[0, 1] = 0.5
    with pytest.raises(miscore.InputError, match="not orthogonal"):
        io.write(miscore.Volume(np.zeros((4, 4, 4, 1)), skewed), tmp_path / "skewed")


def test_importing_the_plugin_loads_no_heavy_library() -> None:
    code = (
        "import sys, miscore_dicom; "
        "heavy = [m for m in ('pydicom', 'highdicom', 'SimpleITK', 'nibabel', 'tensorflow') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
