"""The data model: Volume geometry, Case validation, label maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import miscore
from miscore.testing import oblique_affine, synthetic_case


def test_spacing_comes_from_the_affine_columns_even_when_oblique() -> None:
    affine = oblique_affine(spacing=(0.7, 0.9, 3.0))
    volume = miscore.Volume(np.zeros((4, 5, 6, 1), np.float32), affine)
    assert volume.spacing == pytest.approx((0.7, 0.9, 3.0))
    assert volume.spatial_shape == (4, 5, 6)
    assert volume.ndim == 3 and volume.channels == 1
    assert volume.origin == pytest.approx(tuple(affine[:3, 3]))


def test_two_dimensional_volume_uses_the_first_two_columns() -> None:
    volume = miscore.Volume(np.zeros((8, 9, 3)), np.diag([0.5, 0.25, 1.0, 1.0]))
    assert volume.ndim == 2
    assert volume.spacing == pytest.approx((0.5, 0.25))


@pytest.mark.parametrize(
    ("shape", "affine", "message"),
    [
        ((4, 4), np.eye(4), "2 or 3 spatial axes"),
        ((4, 0, 4, 1), np.eye(4), "zero-sized"),
        ((4, 4, 4, 1), np.eye(3), "4x4"),
        ((4, 4, 4, 1), np.full((4, 4), np.nan), "finite"),
    ],
)
def test_invalid_volumes_are_refused(
    shape: tuple[int, ...], affine: np.ndarray, message: str
) -> None:
    with pytest.raises(miscore.InputError, match=message):
        miscore.Volume(np.zeros(shape), affine)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\\b", "../x", "case 1", "ç", "abc\n"])
def test_unsafe_case_ids_are_refused(bad: str) -> None:
    with pytest.raises(miscore.InputError, match="case id"):
        miscore.check_case_id(bad)


def test_case_refuses_a_label_of_another_shape() -> None:
    case = synthetic_case(shape=(8, 8, 4))
    short = miscore.Volume(np.zeros((8, 8, 3, 1), np.uint8))
    with pytest.raises(miscore.InputError, match="case_000: label shape"):
        miscore.Case("case_000", case.image, short)


def test_label_maps_become_small_unsigned_integers() -> None:
    volume = miscore.Volume(np.array([0.0, 1.0, 2.0, 300.0]).reshape(2, 2, 1, 1))
    label = miscore.as_label_volume(volume, "seg.nii.gz")
    assert label.array.dtype == np.uint16
    assert label.array.ravel().tolist() == [0, 1, 2, 300]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0.0, 0.5, 1.0, 1.0], "non-integer"),
        ([0, -1, 1, 1], "negative"),
        ([0, np.nan, 1, 1], "NaN"),
    ],
)
def test_bad_label_maps_name_the_file(values: list[float], message: str) -> None:
    volume = miscore.Volume(np.array(values, dtype=float).reshape(2, 2, 1, 1))
    with pytest.raises(miscore.InputError, match=f"seg.nii.gz: .*{message}"):
        miscore.as_label_volume(volume, "seg.nii.gz")


def test_atomic_output_leaves_nothing_behind_on_error(tmp_path: Path) -> None:
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError), miscore.atomic_output(final) as temp:
        temp.write_text("half")
        raise RuntimeError("disk full")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with miscore.atomic_output(final) as temp:
        assert temp.name.endswith("out.txt") and temp.parent == tmp_path
        temp.write_text("new")
    assert final.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_output_replaces_folders(tmp_path: Path) -> None:
    final = tmp_path / "series"
    final.mkdir()
    (final / "old.dcm").write_text("x")
    with miscore.atomic_output(final) as temp:
        temp.mkdir()
        (temp / "new.dcm").write_text("y")
    assert sorted(p.name for p in final.iterdir()) == ["new.dcm"]
    assert [p.name for p in tmp_path.iterdir()] == ["series"]


def test_atomic_output_names_a_folder_it_cannot_create(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    expected = r"file/sub/out.txt: cannot create its folder"
    with (
        pytest.raises(miscore.InputError, match=expected),
        miscore.atomic_output(blocker / "sub" / "out.txt") as temp,
    ):
        temp.write_text("never")
