"""The dicom plugin's reader: slice order, rescale, geometry, series choice and refusals.

Checked against SimpleITK's ImageSeriesReader (converted from LPS and z,y,x order) on folders
the tests build, and on pydicom's bundled test files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import SimpleITK as sitk
from miscore_dicom import DicomIO
from pydicom.data import get_testdata_file

import miscore
from miscore.testing import check_component
from tests.plugins.dicom_helpers import (
    LPS_TO_RAS,
    SeriesSpec,
    oblique_cosines,
    slice_dataset,
    stored_values,
    write_enhanced,
    write_series,
)

PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
CT5N = PYDICOM_DATA / "dicomdirtests" / "98892001" / "CT5N"
CT2_WITH_GAP = PYDICOM_DATA / "dicomdirtests" / "77654033" / "CT2"


def sitk_series(folder: Path, series_uid: str = "") -> tuple[npt.NDArray[np.float64], np.ndarray]:
    """SimpleITK's reading of a series as ((i, j, k) values, RAS affine)."""
    reader = sitk.ImageSeriesReader()  # type: ignore[no-untyped-call]
    files = reader.GetGDCMSeriesFileNames(str(folder), series_uid)  # type: ignore[no-untyped-call]
    reader.SetFileNames(files)  # type: ignore[no-untyped-call]
    image = reader.Execute()  # type: ignore[no-untyped-call]
    values = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    affine = np.eye(4)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine[:3, :3] = direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return values, LPS_TO_RAS @ affine


def test_registers_through_the_entry_point(installed_plugins: miscore.PluginManager) -> None:
    assert installed_plugins.registry.get_io("dicom") is DicomIO
    io = check_component(DicomIO)
    assert io.config()["output"] == "nifti"


def test_can_read_folders_and_files(tmp_path: Path) -> None:
    io = DicomIO()
    spec = SeriesSpec(shape=(8, 6, 3))
    write_series(tmp_path / "ct", spec, stored_values(spec.shape))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not dicom")
    assert io.can_read(tmp_path / "ct")
    assert io.can_read(Path(str(get_testdata_file("CT_small.dcm"))))
    assert not io.can_read(tmp_path / "notes")
    assert not io.can_read(tmp_path / "notes" / "a.txt")
    assert not io.can_read(tmp_path / "missing")
    assert io.case_id(tmp_path / "ct") == "ct"


@pytest.mark.parametrize("oblique", [False, True])
def test_shuffled_names_and_reversed_instance_numbers_match_simpleitk(
    tmp_path: Path, oblique: bool
) -> None:
    spec = SeriesSpec(shape=(14, 10, 7))
    if oblique:
        spec.row_cosine, spec.column_cosine = oblique_cosines()
    stored = stored_values(spec.shape)
    write_series(tmp_path / "ct", spec, stored, rng=np.random.default_rng(3))

    volume = DicomIO().read(tmp_path / "ct")
    values, affine = sitk_series(tmp_path / "ct")

    assert volume.array.shape == (14, 10, 7, 1)
    np.testing.assert_array_equal(volume.array[..., 0], stored.astype(np.int32) - 1024)
    np.testing.assert_array_equal(volume.array[..., 0], values)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    np.testing.assert_allclose(volume.affine, spec.affine_ras(), atol=1e-5)
    assert volume.spacing == pytest.approx((0.9, 0.7, 2.5), abs=1e-6)
    assert volume.array.dtype == np.int32  # int16 stored with intercept -1024 may overflow int16
    assert volume.meta["series_instance_uid"] == spec.series_uid
    assert volume.meta["frame_of_reference_uid"] == spec.frame_uid
    assert volume.meta["patient_id"] == "P001"
    assert volume.meta["modality"] == "CT"
    # the files are kept in slice order, with their SOPInstanceUIDs
    depths = [
        float(np.dot(pydicom.dcmread(p).ImagePositionPatient, spec.normal))
        for p in volume.meta["files"]
    ]
    assert depths == sorted(depths)
    assert [pydicom.dcmread(p).SOPInstanceUID for p in volume.meta["files"]] == volume.meta[
        "sop_instance_uids"
    ]


def test_rescale_that_varies_per_slice_gives_float32(tmp_path: Path) -> None:
    spec = SeriesSpec(shape=(6, 5, 4))
    stored = stored_values(spec.shape)
    slopes = [1.0, 0.5, 2.0, 0.25]
    write_series(tmp_path / "ct", spec, stored, slopes=slopes, intercept=-10.5)

    volume = DicomIO().read(tmp_path / "ct")

    assert volume.array.dtype == np.float32
    expected = stored * np.asarray(slopes)[None, None, :] - 10.5
    np.testing.assert_allclose(volume.array[..., 0], expected, rtol=1e-6)
    assert sorted(volume.meta["rescale_slope"]) == sorted(slopes)


