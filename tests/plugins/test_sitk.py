"""The SimpleITK IO: LPS <-> RAS, (z, y, x) <-> (x, y, z), vectors as channels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from miscore_sitk import SimpleITKIO, affine_to_itk, itk_to_affine

import miscore
from miscore.testing import check_component, check_io_roundtrip, synthetic_volume


@pytest.fixture
def io() -> SimpleITKIO:
    component = check_component(SimpleITKIO)
    assert isinstance(component, SimpleITKIO)
    return component


def test_registered_for_itk_suffixes_only(
    installed_plugins: miscore.PluginManager, tmp_path: Path
) -> None:
    registry = installed_plugins.registry
    assert registry.get_io("sitk") is SimpleITKIO
    for name, expected in [("a.mha", "sitk"), ("b.nrrd", "sitk"), ("c.mhd", "sitk")]:
        (tmp_path / name).write_bytes(b"")
        assert registry.io_for(tmp_path / name).name == expected
    (tmp_path / "d.nii.gz").write_bytes(b"")
    assert registry.io_for(tmp_path / "d.nii.gz").name == "nifti"


def test_same_world_point_as_simpleitk_and_nibabel(io: SimpleITKIO, tmp_path: Path) -> None:
    volume = synthetic_volume(shape=(11, 9, 7), oblique=True)
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(volume.array[..., 0], volume.affine), path)
    ours = io.read(path)  # .nii read through SimpleITK when asked by name
    itk = sitk.ReadImage(str(path))
    for index in [(0, 0, 0), (10, 0, 0), (3, 5, 6), (10, 8, 6)]:
        lps = np.array(itk.TransformIndexToPhysicalPoint(index))
        ras = lps * [-1, -1, 1]
        np.testing.assert_allclose(ours.affine @ [*index, 1], [*ras, 1], atol=1e-4)
        np.testing.assert_allclose(nib.load(path).affine @ [*index, 1], [*ras, 1], atol=1e-4)
        # the same voxel holds the same value
        assert ours.array[(*index, 0)] == itk[index]
    np.testing.assert_array_equal(ours.array, volume.array)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".mhd", ".nii.gz"])
def test_oblique_roundtrip(io: SimpleITKIO, tmp_path: Path, suffix: str) -> None:
    volume = synthetic_volume(shape=(13, 10, 6), oblique=True, spacing=(0.6, 0.9, 3.0))
    back = check_io_roundtrip(io, volume, tmp_path, suffix=suffix)
    np.testing.assert_allclose(back.spacing, (0.6, 0.9, 3.0), atol=1e-6)
    if suffix == ".mhd":  # the header names a data file that sits beside it
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["roundtrip.mhd", "roundtrip.zraw"]
        assert "roundtrip.zraw" in (tmp_path / "roundtrip.mhd").read_text()


def test_itk_geometry_converts_both_ways() -> None:
    origin, spacing = (10.0, -20.0, 5.0), (0.5, 0.7, 2.0)
    direction = np.eye(3)
    affine = itk_to_affine(origin, spacing, direction)
    # identity ITK direction is LPS: x points left, y posterior in RAS terms
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    np.testing.assert_allclose(affine[:3, 3], (-10.0, 20.0, 5.0))
    o, s, d = affine_to_itk(affine, 3)
    np.testing.assert_allclose(o, origin)
    np.testing.assert_allclose(s, spacing)
    np.testing.assert_allclose(d, direction.ravel())


def test_vector_pixels_are_channels(io: SimpleITKIO, tmp_path: Path) -> None:
    volume = synthetic_volume(shape=(8, 7, 5), channels=3, oblique=True)
    check_io_roundtrip(io, volume, tmp_path, suffix=".nrrd")
    itk = sitk.ReadImage(str(tmp_path / "roundtrip.nrrd"))
    assert itk.GetNumberOfComponentsPerPixel() == 3
    assert itk.GetSize() == (8, 7, 5)
    assert itk[(7, 0, 4)] == pytest.approx(tuple(volume.array[7, 0, 4]))


def test_2d_images(io: SimpleITKIO, tmp_path: Path) -> None:
    volume = synthetic_volume(shape=(12, 9), spacing=(0.4, 0.6))
    back = check_io_roundtrip(io, volume, tmp_path, suffix=".mha")
    assert back.ndim == 2
    assert sitk.ReadImage(str(tmp_path / "roundtrip.mha")).GetSize() == (12, 9)


def test_label_written_as_uint8(io: SimpleITKIO, tmp_path: Path) -> None:
    image = synthetic_volume(shape=(8, 7, 5), oblique=True)
    label = np.zeros((8, 7, 5, 1), np.int64)
    label[2:5, 2:5, 1:3] = 3
    written = io.write(image.with_array(label), tmp_path / "seg.nrrd", reference=image)
    itk = sitk.ReadImage(str(written))
    assert itk.GetPixelID() == sitk.sitkUInt8
    back = io.read_label(written, image)
    assert back.same_grid(image)
    np.testing.assert_array_equal(back.array, label)


def test_4d_nifti_through_sitk_gives_channels(io: SimpleITKIO) -> None:
    path = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    volume = io.read(path)
    reference = nib.load(path)
    assert volume.array.shape == (128, 96, 24, 2)
    np.testing.assert_array_equal(volume.array, np.asanyarray(reference.dataobj))
    np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-4)


def test_unreadable_file_is_an_input_error(io: SimpleITKIO, tmp_path: Path) -> None:
    path = tmp_path / "broken.mha"
    path.write_text("ObjectType = Image\nNDims = 3\n")
    with pytest.raises(miscore.InputError, match=r"broken\.mha"):
        io.read(path)
