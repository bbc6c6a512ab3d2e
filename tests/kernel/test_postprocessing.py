"""Keeping the largest component per class, and the cross-validation rule that decides it.

The rule on a real ``miscore cv`` run is tested in tests/cli/test_cv.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import miscore
from miscore import Case, Config, PluginManager, Volume
from miscore.pipeline.inference import Predictor
from miscore.pipeline.modeldir import ModelInfo
from miscore.pipeline.postprocessing import (
    LargestComponentTrial,
    PostprocessingDecision,
    keep_largest_component,
    keep_largest_setting,
)


def two_blobs(shape: tuple[int, ...] = (12, 12, 12)) -> np.ndarray:
    """A label map: class 1 a 4^3 cube with a 1-voxel speck, class 2 two 2^3 cubes."""
    label = np.zeros(shape, np.uint8)
    label[1:5, 1:5, 1:5] = 1
    label[10, 10, 10] = 1  # a speck of class 1
    label[1:3, 8:10, 8:10] = 2
    label[8:10, 1:3, 1:3] = 2  # class 2 has two parts of the same size
    return label


def test_only_the_listed_classes_lose_their_small_components() -> None:
    label = two_blobs()
    kept = keep_largest_component(label, [1])
    assert int((kept == 1).sum()) == 64 and kept[10, 10, 10] == 0
    np.testing.assert_array_equal(kept == 2, label == 2)
    every = keep_largest_component(label)  # default: every foreground class present
    assert int((every == 2).sum()) == 8 and int((every == 1).sum()) == 64
    assert label[10, 10, 10] == 1  # the input is not changed


def test_the_rule_keeps_the_class_it_helps_and_not_the_class_it_hurts() -> None:
    # Truth: class 1 is one cube; class 2 really has two parts. The prediction adds a false
    # speck to class 1 and finds both parts of class 2. Keeping the largest component of
    # every class (keep_largest: true) would fix class 1 but cut class 2 in half.
    truth = two_blobs()
    truth[10, 10, 10] = 0
    prediction = two_blobs()
    trial = LargestComponentTrial([1, 2])
    trial.add("a", prediction, truth)
    trial.add("b", truth, truth)  # a case predicted perfectly
    decision = trial.decide()
    one, two = decision.classes
    assert one.dice_before == pytest.approx((2 * 64 / 129 + 1) / 2)
    assert one.dice_largest == pytest.approx(1.0)
    assert two.dice_before == pytest.approx(1.0)
    assert two.dice_largest == pytest.approx(2 * 8 / 24)  # half of class 2 lost, twice
    assert (one.keep, two.keep) == (True, False)
    assert decision.keep_largest == [1]
    # the guard: with the decided setting no class is worse than as predicted
    assert one.dice_after == one.dice_largest > one.dice_before
    assert two.dice_after == two.dice_before
    assert (one.changed, two.changed) == (1, 2)
    assert decision.cases == 2 and decision.metric == "dice"
    line = decision.describe()
    assert "inference.keep_largest = [1]" in line
    assert "class 2 1.0000 -> 1.0000 (largest only: 0.6667, not kept)" in line


def test_a_change_that_does_not_raise_the_mean_dice_is_not_kept() -> None:
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[0:2, 0:2, 0:2] = 1
    prediction = truth.copy()
    prediction[5, 5, 5] = 1  # a speck where no class 1 is: removing it helps
    trial = LargestComponentTrial([1])
    trial.add("a", prediction, truth)
    assert trial.decide().keep_largest is True  # every foreground class: written as true
    same = LargestComponentTrial([1])
    same.add("a", truth, truth)
    assert same.decide().keep_largest is False


def test_the_setting_is_false_true_or_the_list() -> None:
    assert keep_largest_setting([], [1, 2, 3]) is False
    assert keep_largest_setting([3, 1, 2], [1, 2, 3]) is True
    assert keep_largest_setting([3, 1], [1, 2, 3]) == [1, 3]


def test_the_decision_round_trips_through_json() -> None:
    trial = LargestComponentTrial([1, 2])
    trial.add("a", two_blobs(), two_blobs())
    decision = trial.decide()
    back = PostprocessingDecision.model_validate_json(decision.model_dump_json(by_alias=True))
    assert back == decision


class FixedScores(Predictor):
    """A predictor whose sliding window returns fixed scores (no Keras model)."""

    scores: np.ndarray

    def class_scores(
        self,
        image: np.ndarray,
        overlap: float | None = None,
        blend: str | None = None,
        tta: bool | None = None,
    ) -> np.ndarray:
        return self.scores


def test_predict_case_keeps_the_largest_component_of_the_configured_classes(
    tmp_path: Path,
) -> None:
    config = Config.model_validate({"data": {"classes": 3}, "inference": {"keep_largest": [1]}})
    info = ModelInfo(input_shape=[12, 12, 12, 1], n_classes=3)
    predictor = FixedScores(None, config, info, [], PluginManager(), tmp_path)
    predictor.scores = np.eye(3, dtype=np.float32)[two_blobs()]
    image = Volume(np.zeros((12, 12, 12, 1), np.float32), np.eye(4))
    label, _ = predictor.predict_case(Case("c", image))
    np.testing.assert_array_equal(label.array[..., 0], keep_largest_component(two_blobs(), [1]))
    raw, _ = predictor.predict_case(Case("c", image), keep_largest=False)
    np.testing.assert_array_equal(raw.array[..., 0], two_blobs())
    every, _ = predictor.predict_case(Case("c", image), keep_largest=True)
    assert int((every.array == 2).sum()) == 8


def hollow_cube_with_speck() -> np.ndarray:
    """Class 1: a 6^3 cube with a 2^3 hole and a one-voxel speck; class 2 inside the hole."""
    label = np.zeros((12, 12, 12), np.uint8)
    label[2:8, 2:8, 2:8] = 1
    label[4:6, 4:6, 4:6] = 0
    label[4, 4, 4] = 2  # another class in the hole is kept
    label[10, 10, 10] = 1
    return label


def test_predict_case_runs_the_configured_postprocessors_in_order(tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "data": {"classes": 3},
            "inference": {
                "keep_largest": False,
                "postprocessing": [
                    {"name": "remove_small", "min_voxels": 2, "classes": [1]},
                    "fill_holes",
                ],
            },
        }
    )
    info = ModelInfo(input_shape=[12, 12, 12, 1], n_classes=3)
    predictor = FixedScores(None, config, info, [], PluginManager(), tmp_path)
    predictor.scores = np.eye(3, dtype=np.float32)[hollow_cube_with_speck()]
    image = Volume(np.zeros((12, 12, 12, 1), np.float32), np.eye(4))
    label, _ = predictor.predict_case(Case("c", image))
    expected = np.zeros((12, 12, 12), np.uint8)
    expected[2:8, 2:8, 2:8] = 1
    expected[4, 4, 4] = 2
    np.testing.assert_array_equal(label.array[..., 0], expected)
    assert label.array.dtype == np.uint8


class Flatten:
    """A plugin whose postprocessor returns the wrong shape."""

    class Flat(miscore.Postprocessor):
        name = "flat"

        def apply(self, prediction: Volume, n_classes: int) -> Volume:
            return Volume(prediction.array[:1])

    @miscore.hookimpl
    def miscore_register_postprocessors(self) -> list[type[miscore.Postprocessor]]:
        return [self.Flat]


def test_a_postprocessor_that_changes_the_shape_is_named(tmp_path: Path) -> None:
    plugins = PluginManager()
    plugins.register(Flatten(), "flatten")
    config = Config.model_validate({"inference": {"postprocessing": ["flat"]}})
    info = ModelInfo(input_shape=[12, 12, 12, 1], n_classes=2)
    predictor = FixedScores(None, config, info, [], plugins, tmp_path)
    predictor.scores = np.eye(2, dtype=np.float32)[np.zeros((12, 12, 12), np.uint8)]
    image = Volume(np.zeros((12, 12, 12, 1), np.float32), np.eye(4))
    with pytest.raises(miscore.PipelineError, match="postprocessor 'flat' returned"):
        predictor.predict_case(Case("c", image))


def test_an_unknown_postprocessor_names_its_field(tmp_path: Path) -> None:
    config = Config.model_validate({"inference": {"postprocessing": ["fil_holes"]}})
    info = ModelInfo(input_shape=[12, 12, 12, 1], n_classes=2)
    predictor = FixedScores(None, config, info, [], PluginManager(), tmp_path)
    with pytest.raises(miscore.ComponentNotFoundError, match=r"inference.postprocessing\[0\]"):
        _ = predictor.postprocessors