def test_folder_with_several_series(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    big = SeriesSpec(shape=(6, 5, 5), description="AX 2.5")
    small = SeriesSpec(shape=(6, 5, 3), description="Scout", frame_uid=big.frame_uid)
    big_values, small_values = stored_values(big.shape, 1), stored_values(small.shape, 2)
    write_series(folder, big, big_values, rng=np.random.default_rng(0), prefix="a")
    write_series(folder, small, small_values, rng=np.random.default_rng(1), prefix="b")

    default = DicomIO().read(folder)
    by_uid = DicomIO(series_uid=small.series_uid).read(folder)
    by_description = DicomIO(series_description="scout").read(folder)

    assert default.meta["series_instance_uid"] == big.series_uid
    assert default.spatial_shape == (6, 5, 5)
    assert [s["series_uid"] for s in default.meta["other_series"]] == [small.series_uid]
    assert default.meta["other_series"][0]["description"] == "Scout"
    np.testing.assert_array_equal(by_uid.array[..., 0], small_values.astype(np.int32) - 1024)
    assert by_description.meta["series_instance_uid"] == small.series_uid
    values, affine = sitk_series(folder, small.series_uid)
    np.testing.assert_array_equal(by_uid.array[..., 0], values)
    np.testing.assert_allclose(by_uid.affine, affine, atol=1e-5)
    with pytest.raises(miscore.InputError, match=r"mixed: no series with SeriesInstanceUID 1\.2"):
        DicomIO(series_uid="1.2.3").read(folder)
    with pytest.raises(miscore.InputError, match=r"available: 'AX 2\.5', 'Scout'"):
        DicomIO(series_description="T1").read(folder)


def test_pydicom_ct5n_is_ordered_by_position_not_instance_number() -> None:
    assert CT5N.is_dir(), "pydicom's test data lacks dicomdirtests/98892001/CT5N"
    volume = DicomIO().read(CT5N)

    datasets = [pydicom.dcmread(p) for p in sorted(CT5N.iterdir())]
    by_z = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    # InstanceNumber runs against z in this series
    assert [int(d.InstanceNumber) for d in by_z] == [10, 9, 8, 7, 6]
    expected = np.stack([d.pixel_array.T.astype(np.int32) - 1024 for d in by_z], axis=-1)
    np.testing.assert_array_equal(volume.array[..., 0], expected)
    assert volume.affine[2, 2] == pytest.approx(2.5)
    assert volume.origin == pytest.approx((72.199997, 143.0, -1.2375))
    values, affine = sitk_series(CT5N)
    np.testing.assert_array_equal(volume.array[..., 0], values)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)


def test_pydicom_ct2_with_a_gap_is_refused() -> None:
    assert CT2_WITH_GAP.is_dir(), "pydicom's test data lacks dicomdirtests/77654033/CT2"
    with pytest.raises(miscore.InputError) as error:
        DicomIO().read(CT2_WITH_GAP)
    message = str(error.value)
    assert message.startswith(str(CT2_WITH_GAP))
    assert "missing slices" in message and "161 slices missing" in message
    assert "\n" not in message


def test_single_file_ct_small() -> None:
    path = Path(str(get_testdata_file("CT_small.dcm")))
    ds = pydicom.dcmread(path)
    volume = DicomIO().read(path)

    assert volume.spatial_shape == (128, 128, 1)
    expected = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(volume.array[..., 0, 0], expected)
    position = [float(v) for v in ds.ImagePositionPatient]
    assert volume.origin == pytest.approx((-position[0], -position[1], position[2]))
    assert volume.spacing[:2] == pytest.approx(
        (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]))
    )
    assert volume.spacing[2] == pytest.approx(float(ds.SliceThickness))
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(
        volume.array[..., 0], sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    )


def test_enhanced_multiframe_matches_the_single_frame_series(tmp_path: Path) -> None:
    spec = SeriesSpec(shape=(9, 7, 5))
    spec.row_cosine, spec.column_cosine = oblique_cosines(35.0)
    stored = stored_values(spec.shape)
    order = [3, 0, 4, 2, 1]
    slopes = [1.0, 2.0, 1.0, 0.5, 1.0]
    write_enhanced(tmp_path / "enhanced.dcm", spec, stored, order, slopes, intercept=-100.0)

    volume = DicomIO().read(tmp_path / "enhanced.dcm")

    per_slice = np.empty(5)
    per_slice[order] = slopes
    np.testing.assert_allclose(volume.array[..., 0], stored * per_slice - 100.0, rtol=1e-6)
    np.testing.assert_allclose(volume.affine, spec.affine_ras(), atol=1e-5)
    assert volume.meta["multiframe"] is True
    assert volume.meta["frame_numbers"] == [order.index(k) + 1 for k in range(5)]


def test_rtdose_frames_are_placed_by_grid_frame_offsets() -> None:
    path = PYDICOM_DATA / "rtdose.dcm"
    ds = pydicom.dcmread(path)
    volume = DicomIO().read(path)

    offsets = [float(v) for v in ds.GridFrameOffsetVector]
    assert volume.spatial_shape == (int(ds.Columns), int(ds.Rows), int(ds.NumberOfFrames))
    assert volume.spacing[2] == pytest.approx(abs(offsets[1] - offsets[0]))
    expected = ds.pixel_array.transpose(2, 1, 0) * float(ds.DoseGridScaling)
    if offsets[-1] < offsets[0]:
        expected = expected[:, :, ::-1]
    np.testing.assert_allclose(volume.array[..., 0], expected, rtol=1e-6)


