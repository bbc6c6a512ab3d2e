"""Deployment export: ``miscore export MODEL_DIR --format savedmodel`` (and onnx), the network
giving the probabilities of the ``.keras`` model, its pipeline beside it as data."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import miscore
from tests.cli.helpers import assert_one_line_error, run_cli

CONFIG = {
    "data": {"classes": 2},
    "preprocessing": [{"name": "clip", "min": -150, "max": 250}, "zscore"],
    "patching": {"mode": "random", "patch_shape": [32, 32, 32], "samples_per_case": 1},
    "augmentation": [],
    "model": {"architecture": {"name": "unet", "filters": 4, "depth": 1}, "loss": "dice_ce"},
    "training": {"epochs": 1, "batch_size": 1, "steps_per_epoch": 2, "inference_dice": False},
}

#: float32 through the same graph: measured identical (SavedModel) and 2.4e-7 (ONNX)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net trained for 2 steps on 2 phantoms (its weights are what is compared)."""
    root = tmp_path_factory.mktemp("deploy")
    miscore.synthesize(root / "data", cases=2, shape=(32, 32, 32), classes=2, seed=3)
    config = {**CONFIG, "cache": {"path": str(root / "cache")}}
    miscore.Pipeline(config).train(root / "data", root / "model", log=lambda _: None)
    return root


def preprocessed_patch(root: Path, spec: dict[str, object]) -> np.ndarray:
    """A phantom preprocessed with the steps and params of ``miscore-deploy.json`` only
    (clip, then z-score), as a server would: one (1, 32, 32, 32, 1) window."""
    steps = {s["name"]: s["params"] for s in spec["preprocessing"]}  # type: ignore[attr-defined]
    image = np.asarray(nib.load(root / "data" / "imagesTr" / "case_000_0000.nii.gz").dataobj)
    image = np.clip(image.astype(np.float32), steps["clip"]["min"], steps["clip"]["max"])
    image = (image - image.mean()) / image.std()
    return image[None, ..., None].astype(np.float32)


def test_savedmodel_gives_the_keras_models_probabilities(trained: Path) -> None:
    import tensorflow as tf

    from miscore.pipeline.deploy import export_savedmodel

    # in-process (what the CLI calls; its wiring is the refusal test's)
    export_savedmodel(trained / "model", trained / "served")
    spec = json.loads((trained / "served" / "miscore-deploy.json").read_text())
    assert [s["name"] for s in spec["preprocessing"]] == ["clip", "zscore"]
    assert spec["preprocessing"][0]["params"]["min"] == -150
    assert spec["preprocessing"][0]["plugin"] == "preprocessing"
    assert spec["window"]["patch_shape"] == [32, 32, 32]
    assert spec["window"]["overlap"] == 0.5 and spec["classes"] == 2
    assert spec["input"]["shape"] == [None, 32, 32, 32, 1]
    patch = preprocessed_patch(trained, spec)
    served = tf.saved_model.load(str(trained / "served"))
    signature = served.signatures[spec["signature"]]
    out = signature(**{spec["input"]["name"]: tf.constant(patch)})[spec["output"]["name"]]
    expected = miscore.load_model(trained / "model").keras_model.predict_on_batch(patch)
    assert out.shape == (1, 32, 32, 32, 2)
    np.testing.assert_allclose(out.numpy(), expected, atol=TOLERANCE)
    assert not np.allclose(expected[..., 1], expected[..., 1].mean())  # not a flat answer


def test_onnx_gives_the_keras_models_probabilities(trained: Path) -> None:
    import onnxruntime

    from miscore.pipeline.deploy import export_onnx

    export_onnx(trained / "model", trained / "onnx")
    spec = json.loads((trained / "onnx" / "miscore-deploy.json").read_text())
    assert spec["artifact"] == "onnx" and [s["name"] for s in spec["preprocessing"]] == [
        "clip",
        "zscore",
    ]
    patch = preprocessed_patch(trained, spec)
    session = onnxruntime.InferenceSession(str(trained / "onnx" / spec["file"]))
    [out] = session.run([spec["output"]["name"]], {spec["input"]["name"]: patch})
    expected = miscore.load_model(trained / "model").keras_model.predict_on_batch(patch)
    np.testing.assert_allclose(out, expected, atol=TOLERANCE)


def test_export_refuses_a_folder_that_is_not_an_export(trained: Path) -> None:
    (trained / "notes").mkdir()
    (trained / "notes" / "keep.txt").write_text("mine")
    result = run_cli("export", "model", "--format", "savedmodel", "--out", "notes", cwd=trained)
    assert "notes: exists and is not a miscore deployment export" in assert_one_line_error(result)
    assert (trained / "notes" / "keep.txt").read_text() == "mine"


def test_a_serving_export_takes_no_model_card(trained: Path) -> None:
    result = run_cli("export", "model", "--format", "onnx", "--license", "MIT", cwd=trained)
    assert "--format onnx: writes no model card" in assert_one_line_error(result)
