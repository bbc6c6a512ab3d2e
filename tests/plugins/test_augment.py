"""The augment plugin: every component through the registry, on 2D and 3D samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from miscore_augment import default_augmentation

import miscore
from miscore import SpatialTransform, apply_spatial_transforms
from miscore.pipeline.augmenting import augment_sample
from miscore.testing import check_component, synthetic_case

SPATIAL = ("flip", "rotate90", "rotate", "scale", "shift", "elastic")
INTENSITY = (
    "brightness",
    "intensity_shift",
    "contrast",
    "gamma",
    "gaussian_noise",
    "gaussian_blur",
    "low_resolution",
)


@pytest.fixture(scope="module")
def registry() -> miscore.Registry:
    return miscore.PluginManager(disabled=(), trace=False).registry


def create(registry: miscore.Registry, name: str, **params: Any) -> miscore.Augmentation:
    created = registry.create("augmentation", {"name": name, "p": 1.0, **params})
    assert isinstance(created, miscore.Augmentation)
    return created


def sample_3d(classes: tuple[int, ...] = (0, 1, 2, 5)) -> tuple[npt.NDArray[Any], ...]:
    """A (24, 28, 20) image with 2 channels and a label with the given classes."""
    case = synthetic_case(shape=(24, 28, 20), classes=len(classes))
    assert case.label is not None
    label = np.asarray(classes, np.uint8)[case.label.array]
    image = np.concatenate([case.image.array, case.image.array * 0.5 + 3], axis=-1)
    return image.astype(np.float32), label


def test_every_component_is_registered_and_valid(registry: miscore.Registry) -> None:
    assert set(SPATIAL + INTENSITY) <= set(registry.names("augmentation"))
    for name in SPATIAL + INTENSITY:
        component = check_component(registry.get_augmentation(name))
        assert isinstance(component, miscore.Augmentation)
        assert component.summary()
        for field, info in type(component.params).model_fields.items():
            assert info.description, f"{name}.{field} has no description"


@pytest.mark.parametrize("name", SPATIAL)
@pytest.mark.parametrize("order", [1, 3])
def test_spatial_labels_keep_their_classes(
    registry: miscore.Registry, name: str, order: int
) -> None:
    image, label = sample_3d()
    params: dict[str, Any] = {"order": order} if name not in ("flip", "rotate90") else {}
    if name == "elastic":
        params |= {"magnitude": 4.0, "spacing": 8}
    augmentation = create(registry, name, **params)
    rng = np.random.default_rng(0)
    for _ in range(3):
        out, out_label = augmentation.augment(image, label, rng)
        assert out_label is not None and out_label.dtype == np.uint8
        assert out.shape == image.shape and out_label.shape == label.shape
        assert set(np.unique(out_label).tolist()) <= {0, 1, 2, 5}
        assert (out_label == 5).sum() > 0.5 * (label == 5).sum()


@pytest.mark.parametrize("name", ["flip", "rotate90"])
@pytest.mark.parametrize("shape", [(16, 16), (12, 12, 9)])
def test_flips_and_quarter_turns_undo_exactly(
    registry: miscore.Registry, name: str, shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(2)
    image = rng.standard_normal((*shape, 3), dtype=np.float32)
    label = rng.integers(0, 4, (*shape, 1), dtype=np.uint8)
    augmentation = create(registry, name)
    changed = 0
    for _ in range(6):
        transform = augmentation.spatial_transform(shape, rng)
        assert transform is not None
        out, out_label = apply_spatial_transforms([transform], image, label)
        assert np.shares_memory(out, image)  # a view, not a copy
        changed += not np.array_equal(out, image)
        inverse = SpatialTransform(np.linalg.inv(transform.matrix).astype(np.float64))
        back, back_label = apply_spatial_transforms([inverse], out, out_label)
        np.testing.assert_array_equal(back, image)
        np.testing.assert_array_equal(back_label, label)
    assert changed >= 3


def test_quarter_turns_keep_the_shape_of_unequal_planes(registry: miscore.Registry) -> None:
    image = np.random.default_rng(0).standard_normal((8, 12, 12, 1), dtype=np.float32)
    augmentation = create(registry, "rotate90")
    rng = np.random.default_rng(0)
    shapes = {augmentation.augment(image, None, rng)[0].shape for _ in range(20)}
    assert shapes == {image.shape}


def test_the_same_seed_gives_the_same_sample(registry: miscore.Registry) -> None:
    image, label = sample_3d()
    augmentations = [create(registry, e["name"]) for e in default_augmentation()]
    first = augment_sample(augmentations, image, label, np.random.default_rng(11))
    again = augment_sample(augmentations, image, label, np.random.default_rng(11))
    other = augment_sample(augmentations, image, label, np.random.default_rng(12))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


IDENTITY: dict[str, dict[str, Any]] = {
    "rotate": {"max_angle": 0.0},
    "scale": {"min": 1.0, "max": 1.0},
    "shift": {"max_shift": 0.0},
    "elastic": {"magnitude": 0.0},
    "flip": {"axis_p": 0.0},
    "brightness": {"min": 1.0, "max": 1.0},
    "intensity_shift": {"min": 0.0, "max": 0.0},
    "contrast": {"min": 1.0, "max": 1.0},
    "gamma": {"min": 1.0, "max": 1.0},
    "gaussian_noise": {"min_std": 0.0, "max_std": 0.0},
    "gaussian_blur": {"min_sigma": 0.0, "max_sigma": 0.0},
    "low_resolution": {"min_zoom": 1.0, "max_zoom": 1.0},
}


def test_identity_settings_return_the_input(registry: miscore.Registry) -> None:
    image, label = sample_3d()
    augmentations = [create(registry, name, **params) for name, params in IDENTITY.items()]
    out, out_label = augment_sample(augmentations, image, label, np.random.default_rng(0))
    np.testing.assert_allclose(out, image, atol=1e-4)
    np.testing.assert_array_equal(out_label, label)


def test_image_and_label_stay_aligned(registry: miscore.Registry) -> None:
    # a labelled cube off the centre; its centroid must move alike in image and label
    image = np.zeros((40, 40, 40, 1), np.float32)
    label = np.zeros((40, 40, 40, 1), np.uint8)
    label[8:18, 22:32, 12:24] = 1
    image[label == 1] = 100.0
    augmentations = [
        create(registry, "rotate", max_angle=30.0),
        create(registry, "scale", min=0.8, max=1.2),
        create(registry, "shift", max_shift=0.1),
    ]
    rng = np.random.default_rng(4)
    grid = np.indices(image.shape[:-1]).reshape(3, -1)
    before = np.argwhere(label[..., 0] == 1).mean(axis=0)
    for _ in range(3):
        out, out_label = augment_sample(augmentations, image, label, rng)
        assert out_label is not None
        from_label = np.argwhere(out_label[..., 0] == 1).mean(axis=0)
        weights = out[..., 0].reshape(-1)
        from_image = (grid * weights).sum(axis=1) / weights.sum()
        assert np.abs(from_label - from_image).max() < 0.5
        assert np.abs(from_label - before).max() > 1.0


def test_2d_samples_work_with_every_component(registry: miscore.Registry) -> None:
    rng = np.random.default_rng(0)
    image = rng.standard_normal((32, 24, 3), dtype=np.float32)
    label = (image[..., :1] > 1).astype(np.int32)
    augmentations = [create(registry, name) for name in SPATIAL + INTENSITY]
    out, out_label = augment_sample(augmentations, image, label, rng)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out_label is not None and set(np.unique(out_label).tolist()) <= {0, 1}


def test_a_region_gives_a_patch_of_real_data(registry: miscore.Registry) -> None:
    image, label = sample_3d()
    out, out_label = augment_sample(
        [create(registry, "rotate", max_angle=45.0)],
        image,
        label,
        np.random.default_rng(0),
        out_shape=(12, 14, 10),
    )
    assert out.shape == (12, 14, 10, 2)
    assert out_label is not None and out_label.shape == (12, 14, 10, 1)


# --- intensity: the numbers a user would check -------------------------------------------


def apply(
    registry: miscore.Registry, name: str, image: npt.NDArray[np.float32], seed: int = 0, **p: Any
) -> npt.NDArray[np.float32]:
    out, _ = create(registry, name, **p).augment(image, None, np.random.default_rng(seed))
    return np.asarray(out, np.float32)


@pytest.fixture
def image() -> npt.NDArray[np.float32]:
    return np.random.default_rng(1).standard_normal((16, 16, 12, 2), dtype=np.float32) + 2.0


def test_brightness_multiplies_by_a_factor_in_range(
    registry: miscore.Registry, image: npt.NDArray[np.float32]
) -> None:
    for seed in range(5):
        ratio = apply(registry, "brightness", image, seed) / image
        assert np.ptp(ratio) < 1e-5 and 0.75 <= ratio.mean() <= 1.25
    per_channel = apply(registry, "brightness", image, 0, per_channel=True) / image
    assert abs(per_channel[..., 0].mean() - per_channel[..., 1].mean()) > 1e-3


def test_intensity_shift_adds_an_offset_in_range(
    registry: miscore.Registry, image: npt.NDArray[np.float32]
) -> None:
    difference = apply(registry, "intensity_shift", image, 3, min=-0.5, max=0.5) - image
    assert np.ptp(difference) < 1e-5 and 0 < abs(difference.mean()) <= 0.5


def test_contrast_keeps_the_mean_and_range(
    registry: miscore.Registry, image: npt.NDArray[np.float32]
) -> None:
    out = apply(registry, "contrast", image, 0, preserve_range=False, min=1.2, max=1.2)
    assert out.mean() == pytest.approx(image.mean(), abs=1e-4)
    assert out.std() == pytest.approx(image.std() * 1.2, rel=1e-4)
    kept = apply(registry, "contrast", image, 0, min=1.5, max=1.5)
    assert kept.min() >= image.min() - 1e-6 and kept.max() <= image.max() + 1e-6


def test_gamma_keeps_the_range_and_bends_the_middle(
    registry: miscore.Registry, image: npt.NDArray[np.float32]
) -> None:
    out = apply(registry, "gamma", image, 0, min=2.0, max=2.0)
    assert out.min() == pytest.approx(image.min(), abs=1e-4)
    assert out.max() == pytest.approx(image.max(), abs=1e-4)
    assert out.mean() < image.mean() - 0.1  # exponent 2 darkens the middle
    inverted = apply(registry, "gamma", image, 0, min=2.0, max=2.0, invert=True)
    assert inverted.mean() > image.mean() + 0.1


def test_noise_has_the_drawn_standard_deviation(
    registry: miscore.Registry, image: npt.NDArray[np.float32]
) -> None:
    difference = apply(registry, "gaussian_noise", image, 0, min_std=0.2, max_std=0.2) - image
    assert difference.std() == pytest.approx(0.2, rel=0.05)
    assert abs(difference.mean()) < 0.01


def test_blur_and_low_resolution_smooth_the_image(
    registry: miscore.Registry, image: npt.NDArray[np.float32]
) -> None:
    blurred = apply(registry, "gaussian_blur", image, 0, min_sigma=1.0, max_sigma=1.0)
    assert blurred.std() < 0.5 * image.std()
    assert blurred.mean() == pytest.approx(image.mean(), abs=0.02)
    coarse = apply(registry, "low_resolution", image, 0, min_zoom=0.5, max_zoom=0.5)
    assert coarse.shape == image.shape
    assert np.abs(np.diff(coarse, axis=0)).mean() < 0.8 * np.abs(np.diff(image, axis=0)).mean()
    # the corner voxels are samples of the coarse grid: kept exactly
    np.testing.assert_allclose(coarse[0, 0, 0], image[0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(coarse[-1, -1, -1], image[-1, -1, -1], atol=1e-5)


def test_intensity_augmentations_leave_the_label_and_input_alone(
    registry: miscore.Registry, image: npt.NDArray[np.float32]
) -> None:
    label = (image[..., :1] > 2).astype(np.uint8)
    before = image.copy()
    for name in INTENSITY:
        out, out_label = create(registry, name).augment(image, label, np.random.default_rng(0))
        assert out_label is label
        assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_array_equal(image, before)


# --- configuration ------------------------------------------------------------------------


def test_a_config_file_lists_the_augmentations(registry: miscore.Registry, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "augmentation:\n"
        "  - {name: rotate, p: 1.0, max_angle: 20, planes: [[1, 2]]}\n"
        "  - {name: elastic, p: 1.0, magnitude: 2}\n"
        "  - {name: gamma, p: 0.5}\n",
        encoding="utf-8",
    )
    config = miscore.load_config(path)
    augmentations = [
        registry.create("augmentation", spec, f"augmentation[{i}]")
        for i, spec in enumerate(config.augmentation)
    ]
    assert [a.name for a in augmentations] == ["rotate", "elastic", "gamma"]
    image, label = sample_3d()
    out, out_label = augment_sample(augmentations, image, label, np.random.default_rng(0))
    assert out.shape == image.shape and out_label is not None
    assert not np.array_equal(out, image)


def test_bad_params_are_reported_by_field(registry: miscore.Registry) -> None:
    with pytest.raises(miscore.ConfigError, match=r"augmentation\[0\]\.contrast"):
        registry.create("augmentation", {"name": "contrast", "min": 2, "max": 1}, "augmentation[0]")
    with pytest.raises(miscore.ConfigError, match="max_angle"):
        registry.create("augmentation", {"name": "rotate", "max_angle": -1})
    rotate = create(registry, "rotate", planes=[[0, 3]])
    with pytest.raises(miscore.InputError, match=r"rotate\.planes"):
        rotate.spatial_transform((8, 8, 8), np.random.default_rng())


def test_the_default_set_runs_in_2d_and_3d(registry: miscore.Registry) -> None:
    entries = default_augmentation()
    assert entries is not default_augmentation() and entries == default_augmentation()
    augmentations = [registry.create("augmentation", e) for e in entries]
    rng = np.random.default_rng(0)
    image, label = sample_3d()
    for _ in range(3):
        out, out_label = augment_sample(augmentations, image, label, rng)
        assert out.shape == image.shape and out_label is not None
    flat_image, flat_label = image[:, :, 10], label[:, :, 10]
    out, out_label = augment_sample(augmentations, flat_image, flat_label, rng)
    assert out.shape == flat_image.shape


@settings(max_examples=25, deadline=None)
@given(
    names=st.lists(st.sampled_from(SPATIAL), min_size=1, max_size=4),
    order=st.sampled_from([1, 3]),
    seed=st.integers(0, 10_000),
    two_d=st.booleans(),
)
def test_any_spatial_chain_keeps_classes_and_shape(
    registry: miscore.Registry, names: list[str], order: int, seed: int, two_d: bool
) -> None:
    image, label = sample_3d()
    if two_d:
        image, label = image[:, :, 10], label[:, :, 10]
    augmentations = [
        create(registry, n, **({} if n in ("flip", "rotate90") else {"order": order}))
        for n in names
    ]
    out, out_label = augment_sample(augmentations, image, label, np.random.default_rng(seed))
    assert out.shape == image.shape and out.dtype == np.float32
    assert out_label is not None and out_label.shape == label.shape
    assert set(np.unique(out_label).tolist()) <= {0, 1, 2, 5}
    assert np.isfinite(out).all()
