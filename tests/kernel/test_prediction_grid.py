"""Undoing the preprocessing: each step's inverse must return to the grid the step was given.

Session-made steps (component objects, no plugin) on a 32^3 synthetic case; the CLI side is
in tests/cli/test_prediction_grid.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import miscore
from miscore.core.config import Config
from miscore.data.preprocess import postprocess_prediction, preprocess_case
from miscore.pipeline.inference import Predictor
from miscore.pipeline.modeldir import ModelInfo
from miscore.testing import synthetic_case


class Crop(miscore.Subfunction):
    """Crops one slice off each end of axis 0; ``mistake`` decides what the inverse gets wrong."""

    name = "crop"

    def __init__(self, mistake: str = "", keep_meta: bool = True) -> None:
        super().__init__()
        self.mistake = mistake
        self.keep_meta = keep_meta

    def preprocess(self, case: miscore.Case, training: bool) -> miscore.Case:
        affine = case.image.affine.copy()
        affine[:3, 3] += affine[:3, 0]
        image = miscore.Volume(case.image.array[1:-1].copy(), affine)
        meta: dict[str, Any] = dict(case.meta) if self.keep_meta else {}
        out = miscore.Case(case.id, image, None, meta)
        self.set_state(out, {"affine": case.image.affine.tolist()})
        return out

    def postprocess(self, prediction: miscore.Volume, case: miscore.Case) -> miscore.Volume:
        if self.mistake == "no_pad":
            return prediction
        pad = [(1, 1)] + [(0, 0)] * (prediction.array.ndim - 1)
        array = np.pad(prediction.array, pad)
        affine = np.asarray(self.get_state(case)["affine"])
        if self.mistake == "affine":  # the right shape, but the cropped grid's origin
            affine = prediction.affine
        return miscore.Volume(array, affine)


class Scale(miscore.Subfunction):
    """An intensity step: the grid stays, the default inverse returns the prediction."""

    name = "scale"

    def preprocess(self, case: miscore.Case, training: bool) -> miscore.Case:
        return miscore.Case(case.id, case.image.with_array(case.image.array * 2), None, case.meta)


def chain(*steps: miscore.Subfunction) -> list[miscore.Subfunction]:
    for index, step in enumerate(steps):
        step.state_key = f"{index}.{step.name}"
    return list(steps)


def undo(steps: list[miscore.Subfunction]) -> miscore.Volume:
    case = synthetic_case(shape=(32, 32, 32), seed=0)
    ready = preprocess_case(case, steps, training=False)
    label = np.zeros((*ready.image.spatial_shape, 1), np.uint8)
    return postprocess_prediction(ready.image.with_array(label), ready, steps)


def test_inverses_that_restore_the_grid_give_the_image_grid() -> None:
    case = synthetic_case(shape=(32, 32, 32), seed=0)
    back = undo(chain(Crop(), Scale(), Crop()))
    assert back.spatial_shape == (32, 32, 32)
    np.testing.assert_allclose(back.affine, case.image.affine)


def test_the_step_whose_inverse_drops_slices_is_named_with_the_grid_it_was_given() -> None:
    with pytest.raises(miscore.PipelineError) as caught:
        undo(chain(Crop(), Scale(), Crop(mistake="no_pad")))
    assert str(caught.value) == (
        "case case_000: preprocessing step 'crop' did not restore the grid on inverse: "
        "got (28, 32, 32), "
        "the grid it was given is (30, 32, 32)"
    )


def test_an_inverse_with_the_right_shape_but_a_shifted_affine_is_named() -> None:
    with pytest.raises(miscore.PipelineError) as caught:
        undo(chain(Crop(mistake="affine")))
    message = str(caught.value)
    assert message.startswith(
        "case case_000: preprocessing step 'crop' did not restore the grid on inverse: "
        "got the affine "
    )
    assert "the image's is" in message


class Model:
    """Predicts background everywhere (two softmax channels)."""

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        out = np.zeros((*batch.shape[:-1], 2), np.float32)
        out[..., 0] = 1
        return out


def test_predict_case_refuses_a_grid_the_image_does_not_have_when_the_record_is_lost(
    plugin_manager: miscore.PluginManager, tmp_path: Path
) -> None:
    # the second step drops the meta (and with it the first step's grid record), so only the
    # check against the image itself is left to find the first step's broken inverse
    steps = chain(Crop(mistake="no_pad"), Crop(keep_meta=False))
    config = Config.model_validate({"data": {"classes": 2}, "patching": {"mode": "full"}})
    info = ModelInfo(input_shape=[None, None, None, 1], n_classes=2)
    predictor = Predictor(Model(), config, info, steps, plugin_manager, tmp_path)
    case = synthetic_case(shape=(32, 32, 32), seed=0)
    with pytest.raises(miscore.PipelineError) as caught:
        predictor.predict_case(case)
    assert str(caught.value) == (
        "case case_000: the preprocessing steps ('crop', 'crop') did not restore the grid on "
        "inverse: got (30, 32, 32), the image is (32, 32, 32)"
    )
