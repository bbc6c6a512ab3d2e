"""The phantom generator: deterministic, every class present, geometry shared, readable back."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import miscore
from miscore.data.dataset import Dataset
from miscore.tools.synth import phantom_case, write_dataset


def test_same_seed_same_case_other_seed_other_case() -> None:
    a = phantom_case("a", seed=7, shape=(24, 20, 12), oblique=True)
    b = phantom_case("a", seed=7, shape=(24, 20, 12), oblique=True)
    c = phantom_case("a", seed=8, shape=(24, 20, 12), oblique=True)
    assert a.label is not None and b.label is not None
    np.testing.assert_array_equal(a.image.array, b.image.array)
    np.testing.assert_array_equal(a.label.array, b.label.array)
    np.testing.assert_array_equal(a.image.affine, b.image.affine)
    assert not np.array_equal(a.image.array, c.image.array)
    assert not np.allclose(a.image.affine, c.image.affine)


@pytest.mark.parametrize("classes", [2, 3, 5])
def test_every_class_present_and_ct_like(classes: int) -> None:
    case = phantom_case("p", seed=classes, shape=(48, 48, 32), classes=classes)
    assert case.label is not None
    label = case.label.array[..., 0]
    image = case.image.array[..., 0]
    assert sorted(np.unique(label).tolist()) == list(range(classes))
    assert case.image.array.dtype == np.int16
    assert case.label.same_grid(case.image, atol=0)
    # air around the body, soft tissue in the organ
    assert image[0, 0, 0] < -900
    assert 70 < float(image[label == 1].mean()) < 130
    # the organ is a sizeable object, tumours are inside and smaller
    assert (label == 1).sum() > 0.02 * label.size
    for k in range(2, classes):
        assert 0 < (label == k).sum() < (label == 1).sum()


def test_anisotropic_and_oblique_geometry() -> None:
    case = phantom_case("o", seed=3, shape=(16, 16, 8), oblique=True)
    spacing = case.image.spacing
    assert spacing[0] == pytest.approx(spacing[1])
    assert spacing[2] > 1.4 * spacing[0]
    assert nib.aff2axcodes(case.image.affine)[:2] == ("L", "P")
    straight = phantom_case("s", seed=3, shape=(16, 16, 8))
    assert nib.aff2axcodes(straight.image.affine) == ("R", "A", "S")


def test_2d_phantom() -> None:
    case = phantom_case("flat", seed=1, shape=(40, 32))
    assert case.image.array.shape == (40, 32, 1)
    assert case.image.ndim == 2
    assert case.label is not None
    assert sorted(np.unique(case.label.array).tolist()) == [0, 1, 2]


def test_written_dataset_reads_back(
    installed_plugins: miscore.PluginManager, tmp_path: Path
) -> None:
    registry = installed_plugins.registry
    cases = write_dataset(tmp_path / "d", registry, n_cases=3, shape=(20, 18, 10), oblique=True)
    dataset = Dataset.discover(tmp_path / "d", registry)
    assert dataset.layout == "msd"
    assert dataset.ids == ["case_000", "case_001", "case_002"]
    assert dataset.info["labels"] == {"background": 0, "organ": 1, "tumour": 2}
    for written in cases:
        loaded = dataset.load(written.id)
        assert loaded.label is not None and written.label is not None
        np.testing.assert_array_equal(loaded.image.array, written.image.array)
        np.testing.assert_array_equal(loaded.label.array, written.label.array)
        np.testing.assert_allclose(loaded.image.affine, written.image.affine, atol=1e-4)


def test_png_and_cases_layouts(installed_plugins: miscore.PluginManager, tmp_path: Path) -> None:
    registry = installed_plugins.registry
    write_dataset(
        tmp_path / "png", registry, n_cases=2, shape=(32, 24), fmt="png", layout="image2d"
    )
    flat = Dataset.discover(tmp_path / "png", registry)
    assert flat.layout == "image2d"
    case = flat.load("case_001")
    assert case.image.array.dtype == np.uint8
    assert case.label is not None
    assert sorted(np.unique(case.label.array).tolist()) == [0, 1, 2]
    write_dataset(
        tmp_path / "kits", registry, n_cases=2, shape=(12, 12, 6), layout="cases", fmt="sitk"
    )
    assert (tmp_path / "kits" / "case_000" / "imaging.mha").is_file()
    assert Dataset.discover(tmp_path / "kits", registry).layout == "cases"


def test_bad_requests_are_input_errors(
    installed_plugins: miscore.PluginManager, tmp_path: Path
) -> None:
    registry = installed_plugins.registry
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(miscore.InputError, match="not an empty folder"):
        write_dataset(tmp_path / "full", registry, n_cases=1)
    with pytest.raises(miscore.InputError, match="--2d"):
        write_dataset(tmp_path / "a", registry, n_cases=1, fmt="png")
    with pytest.raises(miscore.InputError, match="at least 2 classes"):
        write_dataset(tmp_path / "b", registry, n_cases=1, shape=(8, 8, 8), classes=1)
    with pytest.raises(miscore.InputError, match="unknown format"):
        write_dataset(tmp_path / "c", registry, n_cases=1, fmt="jpeg2000")  # type: ignore[arg-type]


def test_dicom_without_the_plugin_is_a_clear_error(tmp_path: Path) -> None:
    registry = miscore.PluginManager(disabled=("dicom",)).registry
    with pytest.raises(miscore.InputError, match="no IO named 'dicom' is installed"):
        write_dataset(tmp_path / "d", registry, n_cases=1, fmt="dicom", layout="cases")
