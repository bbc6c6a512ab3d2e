"""Sliding-window prediction: blending, padding, slices, TTA and postprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from miscore.pipeline.augmenting import tta_transforms
from miscore.pipeline.inference import (
    SlidingWindow,
    gaussian_importance,
    keep_largest_component,
    labels_from_scores,
    probabilities,
)


def sigmoid_identity(batch: np.ndarray) -> np.ndarray:
    """A 'model' whose one sigmoid channel is its input: blending must give the input back."""
    return batch.astype(np.float32)


def three_classes(batch: np.ndarray) -> np.ndarray:
    """Class 0 below 0.3, 1 up to 0.7, 2 above, as one-hot probabilities."""
    ids = np.digitize(batch[..., 0], [0.3, 0.7])
    return np.eye(3, dtype=np.float32)[ids]


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).random((21, 19, 11, 1)).astype(np.float32)


@pytest.mark.parametrize("blend", ["gaussian", "mean"])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_blending_a_voxelwise_model_gives_its_output_back(
    image: np.ndarray, blend: str, overlap: float
) -> None:
    window = SlidingWindow(sigmoid_identity, (8, 8, 8), overlap=overlap, blend=blend)
    p = probabilities(window(image))[..., 1]
    np.testing.assert_allclose(p, image[..., 0], atol=1e-5)
    labels = labels_from_scores(window(image), threshold=0.7)
    np.testing.assert_array_equal(labels[..., 0] == 1, image[..., 0] > 0.7)


def test_argmax_of_a_multiclass_model(image: np.ndarray) -> None:
    window = SlidingWindow(three_classes, (8, 8, 8), overlap=0.5, batch_size=3)
    labels = labels_from_scores(window(image))
    expected = np.digitize(image[..., 0], [0.3, 0.7])
    np.testing.assert_array_equal(labels[..., 0], expected)
    assert labels.dtype == np.uint8


def test_a_volume_smaller_than_the_window_is_padded_and_cropped_back() -> None:
    small = np.random.default_rng(1).random((5, 6, 3, 1)).astype(np.float32)
    window = SlidingWindow(three_classes, (8, 8, 8))
    labels = labels_from_scores(window(small))
    assert labels.shape == (5, 6, 3, 1)
    np.testing.assert_array_equal(labels[..., 0], np.digitize(small[..., 0], [0.3, 0.7]))


def test_slice_mode_feeds_2d_windows(image: np.ndarray) -> None:
    shapes = []

    def model(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return three_classes(batch)

    window = SlidingWindow(model, (21, 19, 1), slice_axis=2, batch_size=4)
    labels = labels_from_scores(window(image))
    assert all(len(s) == 4 and s[1:3] == (21, 19) for s in shapes)  # (batch, x, y, channels)
    assert sum(s[0] for s in shapes) == 11  # one window per slice
    np.testing.assert_array_equal(labels[..., 0], np.digitize(image[..., 0], [0.3, 0.7]))


def test_tta_of_a_voxelwise_model_changes_nothing(image: np.ndarray) -> None:
    plain = SlidingWindow(three_classes, (8, 8, 8), overlap=0.5)
    mirrored = SlidingWindow(three_classes, (8, 8, 8), overlap=0.5, tta=tta_transforms(3))
    np.testing.assert_allclose(
        probabilities(mirrored(image)), probabilities(plain(image)), atol=1e-6
    )


def test_tta_averages_over_mirrorings() -> None:
    ramp = np.linspace(0, 1, 8, dtype=np.float32)[:, None, None, None] * np.ones((8, 4, 4, 1))

    def left_biased(batch: np.ndarray) -> np.ndarray:
        p = np.zeros_like(batch[..., :1])
        p[:, : batch.shape[1] // 2] = 1.0  # 'foreground' in the first half along axis 0
        return p

    window = SlidingWindow(left_biased, (8, 4, 4), tta=tta_transforms(3, axes=[0]))
    p = probabilities(window(ramp.astype(np.float32)))[..., 1]
    np.testing.assert_allclose(p, 0.5)  # half the transforms say yes everywhere


def test_gaussian_importance_peaks_in_the_centre() -> None:
    weights = gaussian_importance((9, 9, 5))
    assert weights.shape == (9, 9, 5)
    assert weights[4, 4, 2] == pytest.approx(1.0)
    assert 0 < weights.min() < 0.05


def test_keep_largest_component_per_class() -> None:
    label = np.zeros((10, 10, 1), np.uint8)
    label[1:4, 1:4] = 1
    label[7:9, 7:9] = 1  # a smaller island of class 1
    label[5, 5] = 2
    kept = keep_largest_component(label)
    assert int((kept == 1).sum()) == 9 and int((kept == 2).sum()) == 1
