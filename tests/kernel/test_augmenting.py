"""The augmentation kernel: one coordinate map per sample, views for flips, exact TTA inverses.

These tests use small components defined here, so they check the kernel's protocol without
the bundled plugin (tests/plugins/test_augment.py checks that).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

import miscore
from miscore.pipeline import augmenting
from miscore.pipeline.augmenting import (
    SpatialTransform,
    TTATransform,
    apply_spatial_transforms,
    augment_sample,
    compose,
    tta_predict,
    tta_transforms,
)


def rotation(ndim: int, angle: float, plane: tuple[int, int] = (0, 1)) -> npt.NDArray[Any]:
    a, b = plane
    matrix = np.eye(ndim)
    matrix[a, a] = matrix[b, b] = np.cos(angle)
    matrix[a, b], matrix[b, a] = -np.sin(angle), np.sin(angle)
    return matrix


def scipy_reference(
    transforms: list[SpatialTransform],
    image: npt.NDArray[np.float32],
    out_shape: tuple[int, ...],
    order: int = 1,
) -> npt.NDArray[np.float32]:
    """The same map evaluated point by point with scipy, channel by channel."""
    composed = compose(transforms)
    n = len(out_shape)
    in_shape = image.shape[:-1]
    grid = np.indices(out_shape, dtype=np.float64).reshape(n, -1)
    centred = grid - ((np.asarray(out_shape) - 1) / 2)[:, None]
    coords = composed.matrix[:n, :n] @ centred + composed.matrix[:n, n : n + 1]
    # the output's centre sits at the centre of the centre crop of the input
    centre = (np.asarray(in_shape) - np.asarray(out_shape)) // 2 + (np.asarray(out_shape) - 1) / 2
    coords += centre[:, None]
    for field in composed.fields:
        # cubic B-spline evaluation of the control grid, written out independently
        up = field.astype(np.float64)
        for axis, size in enumerate(out_shape):
            m = field.shape[axis + 1]
            u = np.linspace(0, m - 1, size)[:, None] - np.arange(m)[None, :]
            t = np.abs(u)
            w = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0))
            w /= w.sum(axis=1, keepdims=True)
            up = np.moveaxis(np.tensordot(w, up, axes=(1, axis + 1)), 0, axis + 1)
        coords += up.reshape(n, -1)
    # edge duplication: a point outside takes the value of the nearest point inside
    coords = np.clip(coords, 0, (np.asarray(in_shape) - 1)[:, None])
    out = [
        ndimage.map_coordinates(image[..., c], coords, order=order, mode="nearest")
        for c in range(image.shape[-1])
    ]
    return np.stack(out, axis=-1).reshape((*out_shape, image.shape[-1])).astype(np.float32)


def random_image(shape: tuple[int, ...], seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape, dtype=np.float32)


# --- components defined here, to drive augment_sample ------------------------------------


class FixedSpatial(miscore.Augmentation):
    """Applies the transform it is given (a test double)."""

    name = "fixed_spatial"

    def __init__(self, transform: SpatialTransform, p: float = 1.0) -> None:
        super().__init__({"p": p})
        self.transform = transform

    def spatial_transform(
        self, shape: tuple[int, ...], rng: np.random.Generator
    ) -> SpatialTransform:
        return self.transform


class RandomRotation(miscore.Augmentation):
    """Rotates in plane (0, 1) by a random angle (a test double)."""

    name = "random_rotation"

    def spatial_transform(
        self, shape: tuple[int, ...], rng: np.random.Generator
    ) -> SpatialTransform:
        return SpatialTransform.linear(rotation(len(shape), rng.uniform(-1, 1)))


class AddOneInPlace(miscore.Augmentation):
    """Adds 1 in place (a test double)."""

    name = "add_one_inplace"

    def augment_inplace(self, image: npt.NDArray[np.float32], rng: np.random.Generator) -> bool:
        image += 1
        return True


class TimesTwo(miscore.Augmentation):
    """Doubles the image through ``augment`` (a test double of a third-party component)."""

    name = "times_two"
    Params: ClassVar[type[miscore.Params]] = miscore.AugmentationParams

    def augment(
        self,
        image: npt.NDArray[np.floating[Any]],
        label: npt.NDArray[np.integer[Any]] | None,
        rng: np.random.Generator,
    ) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.integer[Any]] | None]:
        return image * 2, label


# --- applying coordinate maps -------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("slab", [None, 1000])
def test_a_composed_map_matches_scipy_in_3d(
    channels: int, slab: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if slab is not None:  # the output is made in several slabs, the last one shorter
        monkeypatch.setattr(augmenting, "_SLAB_VOXELS", slab)
    image = random_image((20, 24, 18, channels))
    rng = np.random.default_rng(1)
    transforms = [
        SpatialTransform.linear(rotation(3, 0.3, (1, 2)) @ rotation(3, -0.2), [1.5, -2.0, 0.7]),
        SpatialTransform.linear(np.diag([0.8, 1.1, 0.9])),
        SpatialTransform(np.eye(4), rng.normal(0, 2, (3, 3, 4, 3)).astype(np.float32)),
    ]
    out, _ = apply_spatial_transforms(transforms, image)
    expected = scipy_reference(transforms, image, (20, 24, 18))
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, expected, atol=2e-4)


def test_a_composed_map_matches_scipy_in_2d_with_cubic_interpolation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(augmenting, "_SLAB_VOXELS", 300)
    image = random_image((30, 26, 2))
    transforms = [SpatialTransform.linear(rotation(2, 0.4), [3.0, -1.0], order=3)]
    out, _ = apply_spatial_transforms(transforms, image)
    np.testing.assert_allclose(out, scipy_reference(transforms, image, (30, 26), 3), atol=1e-3)


def test_compose_multiplies_matrices_in_list_order() -> None:
    first = SpatialTransform.linear(rotation(3, 0.5), [1.0, 2.0, 3.0])
    second = SpatialTransform.linear(np.diag([2.0, 1.0, 0.5]), [0.0, -1.0, 0.0])
    np.testing.assert_allclose(compose([first, second]).matrix, first.matrix @ second.matrix)


def test_an_identity_map_returns_the_input() -> None:
    image = random_image((16, 12, 10, 2))
    label = (image[..., :1] > 0).astype(np.uint8)
    out, out_label = apply_spatial_transforms([SpatialTransform.identity(3)], image, label)
    assert np.shares_memory(out, image)  # no interpolation at all
    np.testing.assert_array_equal(out, image)
    # a zero displacement forces the interpolation path: still the input, within float error
    zero = SpatialTransform(np.eye(4), np.zeros((3, 2, 2, 2), np.float32))
    out, out_label = apply_spatial_transforms([zero], image, label)
    assert not np.shares_memory(out, image)
    np.testing.assert_allclose(out, image, atol=1e-5)
    assert out_label is not None
    np.testing.assert_array_equal(out_label, label)


def test_flips_and_quarter_turns_are_views_and_exact() -> None:
    image = random_image((12, 12, 7, 1))
    label = np.arange(image.size, dtype=np.int32).reshape(image.shape) % 5
    quarter = np.rint(rotation(3, np.pi / 2, (0, 1)))
    flip = np.diag([1.0, -1.0, -1.0])
    transforms = [SpatialTransform.linear(quarter), SpatialTransform.linear(flip)]
    out, out_label = apply_spatial_transforms(transforms, image, label)
    assert np.shares_memory(out, image) and out_label is not None
    assert np.shares_memory(out_label, label)
    # the same map through interpolation (a displacement of zero forces it)
    forced = [*transforms, SpatialTransform(np.eye(4), np.zeros((3, 2, 2, 2), np.float32))]
    interpolated, interpolated_label = apply_spatial_transforms(forced, image, label)
    np.testing.assert_allclose(out, interpolated, atol=1e-5)
    assert interpolated_label is not None
    np.testing.assert_array_equal(out_label, interpolated_label)
    # and back: the inverse map gives the input exactly
    inverse = SpatialTransform(np.linalg.inv(compose(transforms).matrix).astype(np.float64))
    back, back_label = apply_spatial_transforms([inverse], out, out_label)
    np.testing.assert_array_equal(back, image)
    np.testing.assert_array_equal(back_label, label)


def test_the_patch_is_cut_from_the_region_not_padded() -> None:
    region = random_image((40, 40, 1), seed=3)
    transform = SpatialTransform.linear(rotation(2, np.deg2rad(30)) * 1.2)
    patch, _ = apply_spatial_transforms([transform], region, out_shape=(20, 20))
    assert patch.shape == (20, 20, 1)
    np.testing.assert_allclose(patch, scipy_reference([transform], region, (20, 20)), atol=1e-4)
    # rotating a 20x20 crop instead repeats its edges in the corners: different values
    crop = np.ascontiguousarray(region[10:30, 10:30])
    padded, _ = apply_spatial_transforms([transform], crop)
    assert np.abs(padded - patch)[:3, :3].mean() > 0.1


def test_an_odd_margin_still_reads_whole_voxels() -> None:
    region = random_image((21, 16, 1))
    flip = SpatialTransform.linear(np.diag([-1.0, 1.0]))
    out, _ = apply_spatial_transforms([flip], region, out_shape=(10, 10))
    assert np.shares_memory(out, region)
    np.testing.assert_array_equal(out, region[5:15, 3:13][::-1])
    rotated, _ = apply_spatial_transforms(
        [SpatialTransform.linear(rotation(2, 0.3))], region, out_shape=(10, 10)
    )
    np.testing.assert_allclose(
        rotated,
        scipy_reference([SpatialTransform.linear(rotation(2, 0.3))], region, (10, 10)),
        atol=1e-5,
    )


def test_integer_shifts_inside_the_region_are_views() -> None:
    region = random_image((30, 30, 1))
    shift = SpatialTransform.linear(np.eye(2), [3.0, -4.0])
    flip = SpatialTransform.linear(np.diag([-1.0, 1.0]))
    out, _ = apply_spatial_transforms([shift, flip], region, out_shape=(10, 10))
    assert np.shares_memory(out, region)
    # output voxel i reads input c_in + shift + flip(i - c_out), c_in = 14.5, c_out = 4.5
    rows = (14.5 + 3 - (np.arange(10) - 4.5)).astype(int)
    cols = (14.5 - 4 + (np.arange(10) - 4.5)).astype(int)
    np.testing.assert_array_equal(out, region[np.ix_(rows, cols)])


def test_labels_keep_their_classes_and_follow_the_image() -> None:
    label = np.zeros((32, 32, 32, 1), np.int16)
    label[6:14, 18:26, 10:20] = 7
    label[20:26, 5:12, 20:28] = 3
    # one image channel per class: both channels must move with the label
    image = np.concatenate([label == 7, label == 3], axis=-1).astype(np.float32) * 100
    rng = np.random.default_rng(0)
    transforms = [
        SpatialTransform.linear(rotation(3, 0.4, (0, 2)) @ np.diag([0.9, 1.1, 1.0]), [2, -3, 1]),
        SpatialTransform(np.eye(4), rng.normal(0, 1.5, (3, 3, 3, 3)).astype(np.float32)),
    ]
    out, out_label = apply_spatial_transforms(transforms, image, label)
    assert out_label is not None and out_label.dtype == np.int16
    # made in one slab or in many: the same result
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(augmenting, "_SLAB_VOXELS", 2000)
        sliced, sliced_label = apply_spatial_transforms(transforms, image, label)
    np.testing.assert_array_equal(sliced, out)
    np.testing.assert_array_equal(sliced_label, out_label)
    assert set(np.unique(out_label).tolist()) == {0, 3, 7}
    grid = np.indices(label.shape[:-1]).reshape(3, -1)
    for channel, value in enumerate((7, 3)):
        from_label = np.argwhere(out_label[..., 0] == value).mean(axis=0)
        weights = out[..., channel].reshape(-1)
        from_image = (grid * weights).sum(axis=1) / weights.sum()
        before = np.argwhere(label[..., 0] == value).mean(axis=0)
        assert np.abs(from_label - from_image).max() < 0.5
        assert np.abs(from_label - before).max() > 2  # it did move


def test_errors_name_the_problem() -> None:
    image = random_image((10, 10, 10, 1))
    with pytest.raises(miscore.InputError, match="label"):
        apply_spatial_transforms([], image, np.zeros((10, 10, 9, 1), np.uint8))
    with pytest.raises(miscore.InputError, match="integer"):
        apply_spatial_transforms([], image, np.zeros((10, 10, 10, 1), np.float32))
    with pytest.raises(miscore.InputError, match="out_shape"):
        apply_spatial_transforms([], image, out_shape=(12, 10, 10))
    with pytest.raises(miscore.InputError, match="2D spatial transform"):
        apply_spatial_transforms([SpatialTransform.identity(2)], image)


# --- a sample through a list --------------------------------------------------------------


def test_augment_sample_is_deterministic_per_seed() -> None:
    image = random_image((16, 16, 8, 1))
    augs = [RandomRotation(p=1.0), AddOneInPlace(p=1.0)]
    a, _ = augment_sample(augs, image, None, np.random.default_rng(5))
    b, _ = augment_sample(augs, image, None, np.random.default_rng(5))
    c, _ = augment_sample(augs, image, None, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


def test_augment_sample_composes_and_never_writes_into_the_input() -> None:
    image = random_image((16, 16, 1))
    before = image.copy()
    flip = FixedSpatial(SpatialTransform.linear(np.diag([-1.0, 1.0])))
    out, _ = augment_sample(
        [flip, AddOneInPlace(p=1.0), TimesTwo(p=1.0)], image, None, np.random.default_rng()
    )
    np.testing.assert_array_equal(image, before)
    np.testing.assert_allclose(out, (image[::-1] + 1) * 2)


def test_probability_zero_skips_and_one_applies() -> None:
    image = random_image((16, 16, 1))
    shift = SpatialTransform.linear(np.eye(2), [0.5, 0.0])
    never, _ = augment_sample([FixedSpatial(shift, p=0.0)], image, None, np.random.default_rng())
    assert np.shares_memory(never, image)
    always, _ = augment_sample([FixedSpatial(shift, p=1.0)], image, None, np.random.default_rng())
    np.testing.assert_allclose(always[:-1], (image[:-1] + image[1:]) / 2, atol=1e-6)


class RecordShape(miscore.Augmentation):
    """Records the shape of the image it sees (a test double)."""

    name = "record_shape"
    seen: ClassVar[list[tuple[int, ...]]] = []

    def augment_inplace(self, image: npt.NDArray[np.float32], rng: np.random.Generator) -> bool:
        self.seen.append(image.shape)
        return True


def test_intensity_steps_see_the_patch_once_nothing_moves_voxels_later() -> None:
    region = random_image((24, 20, 1))
    identity = FixedSpatial(SpatialTransform.identity(2), p=0.0)  # spatial, but skipped
    RecordShape.seen.clear()
    augment_sample(
        [RecordShape(p=1.0), identity, RecordShape(p=1.0)],
        region,
        None,
        np.random.default_rng(),
        (10, 10),
    )
    assert RecordShape.seen == [(24, 20, 1), (10, 10, 1)]


def test_augment_sample_crops_the_region_to_the_patch() -> None:
    region = random_image((24, 20, 2))
    out, _ = augment_sample([AddOneInPlace(p=1.0)], region, None, np.random.default_rng(), (10, 10))
    np.testing.assert_allclose(out, region[7:17, 5:15] + 1)


# --- test-time augmentation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ndim", "rotations", "count"), [(2, False, 4), (3, False, 8), (2, True, 8), (3, True, 16)]
)
def test_tta_transforms_invert_exactly(ndim: int, rotations: bool, count: int) -> None:
    shape = (6, 5, 4)[:ndim]
    image = random_image((*shape, 2))
    transforms = tta_transforms(ndim, rotations=rotations)
    assert len(transforms) == count
    outputs = []
    for transform in transforms:
        moved = transform.forward(image)
        outputs.append(moved.tobytes() + bytes(moved.shape))
        np.testing.assert_array_equal(transform.inverse(moved), image)
    assert len(set(outputs)) == count  # every transform is a different one
    np.testing.assert_array_equal(transforms[0].forward(image), image)


def test_tta_predict_averages_in_the_input_frame() -> None:
    image = random_image((8, 6, 1))
    ramp = np.arange(8, dtype=np.float32)[:, None, None]
    transforms = tta_transforms(2)
    doubled = tta_predict(lambda x: x * 2, image, transforms)
    np.testing.assert_allclose(doubled, image * 2, atol=1e-6)
    # a model that is not mirror-equivariant: the ramp it adds averages out along axis 0
    biased = tta_predict(lambda x: x + ramp, image, transforms)
    np.testing.assert_allclose(biased, image + ramp.mean(), atol=1e-5)


def test_tta_rejects_axes_outside_the_sample() -> None:
    with pytest.raises(miscore.InputError, match="axis 2"):
        tta_transforms(2, axes=[2])


@settings(max_examples=40, deadline=None)
@given(
    ndim=st.sampled_from([2, 3]),
    size=st.integers(1, 7),
    flips=st.sets(st.integers(0, 2)),
    k=st.integers(0, 3),
    plane=st.sampled_from([(0, 1), (0, 2), (1, 2), (1, 0)]),
    seed=st.integers(0, 1000),
)
def test_any_flip_and_quarter_turn_is_an_exact_view(
    ndim: int, size: int, flips: set[int], k: int, plane: tuple[int, int], seed: int
) -> None:
    plane = plane if max(plane) < ndim else (0, 1)
    transform = TTATransform(tuple(a for a in sorted(flips) if a < ndim), k, plane)
    image = random_image((size,) * ndim + (2,), seed)
    label = (image[..., :1] > 0).astype(np.uint8)
    moved = transform.forward(image)
    np.testing.assert_array_equal(transform.inverse(moved), image)
    # the same signed permutation as a coordinate map: a view with the same values
    spatial = SpatialTransform.linear(transform.matrix(ndim).astype(np.float64))
    out, out_label = apply_spatial_transforms([spatial], image, label)
    assert np.shares_memory(out, image)
    np.testing.assert_array_equal(out, moved)
    np.testing.assert_array_equal(out_label, transform.forward(label))
