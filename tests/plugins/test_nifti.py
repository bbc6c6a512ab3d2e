"""The NIfTI IO: exact geometry, channels, scaling, dtypes, headers and broken files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from miscore_nifti import NiftiIO

import miscore
from miscore.testing import check_component, check_io_roundtrip, oblique_affine, synthetic_volume

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture
def io() -> NiftiIO:
    component = check_component(NiftiIO)
    assert isinstance(component, NiftiIO)
    return component


def test_registered_and_preferred_for_nii(
    installed_plugins: miscore.PluginManager, tmp_path: Path
) -> None:
    registry = installed_plugins.registry
    assert registry.get_io("nifti") is NiftiIO
    for name in ("a.nii", "b.nii.gz", "C.NII.GZ"):
        path = tmp_path / name
        path.write_bytes(b"")
        assert registry.io_for(path).name == "nifti"
    assert NiftiIO().case_id(tmp_path / "case_001_0000.nii.gz") == "case_001_0000"


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz", "standard.nii.gz"])
def test_nibabel_files_roundtrip_exactly(io: NiftiIO, tmp_path: Path, name: str) -> None:
    source = NIBABEL_DATA / name
    original = nib.load(source)
    volume = io.read(source)
    np.testing.assert_array_equal(volume.affine, original.affine)
    expected = np.asanyarray(original.dataobj)
    if expected.ndim == 3:
        expected = expected[..., None]
    np.testing.assert_array_equal(volume.array, expected)
    back = check_io_roundtrip(io, volume, tmp_path, atol=0)
    written = nib.load(tmp_path / "roundtrip.nii.gz")
    # the header's geometry is restored, codes and both matrices
    assert int(written.header["sform_code"]) == int(original.header["sform_code"])
    assert int(written.header["qform_code"]) == int(original.header["qform_code"])
    np.testing.assert_array_equal(written.header.get_sform(), original.header.get_sform())
    np.testing.assert_array_equal(written.header.get_qform(), original.header.get_qform())
    assert back.array.dtype == volume.array.dtype
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(original.affine)


def test_4d_is_channels(io: NiftiIO) -> None:
    volume = io.read(NIBABEL_DATA / "example4d.nii.gz")
    assert volume.spatial_shape == (128, 96, 24)
    assert volume.channels == 2
    assert volume.meta["dtype"] == "int16"
    assert volume.meta["xyzt_units"] == ["mm", "sec"]


def test_big_endian_file_reads_native(io: NiftiIO) -> None:
    volume = io.read(NIBABEL_DATA / "anatomical.nii")
    assert volume.array.dtype == np.dtype("int16")
    assert volume.array.dtype.byteorder in ("=", "|")
    assert volume.meta["dtype"] == "int16"


def test_oblique_lps_anisotropic_roundtrip(io: NiftiIO, tmp_path: Path) -> None:
    volume = synthetic_volume(shape=(17, 13, 5), oblique=True, spacing=(0.7, 1.3, 4.0))
    assert nib.aff2axcodes(volume.affine)[:2] != ("R", "A")  # stored as LPS-ish
    back = check_io_roundtrip(io, volume, tmp_path)
    np.testing.assert_allclose(back.spacing, (0.7, 1.3, 4.0), atol=1e-6)
    # the world position of a voxel is the same through nibabel
    img = nib.load(tmp_path / "roundtrip.nii.gz")
    voxel = np.array([16, 0, 4, 1.0])
    np.testing.assert_allclose(img.affine @ voxel, volume.affine @ voxel, atol=1e-4)
    # and a second write of what was read changes nothing
    again = tmp_path / "again"
    again.mkdir()
    twice = check_io_roundtrip(io, back, again, atol=0)
    np.testing.assert_array_equal(twice.affine, back.affine)


def test_single_slice_and_2d_files(io: NiftiIO, tmp_path: Path) -> None:
    affine = oblique_affine(spacing=(0.5, 0.5, 3.0))
    data = np.arange(6 * 7, dtype=np.int16).reshape(6, 7, 1)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "slice.nii.gz")
    volume = io.read(tmp_path / "slice.nii.gz")
    assert volume.array.shape == (6, 7, 1, 1)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-6)
    check_io_roundtrip(io, volume, tmp_path)
    nib.save(nib.Nifti1Image(data[..., 0], affine), tmp_path / "flat.nii")
    flat = io.read(tmp_path / "flat.nii")
    assert flat.array.shape == (6, 7, 1, 1)
    np.testing.assert_array_equal(flat.array[..., 0, 0], data[..., 0])


def test_5d_with_singleton_time_axis(io: NiftiIO, tmp_path: Path) -> None:
    data = np.random.default_rng(1).random((5, 4, 3, 1, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "v.nii.gz")
    volume = io.read(tmp_path / "v.nii.gz")
    assert volume.array.shape == (5, 4, 3, 2)
    np.testing.assert_array_equal(volume.array, data[:, :, :, 0, :])
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2, 2), np.uint8), np.eye(4)), tmp_path / "w.nii")
    with pytest.raises(miscore.InputError, match=r"w\.nii.*5D"):
        io.read(tmp_path / "w.nii")


def write_scaled(path: Path, raw: np.ndarray, slope: float, inter: float) -> None:
    """A NIfTI file holding ``raw`` with scl_slope/scl_inter set (nibabel resets them on save)."""
    nib.save(nib.Nifti1Image(raw, np.eye(4)), path)
    data = bytearray(path.read_bytes())
    data[112:120] = np.array([slope, inter], dtype="<f4").tobytes()  # scl_slope, scl_inter
    path.write_bytes(bytes(data))


def test_scaling_is_applied(io: NiftiIO, tmp_path: Path) -> None:
    raw = np.arange(-60, 60, dtype=np.int16).reshape(4, 5, 6)
    write_scaled(tmp_path / "ct.nii", raw, 0.5, -1024.0)
    stored = nib.load(tmp_path / "ct.nii")
    # nibabel moves the scaling from the header to the dataobj on load: easy to miss
    assert stored.header.get_slope_inter() == (None, None)
    assert (stored.dataobj.slope, stored.dataobj.inter) == (0.5, -1024.0)
    volume = io.read(tmp_path / "ct.nii")
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array[..., 0], raw * 0.5 - 1024.0)
    assert volume.meta["scl_slope"] == 0.5
    assert volume.meta["dtype"] == "int16"
    # identity scaling keeps the stored integers
    write_scaled(tmp_path / "plain.nii", raw, 1.0, 0.0)
    plain = io.read(tmp_path / "plain.nii")
    assert plain.array.dtype == np.int16
    np.testing.assert_array_equal(plain.array[..., 0], raw)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64]
)
def test_common_dtypes(io: NiftiIO, tmp_path: Path, dtype: type) -> None:
    volume = synthetic_volume(shape=(6, 5, 4), dtype=dtype)
    volume.meta["dtype"] = np.dtype(dtype).name  # as a reader records it
    back = check_io_roundtrip(io, volume, tmp_path)
    assert back.array.dtype == np.dtype(dtype)


def test_prediction_written_with_reference_header(io: NiftiIO, tmp_path: Path) -> None:
    image = io.read(NIBABEL_DATA / "anatomical.nii")
    label = np.zeros((*image.spatial_shape, 1), dtype=np.int64)
    label[10:20, 5:15, 3:9] = 2
    prediction = image.with_array(label)  # a prediction keeps the image's meta
    written = io.write(prediction, tmp_path / "pred.nii.gz", reference=image)
    img = nib.load(written)
    assert img.get_data_dtype() == np.uint8
    assert int(img.header["sform_code"]) == 2
    assert int(img.header["qform_code"]) == 2
    np.testing.assert_array_equal(img.affine, image.affine)
    back = io.read_label(written, image)
    assert back.same_grid(image, atol=0)
    np.testing.assert_array_equal(back.array, label)


def test_many_classes_use_uint16(io: NiftiIO, tmp_path: Path) -> None:
    image = synthetic_volume(shape=(8, 8, 8))
    label = np.arange(512, dtype=np.int32).reshape(8, 8, 8, 1)
    written = io.write(image.with_array(label), tmp_path / "many.nii.gz", reference=image)
    assert nib.load(written).get_data_dtype() == np.uint16


def test_new_grid_gets_coded_geometry(io: NiftiIO, tmp_path: Path) -> None:
    volume = synthetic_volume(shape=(6, 5, 4), oblique=True)
    written = io.write(volume, tmp_path / "new.nii.gz")
    header = nib.load(written).header
    assert int(header["sform_code"]) > 0
    assert int(header["qform_code"]) > 0
    np.testing.assert_allclose(header.get_qform(), volume.affine, atol=1e-4)


def test_write_is_atomic_and_leaves_no_temp(io: NiftiIO, tmp_path: Path) -> None:
    volume = synthetic_volume(shape=(6, 5, 4))
    target = tmp_path / "out" / "x.nii.gz"
    io.write(volume, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.nii.gz"]


def test_truncated_gzip_is_an_input_error(io: NiftiIO, tmp_path: Path) -> None:
    nib.save(
        nib.Nifti1Image(
            np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4)
        ),
        tmp_path / "whole.nii.gz",
    )
    data = (tmp_path / "whole.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(miscore.InputError, match=r"cut\.nii\.gz"):
        io.read(tmp_path / "cut.nii.gz")


@pytest.mark.parametrize("name", ["text.nii", "text.nii.gz", "empty.nii"])
def test_non_image_file_is_an_input_error(io: NiftiIO, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.startswith("text"):
        content = b"this is not an image\n" * 30
        path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    else:
        path.write_bytes(b"")
    with pytest.raises(miscore.InputError, match=name.replace(".", r"\.")):
        io.read(path)
