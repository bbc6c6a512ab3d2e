"""Which DICOM failures become clean errors, which are bugs, and which files are DICOM at all.

Damaged files are ``InputError`` s naming the file; an exception from miscore's own code is not
"damaged DICOM data" and propagates; SimpleITK (GDCM) is asked only when pydicom cannot decode
the pixel data's transfer syntax; files without the 128-byte preamble or a ``.dcm`` suffix are
read when they parse to a DICOM data set, and other files in a series folder are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import miscore_dicom.series as series
import numpy as np
import pydicom
import pytest
from miscore_dicom import DicomIO
from pydicom.dataset import Dataset, FileMetaDataset

import miscore
from tests.cli.helpers import run_cli
from tests.plugins.dicom_helpers import SeriesSpec, stored_values, write_series

PYDICOM_DATA = Path(pydicom.__file__).parent / "data" / "test_files"
CT5N = PYDICOM_DATA / "dicomdirtests" / "98892001" / "CT5N"
SHAPE = (12, 10, 5)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_series(tmp_path / "series", SeriesSpec(shape=SHAPE), stored_values(SHAPE))
    return tmp_path / "series"


def no_gdcm(monkeypatch: pytest.MonkeyPatch) -> list[Exception]:
    """Record every call of the GDCM fallback (and fail it, so it cannot hide anything)."""
    calls: list[Exception] = []

    def fallback(ds: Dataset, path: Path, cause: Exception) -> Any:
        calls.append(cause)
        raise AssertionError(f"GDCM fallback called for {type(cause).__name__}: {cause}")

    monkeypatch.setattr(series, "_raw_pixels_gdcm", fallback)
    return calls


# --- our own bugs are not damaged data ------------------------------------------------------


def test_a_bug_in_the_reader_propagates_instead_of_damaged_dicom_data(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("a bug in miscore_dicom")

    monkeypatch.setattr(series, "sort_and_check", broken)
    with pytest.raises(TypeError, match="a bug in miscore_dicom"):
        DicomIO().read(folder)


def test_gdcm_is_not_asked_when_decoding_fails_for_an_unrelated_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = no_gdcm(monkeypatch)

    def broken(self: Dataset) -> Any:
        raise TypeError("a bug while decoding")

    monkeypatch.setattr(Dataset, "pixel_array", property(broken))
    with pytest.raises(TypeError, match="a bug while decoding"):  # RLE: pydicom decodes it
        DicomIO().read(PYDICOM_DATA / "MR_small_RLE.dcm")
    assert calls == []


def test_gdcm_decodes_what_pydicom_has_no_decoder_for(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = DicomIO().read(PYDICOM_DATA / "MR_small_RLE.dcm")

    def no_decoder(self: Dataset) -> Any:
        raise NotImplementedError("No pixel data decoders have been implemented for 'RLE'")

    monkeypatch.setattr(Dataset, "pixel_array", property(no_decoder))
    volume = DicomIO().read(PYDICOM_DATA / "MR_small_RLE.dcm")
    np.testing.assert_array_equal(volume.array, expected.array)


def test_short_pixel_data_is_damaged_data_without_asking_gdcm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = no_gdcm(monkeypatch)
    path = PYDICOM_DATA / "MR_truncated.dcm"
    with pytest.raises(miscore.InputError, match=r"MR_truncated\.dcm: damaged pixel data"):
        DicomIO().read(path)
    assert calls == []


def test_a_rescale_slope_that_is_not_a_number_is_named(folder: Path) -> None:
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.RescaleSlope = "1\\2"  # two values where one number belongs
    ds.save_as(first, enforce_file_format=True)
    with pytest.raises(miscore.InputError, match=r"RescaleSlope .*not one number"):
        DicomIO().read(folder)


# --- which files are DICOM ------------------------------------------------------------------


def _without_preamble(source: Path, target: Path, keep_meta: bool) -> None:
    """Write ``source`` as an older export would: no preamble; without file meta if asked."""
    ds = pydicom.dcmread(source)
    ds.preamble = None
    if not keep_meta:
        explicit = not ds.file_meta.TransferSyntaxUID.is_implicit_VR
        ds.file_meta = FileMetaDataset()
        target.write_bytes(b"")
        pydicom.dcmwrite(
            target, ds, enforce_file_format=False, implicit_vr=not explicit, little_endian=True
        )
        return
    pydicom.dcmwrite(target, ds, enforce_file_format=False)


@pytest.mark.parametrize("keep_meta", [True, False], ids=["file meta", "no file meta"])
def test_a_series_without_preamble_or_suffix_is_found_and_read(
    tmp_path: Path, keep_meta: bool
) -> None:
    assert CT5N.is_dir(), "pydicom's test data lacks dicomdirtests/98892001/CT5N"
    expected = DicomIO().read(CT5N)
    headless = tmp_path / "headless"
    headless.mkdir()
    for path in sorted(CT5N.iterdir()):
        _without_preamble(path, headless / f"IM{path.name}", keep_meta)
        assert not series.has_dicom_preamble(headless / f"IM{path.name}")
    (headless / "README").write_text("exported from the PACS\n")
    (headless / "notes.json").write_text('{"site": 3}')

    io = DicomIO()
    assert io.can_read(headless)
    volume = io.read(headless)
    np.testing.assert_array_equal(volume.array, expected.array)
    np.testing.assert_allclose(volume.affine, expected.affine)
    assert len(volume.meta["files"]) == len(list(CT5N.iterdir()))
    assert io.can_read(headless / f"IM{sorted(CT5N.iterdir())[0].name}")


def test_other_files_in_a_series_folder_are_skipped_quietly(folder: Path) -> None:
    expected = DicomIO().read(folder)
    (folder / "README").write_text("series exported by hand\n")
    (folder / "notes.json").write_text('{"reader": "A"}')
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(200))
    (folder / "thumbnail").write_bytes(b"\x08\x00\x05\x00" + bytes(range(256)) * 4)
    volume = DicomIO().read(folder)
    np.testing.assert_array_equal(volume.array, expected.array)


def test_a_folder_of_files_that_only_start_like_dicom_is_not_dicom(tmp_path: Path) -> None:
    folder = tmp_path / "other"
    folder.mkdir()
    rng = np.random.default_rng(0)
    # a first tag of group 0008 with an impossible length, then two with a real element
    # (SpecificCharacterSet) followed by noise: parsed, but no SOPClassUID
    (folder / "blob0").write_bytes(b"\x08\x00\x05\x00" + bytes(range(256)))
    for i in (1, 2):
        noise = rng.integers(0, 256, 300 * i, dtype=np.uint8).tobytes()
        (folder / f"blob{i}").write_bytes(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + noise)
        assert series.starts_like_dataset(folder / f"blob{i}")
    assert not DicomIO().can_read(folder)
    with pytest.raises(miscore.InputError, match="no DICOM files found"):
        DicomIO().read(folder)


def test_miscore_info_reads_a_series_without_preamble_or_suffix(tmp_path: Path) -> None:
    headless = tmp_path / "headless"
    headless.mkdir()
    for path in sorted(CT5N.iterdir()):
        _without_preamble(path, headless / path.name, keep_meta=True)
    result = run_cli("info", headless)
    assert result.returncode == 0, result.stderr
    assert "dicom" in result.stdout
