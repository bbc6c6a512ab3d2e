"""``miscore synth`` and ``miscore info`` run as a user runs them: subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.cli.helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "demo"
    result = run_cli(
        "synth", out, "--cases", "3", "--shape", "24", "20", "12", "--oblique", "--seed", "5"
    )
    assert result.returncode == 0, result.stderr
    assert "3 cases" in result.stdout
    return out


def test_synth_writes_an_msd_dataset(dataset: Path) -> None:
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == [
        "case_000_0000.nii.gz",
        "case_001_0000.nii.gz",
        "case_002_0000.nii.gz",
    ]
    info = json.loads((dataset / "dataset.json").read_text())
    assert info["labels"] == {"background": 0, "organ": 1, "tumour": 2}
    image = nib.load(dataset / "imagesTr" / "case_001_0000.nii.gz")
    label = nib.load(dataset / "labelsTr" / "case_001.nii.gz")
    assert image.shape == (24, 20, 12)
    np.testing.assert_array_equal(image.affine, label.affine)
    assert label.get_data_dtype() == np.uint8
    assert sorted(np.unique(np.asanyarray(label.dataobj)).tolist()) == [0, 1, 2]


def test_synth_is_reproducible(dataset: Path, tmp_path: Path) -> None:
    again = run_cli(
        "synth",
        tmp_path / "again",
        "-n",
        "1",
        "--shape",
        "24",
        "20",
        "12",
        "--oblique",
        "--seed",
        "5",
    )
    assert again.returncode == 0, again.stderr
    first = nib.load(dataset / "imagesTr" / "case_000_0000.nii.gz")
    second = nib.load(tmp_path / "again" / "imagesTr" / "case_000_0000.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(first.dataobj), np.asanyarray(second.dataobj))
    np.testing.assert_array_equal(first.affine, second.affine)


def test_info_json_matches_nibabel(dataset: Path) -> None:
    path = dataset / "imagesTr" / "case_002_0000.nii.gz"
    result = run_cli("info", path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    assert report["format"] == "nifti"
    assert report["shape"] == [24, 20, 12]
    assert report["channels"] == 1
    assert report["dtype"] == "int16"
    np.testing.assert_allclose(report["spacing"], img.header.get_zooms(), atol=1e-5)
    np.testing.assert_allclose(report["origin"], img.affine[:3, 3], atol=1e-5)
    assert report["orientation"] == "".join(nib.aff2axcodes(img.affine))
    stats = report["intensity"][0]
    assert stats["min"] == data.min()
    assert stats["max"] == data.max()
    assert stats["mean"] == pytest.approx(data.mean(), rel=1e-6)
    assert stats["std"] == pytest.approx(data.std(), rel=1e-6)
    assert report["meta"]["sform_code"] > 0


def test_info_text_and_dataset_summary(dataset: Path) -> None:
    text = run_cli("info", dataset / "labelsTr" / "case_000.nii.gz")
    assert text.returncode == 0, text.stderr
    assert "shape        24 x 20 x 12" in text.stdout
    assert "dtype        uint8" in text.stdout
    summary = run_cli("info", dataset, "--json")
    assert summary.returncode == 0, summary.stderr
    report = json.loads(summary.stdout)
    assert report["layout"] == "msd"
    assert report["cases"] == 3
    assert report["labelled"] == 3


def test_synth_2d_png_and_info(tmp_path: Path) -> None:
    result = run_cli(
        "synth",
        tmp_path / "flat",
        "--2d",
        "--shape",
        "40",
        "32",
        "1",
        "-n",
        "2",
        "--layout",
        "image2d",
    )
    assert result.returncode == 0, result.stderr
    mask = tmp_path / "flat" / "masks" / "case_001.png"
    info = json.loads(run_cli("info", mask, "--json").stdout)
    assert info["format"] == "image2d"
    assert info["shape"] == [40, 32]
    assert info["dtype"] == "uint8"
    assert info["intensity"][0]["max"] == 2


def test_bad_input_exits_2_with_one_line(dataset: Path, tmp_path: Path) -> None:
    line = assert_one_line_error(run_cli("info", tmp_path / "missing.nii.gz"))
    assert "missing.nii.gz" in line
    (tmp_path / "notes.nii").write_text("not an image")
    line = assert_one_line_error(run_cli("info", tmp_path / "notes.nii"))
    assert "notes.nii" in line
    line = assert_one_line_error(run_cli("synth", dataset))
    assert "not an empty folder" in line
    line = assert_one_line_error(run_cli("synth", tmp_path / "k", "--classes", "1"))
    assert "classes" in line
    line = assert_one_line_error(run_cli("synth", tmp_path / "f", "--format", "analyze"))
    assert "unknown format" in line


def test_dicom_format_needs_the_dicom_plugin(tmp_path: Path) -> None:
    result = run_cli(
        "synth",
        tmp_path / "d",
        "--format",
        "dicom",
        "-n",
        "1",
        env={"MISCORE_DISABLE_PLUGINS": "dicom"},
    )
    line = assert_one_line_error(result)
    assert "no IO named 'dicom'" in line


def test_dicom_series_when_the_plugin_writes_them(tmp_path: Path) -> None:
    from miscore import PluginManager

    if "dicom" not in PluginManager().registry.names("io"):
        pytest.skip("the dicom IO is not installed")
    out = tmp_path / "dcm"
    result = run_cli("synth", out, "--format", "dicom", "-n", "2", "--shape", "16", "14", "6")
    assert result.returncode == 0, result.stderr
    series = out / "case_001" / "imaging"
    info = json.loads(run_cli("info", series, "--json").stdout)
    assert info["format"] == "dicom"
    assert info["shape"] == [16, 14, 6]
    label = json.loads(run_cli("info", out / "case_001" / "segmentation.nii.gz", "--json").stdout)
    np.testing.assert_allclose(info["affine"], label["affine"], atol=1e-3)
    summary = json.loads(run_cli("info", out, "--json").stdout)
    assert (summary["layout"], summary["cases"], summary["labelled"]) == ("cases", 2, 2)
