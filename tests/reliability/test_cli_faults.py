"""Bad inputs through the CLI: one clear line, exit 2 (bad input) or 1, inputs untouched."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.cli.helpers import assert_one_line_error, run_cli
from tests.reliability.helpers import assert_error_last, files_under, tree_hash

IMAGE = "imagesTr/case_000_0000.nii.gz"
LABEL = "labelsTr/case_001.nii.gz"


def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


# --- bad image files: `miscore info` --------------------------------------------------------


def _truncated_header(folder: Path, source: Path) -> Path:
    path = folder / "short.nii.gz"
    path.write_bytes(source.read_bytes()[:300])
    return path


def _truncated_data(folder: Path, source: Path) -> Path:
    path = folder / "half.nii.gz"
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bad_gzip_member(folder: Path, source: Path) -> Path:
    path = folder / "corrupt.nii.gz"
    data = bytearray(source.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zeros in the deflate stream
    path.write_bytes(bytes(data))
    return path


def _text(name: str) -> Callable[[Path, Path], Path]:
    def make(folder: Path, source: Path) -> Path:
        path = folder / name
        path.write_text("this is not an image\n")
        return path

    return make


def _zero_sized(folder: Path, source: Path) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape((4, 0, 4))
    header.set_data_dtype(np.int16)
    path = folder / "zero.nii.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4)
    return path


def _five_d(folder: Path, source: Path) -> Path:
    return _nifti(folder / "five.nii.gz", np.zeros((4, 4, 4, 2, 2), np.float32))


BAD_FILES = {
    "nifti header cut": _truncated_header,
    "nifti data cut": _truncated_data,
    "nifti deflate stream damaged": _bad_gzip_member,
    "text as .nii.gz": _text("fake.nii.gz"),
    "text as .nii": _text("fake.nii"),
    "text as .png": _text("fake.png"),
    "text as .mha": _text("fake.mha"),
    "text as .nrrd": _text("fake.nrrd"),
    "text as .dcm": _text("fake.dcm"),
    "zero-sized axis": _zero_sized,
    "5D nifti": _five_d,
}


@pytest.mark.parametrize("fault", sorted(BAD_FILES))
def test_info_on_a_bad_file_is_one_line_naming_it(
    fault: str, reliability_root: Path, tmp_path: Path
) -> None:
    path = BAD_FILES[fault](tmp_path, reliability_root / "data" / IMAGE)
    before = tree_hash(tmp_path)
    line = assert_one_line_error(run_cli("info", path))
    assert path.name in line
    assert tree_hash(tmp_path) == before


# --- prediction -----------------------------------------------------------------------------


def test_predict_refuses_nan_and_writes_nothing(reliability_root: Path, tmp_path: Path) -> None:
    image = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    image[2, 3, 4] = np.nan
    image[5, 5, 5] = np.inf
    path = _nifti(tmp_path / "nan.nii.gz", image)
    before = tree_hash(path)
    result = run_cli("-q", "predict", reliability_root / "model", path, "--out", tmp_path / "out")
    line = assert_one_line_error(result)
    assert "nan.nii.gz" in line and "2 NaN or infinite voxels" in line
    assert files_under(tmp_path / "out") == []
    assert tree_hash(path) == before


def test_predict_refuses_an_image_with_other_channels(
    reliability_root: Path, tmp_path: Path
) -> None:
    path = _nifti(tmp_path / "two.nii.gz", np.ones((16, 16, 16, 2), np.float32))
    line = assert_one_line_error(
        run_cli("-q", "predict", reliability_root / "model", path, "--out", tmp_path / "out")
    )
    assert "2 channel(s)" in line and "trained on 1" in line
    assert files_under(tmp_path / "out") == []


def test_predict_refuses_two_inputs_giving_one_case_id(
    reliability_root: Path, tmp_path: Path
) -> None:
    source = reliability_root / "data" / IMAGE
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(source, tmp_path / folder / "same.nii.gz")
    result = run_cli(
        "-q", "predict", reliability_root / "model", tmp_path / "a" / "same.nii.gz",
        tmp_path / "b" / "same.nii.gz", "--out", tmp_path / "out",
    )  # fmt: skip
    assert "case id(s) same" in assert_one_line_error(result)


def test_predict_into_the_input_files_folder_is_refused(
    reliability_root: Path, tmp_path: Path
) -> None:
    image = tmp_path / "in" / "scan.nii.gz"
    image.parent.mkdir()
    shutil.copy(reliability_root / "data" / IMAGE, image)
    before = tree_hash(image.parent)
    result = run_cli("-q", "predict", reliability_root / "model", image, "--out", image.parent)
    assert "output folder is an input folder" in assert_one_line_error(result)
    assert tree_hash(image.parent) == before


def test_predict_into_a_file_is_bad_input(reliability_root: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    image = reliability_root / "data" / IMAGE
    for out in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        line = assert_one_line_error(
            run_cli("-q", "predict", reliability_root / "model", image, "--out", out)
        )
        assert "cannot create the output folder" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_predict_into_a_read_only_folder_is_bad_input(
    reliability_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        line = assert_one_line_error(
            run_cli(
                "-q",
                "predict",
                reliability_root / "model",
                reliability_root / "data" / IMAGE,
                "--out",
                out,
            )
        )
    finally:
        out.chmod(0o755)
    assert "not writable" in line


def _missing(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def _newer(folder: Path) -> None:
    info = json.loads((folder / "miscore.json").read_text())
    info["format"] = 99
    (folder / "miscore.json").write_text(json.dumps(info))


def _cut_model(folder: Path) -> None:
    data = (folder / "model.keras").read_bytes()
    (folder / "model.keras").write_bytes(data[: len(data) // 3])


def _broken_json(folder: Path) -> None:
    (folder / "miscore.json").write_text("{")


MODEL_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "model.keras missing": (_missing("model.keras"), "model.keras: missing"),
    "config.yaml missing": (_missing("config.yaml"), "config.yaml is missing"),
    "miscore.json missing": (_missing("miscore.json"), "miscore.json is missing"),
    "written by a newer version": (_newer, "upgrade miscore"),
    "model.keras cut short": (_cut_model, "cannot load the model"),
    "miscore.json not JSON": (_broken_json, "miscore.json: unreadable"),
}


@pytest.mark.parametrize("fault", sorted(MODEL_FAULTS))
def test_a_broken_model_folder_is_one_line(
    fault: str, reliability_root: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(reliability_root / "model", folder)
    damage, expected = MODEL_FAULTS[fault]
    damage(folder)
    before = tree_hash(folder)
    result = run_cli(
        "-q", "predict", folder, reliability_root / "data" / IMAGE, "--out", tmp_path / "out"
    )
    assert expected in assert_one_line_error(result)
    assert files_under(tmp_path / "out") == []
    assert tree_hash(folder) == before


# --- datasets: `miscore cache build` (and train) --------------------------------------------


def _nan_image(data: Path) -> None:
    image = nib.load(data / IMAGE)
    array = np.asarray(image.dataobj).astype(np.float32)
    array[1, 2, 3] = np.nan
    _nifti(data / IMAGE, array, image.affine)


def _label_edit(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        label = nib.load(data / LABEL)
        _nifti(data / LABEL, change(np.asarray(label.dataobj)), label.affine)

    return damage


def _float_label(array: np.ndarray) -> np.ndarray:
    out = array.astype(np.float32)
    out[0, 0, 0] = 0.5
    return out


def _big_class(array: np.ndarray) -> np.ndarray:
    out = array.astype(np.uint8)
    out[0, 0, 0] = 7
    return out


def _shifted_label(data: Path) -> None:
    label = nib.load(data / LABEL)
    affine = label.affine.copy()
    affine[0, 3] += 5.0
    _nifti(data / LABEL, np.asarray(label.dataobj), affine)


def _empty(data: Path) -> None:
    for folder in ("imagesTr", "labelsTr"):
        shutil.rmtree(data / folder)
        (data / folder).mkdir()
    (data / "dataset.json").unlink()


def _bad_id(data: Path) -> None:
    (data / IMAGE).rename(data / "imagesTr" / "case 0_0000.nii.gz")
    (data / "labelsTr" / "case_000.nii.gz").rename(data / "labelsTr" / "case 0.nii.gz")


def _listed_twice(data: Path) -> None:
    entry = {"image": "./imagesTr/case_000.nii.gz", "label": "./labelsTr/case_000.nii.gz"}
    info = json.loads((data / "dataset.json").read_text())
    info["training"] = [entry, entry]
    (data / "dataset.json").write_text(json.dumps(info))


def _listed_outside(data: Path) -> None:
    info = json.loads((data / "dataset.json").read_text())
    info["training"] = [{"image": "../outside.nii.gz", "label": "./labelsTr/case_000.nii.gz"}]
    (data / "dataset.json").write_text(json.dumps(info))


DATASET_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "NaN intensities": (_nan_image, "NaN or infinite"),
    "float label": (_label_edit(_float_label), "non-integer values"),
    "class beyond data.classes": (_label_edit(_big_class), "holds class id 7"),
    "label of another shape": (_label_edit(lambda a: a[:-2]), "shape"),
    "label on another grid": (_shifted_label, "resample one onto the other"),
    "4D label": (_label_edit(lambda a: np.stack([a, a], axis=-1)), "one channel"),
    "empty dataset": (_empty, "no cases found"),
    "case id with a space": (_bad_id, "not allowed"),
    "dataset.json lists a case twice": (_listed_twice, "appears twice"),
    "dataset.json path with ..": (_listed_outside, "leaves the dataset folder"),
}


@pytest.mark.parametrize("fault", sorted(DATASET_FAULTS))
def test_cache_build_on_a_bad_dataset_is_bad_input(
    fault: str, reliability_root: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(reliability_root / "data", data)
    damage, expected = DATASET_FAULTS[fault]
    damage(data)
    before = tree_hash(data)
    result = run_cli(
        "cache", "build", reliability_root / "config.yaml", "--data", data,
        "--cache", tmp_path / "cache",
    )  # fmt: skip
    line = assert_error_last(result, 2)
    assert expected in line, line
    assert tree_hash(data) == before
    # no entry for the bad case is trusted
    entries = tmp_path / "cache" / "entries"
    markers = [json.loads(p.read_text()) for p in entries.glob("*/complete.json")]
    assert len(markers) <= 2


def test_training_on_a_nan_image_is_refused_before_any_epoch(
    reliability_root: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(reliability_root / "data", data)
    _nan_image(data)
    result = run_cli(
        "-q", "train", reliability_root / "config.yaml", "--data", data,
        "--out", tmp_path / "model", "--cache", tmp_path / "cache",
    )  # fmt: skip
    assert "NaN or infinite" in assert_one_line_error(result)
    assert not (tmp_path / "model" / "history.tsv").exists()


def test_evaluate_with_a_corrupt_prediction_names_it(
    reliability_root: Path, tmp_path: Path
) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "case_000.nii.gz").write_bytes(b"\x1f\x8b garbage")
    result = run_cli("evaluate", pred, reliability_root / "data", "--out", tmp_path / "report")
    line = assert_error_last(result, 2)
    assert "case_000.nii.gz" in line
    assert files_under(tmp_path / "report") == []


# --- configs: `miscore config validate` ----------------------------------------------------

CONFIG_FAULTS = {
    "data: {classes: 2, colour: red}": "data.colour: Extra inputs are not permitted",
    "training: {epochs: many}": "training.epochs: Input should be a valid integer",
    "training: {epochs: 0}": "training.epochs: Input should be greater than or equal to 1",
    "inference: {overlap: 1.0}": "inference.overlap: Input should be less than 1",
    "patching: {overlap: 1.5}": "patching.overlap: Input should be less than 1",
    "patching: {mode: random}": "needs patch_shape",
    "patching: {mode: grid, patch_shape: [0, 16, 16]}": "patch_shape must be positive",
    "data: {classes: 1}": "data.classes: Input should be greater than or equal to 2",
    "preprocessing: [{name: zscore, std: -1}]": "preprocessing[0].zscore.std",
    "preprocessing: [zscroe]": "zscore",
    "model: {architecture: {name: unet, filters: a}}": "model.architecture",
    "a: [1": "not valid YAML",
    "- 1\n- 2": "a config is a mapping",
}


@pytest.mark.parametrize("text", sorted(CONFIG_FAULTS))
def test_config_validate_names_the_field(text: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text + "\n")
    line = assert_one_line_error(run_cli("config", "validate", path))
    assert CONFIG_FAULTS[text] in line, line


def test_no_traceback_unless_debug(tmp_path: Path) -> None:
    (tmp_path / "fake.nii.gz").write_text("no")
    plain = run_cli("info", tmp_path / "fake.nii.gz")
    debug = run_cli("--debug", "info", tmp_path / "fake.nii.gz")
    assert "Traceback" not in plain.stderr
    assert "Traceback" in debug.stderr and debug.returncode == 2


def test_a_patch_larger_than_every_image_is_padded_not_refused(
    reliability_root: Path, tmp_path: Path
) -> None:
    config = (reliability_root / "config.yaml").read_text().replace("[16, 16, 16]", "[24, 24, 24]")
    (tmp_path / "config.yaml").write_text(config)
    result = run_cli(
        "-q", "train", tmp_path / "config.yaml", "--data", reliability_root / "data",
        "--out", tmp_path / "model", "--cache", tmp_path / "cache",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "model" / "miscore.json").read_text())
    assert info["input_shape"] == [24, 24, 24, 1]  # the 16^3 images were padded to 24^3


def test_a_loss_that_becomes_nan_stops_training_with_exit_1(
    reliability_root: Path, tmp_path: Path
) -> None:
    config = (
        (reliability_root / "config.yaml")
        .read_text()
        .replace(
            "training: {epochs: 1, batch_size: 2}",
            "training: {epochs: 4, batch_size: 2, learning_rate: 1.0e+30, optimizer: sgd}",
        )
    )
    (tmp_path / "config.yaml").write_text(config)
    result = run_cli(
        "-q", "train", tmp_path / "config.yaml", "--data", reliability_root / "data",
        "--out", tmp_path / "model", "--cache", tmp_path / "cache",
    )  # fmt: skip
    line = assert_one_line_error(result, 1)
    assert "the training loss is nan" in line and "training.learning_rate" in line
    # no NaN epoch is recorded or checkpointed
    history = tmp_path / "model" / "history.tsv"
    assert not history.exists() or "nan" not in history.read_text()