def _refusal(folder: Path) -> str:
    with pytest.raises(miscore.InputError) as error:
        DicomIO().read(folder)
    message = str(error.value)
    assert message.startswith(str(folder)) and "\n" not in message
    return message


def test_refuses_broken_series(tmp_path: Path) -> None:
    spec = SeriesSpec(shape=(6, 5, 5))
    stored = stored_values(spec.shape)
    step = spec.slice_step * spec.normal
    origin = np.asarray(spec.origin)

    uneven = [origin + d * spec.normal for d in (0.0, 2.5, 5.0, 6.0, 8.5)]
    write_series(tmp_path / "uneven", spec, stored, positions=uneven)
    assert "uneven slice spacing: 1.000 mm" in _refusal(tmp_path / "uneven")

    gap = [origin + k * step for k in (0, 1, 2, 4, 5)]
    write_series(tmp_path / "gap", spec, stored, positions=gap)
    assert "missing slices: a gap of 5.000 mm" in _refusal(tmp_path / "gap")

    duplicate = [origin + k * step for k in (0, 1, 2, 2, 3)]
    write_series(tmp_path / "duplicate", spec, stored, positions=duplicate)
    assert "two slices at the same position" in _refusal(tmp_path / "duplicate")

    write_series(tmp_path / "orientation", spec, stored)
    tilted = slice_dataset(
        spec, stored[:, :, 0], spec.position(5), 99, orientation=(1, 0, 0, 0, 0.8, 0.6)
    )
    tilted.save_as(tmp_path / "orientation" / "odd", enforce_file_format=True)
    assert "mixed ImageOrientationPatient" in _refusal(tmp_path / "orientation")

    write_series(tmp_path / "sizes", spec, stored)
    bigger = slice_dataset(spec, np.zeros((8, 5), np.int16), spec.position(5), 99)
    bigger.save_as(tmp_path / "sizes" / "odd", enforce_file_format=True)
    assert "mixed image sizes in one series (5x6" in _refusal(tmp_path / "sizes")

    write_series(tmp_path / "nopixels", spec, stored)
    first = sorted((tmp_path / "nopixels").iterdir())[0]
    ds = pydicom.dcmread(first)
    del ds.PixelData
    ds.save_as(first, enforce_file_format=True)
    with pytest.raises(miscore.InputError, match="no pixel data in this DICOM file"):
        DicomIO().read(tmp_path / "nopixels")

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.txt").write_text("hello")
    assert "no DICOM files found" in _refusal(tmp_path / "text")
    (tmp_path / "empty").mkdir()
    assert "no DICOM files found" in _refusal(tmp_path / "empty")


def test_rtstruct_alone_is_not_an_image(tmp_path: Path) -> None:
    source = PYDICOM_DATA / "rtstruct.dcm"
    shutil.copy(source, tmp_path / "rtstruct.dcm")
    with pytest.raises(miscore.InputError, match="not an image; read it as a label"):
        DicomIO().read(tmp_path / "rtstruct.dcm")
    with pytest.raises(miscore.InputError, match="no DICOM image files found"):
        DicomIO().read(tmp_path)


def test_compressed_files_decode_like_uncompressed_or_simpleitk() -> None:
    io = DicomIO()
    plain = io.read(PYDICOM_DATA / "MR_small.dcm")
    for name in ("MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"):
        compressed = io.read(PYDICOM_DATA / name)
        np.testing.assert_array_equal(compressed.array, plain.array)
        np.testing.assert_allclose(compressed.affine, plain.affine)
    # 12-bit JPEG extended: pydicom's pillow handler cannot decode it, GDCM (SimpleITK) can
    lossy = PYDICOM_DATA / "JPEG-lossy.dcm"
    volume = io.read(lossy)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(lossy)))[0].T
    assert volume.ndim == 2 and volume.spatial_shape == expected.shape
    np.testing.assert_array_equal(volume.array[..., 0], expected)
    assert "no ImagePositionPatient" in volume.meta["geometry"]


@pytest.mark.parametrize("signed", [False, True])
def test_12_bit_values_are_masked_like_pydicom_and_fit_int16(tmp_path: Path, signed: bool) -> None:
    spec = SeriesSpec(shape=(12, 10, 3))
    raw = np.random.default_rng(0).integers(0, 65535, size=spec.shape).astype(np.uint16)
    paths = write_series(tmp_path / "ct", spec, raw.astype(np.int16))
    for k, path in enumerate(paths):  # garbage in the 4 unused high bits, as some scanners do
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
        ds.PixelData = raw[:, :, k].T.astype("<u2").tobytes()
        ds.save_as(path, enforce_file_format=True)

    volume = DicomIO().read(tmp_path / "ct")

    stored = np.stack([pydicom.dcmread(p).pixel_array.T for p in paths], axis=-1)
    expected = stored.astype(np.int32) - 1024
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array[..., 0], expected)
    low, high = (-2048 - 1024, 2047 - 1024) if signed else (-1024, 4095 - 1024)
    assert low <= volume.array.min() and volume.array.max() <= high
