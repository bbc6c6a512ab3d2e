"""The metrics plugin: known answers, empty masks, and agreement with SimpleITK and medpy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter

import miscore
from miscore.testing import check_component

ALL = (
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "hd95",
    "hd",
    "assd",
    "nsd",
    "volume_pred_ml",
    "volume_true_ml",
    "volume_diff_ml",
)
Mask = npt.NDArray[np.bool_]


@pytest.fixture(scope="module")
def registry() -> miscore.Registry:
    return miscore.PluginManager(disabled=(), trace=False).registry


def metric(registry: miscore.Registry, name: str, **params: object) -> miscore.Metric:
    created = registry.create("metric", {"name": name, **params})
    assert isinstance(created, miscore.Metric)
    return created


def score(
    registry: miscore.Registry,
    name: str,
    pred: Mask,
    truth: Mask,
    spacing: Sequence[float],
    **params: object,
) -> float:
    return metric(registry, name, **params).compute(pred, truth, spacing)


def box(shape: Sequence[int], start: Sequence[int], size: Sequence[int]) -> Mask:
    mask = np.zeros(tuple(shape), dtype=bool)
    mask[tuple(slice(a, a + n) for a, n in zip(start, size, strict=True))] = True
    return mask


def random_masks(seed: int, shape: Sequence[int] = (30, 26, 18)) -> tuple[Mask, Mask]:
    """Two smooth random blobs (several components each), partly overlapping."""
    rng = np.random.default_rng(seed)
    a = gaussian_filter(rng.normal(size=tuple(shape)), 2) > 0.1
    b = gaussian_filter(rng.normal(size=tuple(shape)), 2) > 0.1
    return a, b


def test_every_metric_is_registered_and_valid(registry: miscore.Registry) -> None:
    assert set(ALL) <= set(registry.names("metric"))
    for name in ALL:
        check_component(registry.get_metric(name))
    assert registry.info("metric", "dice").plugin == "metrics"


# --- known answers ------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_plates_offset_by_k_voxels_are_k_times_spacing_apart(
    registry: miscore.Registry, axis: int, k: int
) -> None:
    spacing = (0.7, 1.3, 2.5)
    start, size = [4, 4, 4], [10, 10, 10]
    size[axis] = 1  # a one-voxel plate: every voxel is on the surface
    pred = box((20, 20, 20), start, size)
    start[axis] += k
    truth = box((20, 20, 20), start, size)
    expected = k * spacing[axis]
    for name in ("hd95", "hd", "assd"):
        assert score(registry, name, pred, truth, spacing) == pytest.approx(expected, abs=1e-9)
    assert score(registry, "dice", pred, truth, spacing) == 0.0
    assert score(registry, "nsd", pred, truth, spacing, tolerance_mm=expected) == 1.0
    below = expected - 0.01
    assert score(registry, "nsd", pred, truth, spacing, tolerance_mm=below) == 0.0


@pytest.mark.parametrize("k", [1, 2, 5])
def test_shifted_cubes_overlap_and_hausdorff(registry: miscore.Registry, k: int) -> None:
    spacing = (1.5, 0.5, 2.0)
    pred = box((24, 16, 16), (4, 4, 4), (8, 8, 8))
    truth = box((24, 16, 16), (4 + k, 4, 4), (8, 8, 8))
    assert score(registry, "dice", pred, truth, spacing) == pytest.approx((8 - k) / 8)
    assert score(registry, "iou", pred, truth, spacing) == pytest.approx((8 - k) / (8 + k))
    assert score(registry, "precision", pred, truth, spacing) == pytest.approx((8 - k) / 8)
    assert score(registry, "recall", pred, truth, spacing) == pytest.approx((8 - k) / 8)
    negatives = 24 * 16 * 16 - 512
    expected_spec = (negatives - 64 * k) / negatives
    assert score(registry, "specificity", pred, truth, spacing) == pytest.approx(expected_spec)
    assert score(registry, "hd", pred, truth, spacing) == pytest.approx(k * 1.5)
    # hd95 <= hd; surface voxels on the shared side faces are 0 mm apart
    assert 0 < score(registry, "hd95", pred, truth, spacing) <= k * 1.5 + 1e-9


def test_nested_cubes_hausdorff_is_the_corner_gap(registry: miscore.Registry) -> None:
    spacing = (0.8, 1.2, 3.0)
    outer = box((16, 16, 16), (3, 3, 3), (10, 10, 10))
    inner = box((16, 16, 16), (5, 5, 5), (6, 6, 6))
    corner_gap = 2 * math.sqrt(sum(s * s for s in spacing))
    assert score(registry, "hd", inner, outer, spacing) == pytest.approx(corner_gap)
    assert score(registry, "precision", inner, outer, spacing) == 1.0
    assert score(registry, "recall", inner, outer, spacing) == pytest.approx(216 / 1000)


def test_identical_masks_are_perfect(registry: miscore.Registry) -> None:
    grids = np.ogrid[:21, :21, :21]
    sphere = sum((g - 10) ** 2 for g in grids) <= 64
    spacing = (0.5, 0.5, 2.0)
    expected = {"dice": 1, "iou": 1, "precision": 1, "recall": 1, "specificity": 1}
    expected |= {"hd95": 0, "hd": 0, "assd": 0, "nsd": 1, "volume_diff_ml": 0}
    for name, value in expected.items():
        assert score(registry, name, sphere, sphere, spacing) == value, name


def test_volumes_in_ml_use_the_spacing(registry: miscore.Registry) -> None:
    pred = box((20, 20, 20), (0, 0, 0), (10, 10, 10))  # 1000 voxels of 0.5*1*2 = 1 mm3
    truth = box((20, 20, 20), (0, 0, 0), (10, 10, 20))
    spacing = (0.5, 1.0, 2.0)
    assert score(registry, "volume_pred_ml", pred, truth, spacing) == pytest.approx(1.0)
    assert score(registry, "volume_true_ml", pred, truth, spacing) == pytest.approx(2.0)
    assert score(registry, "volume_diff_ml", pred, truth, spacing) == pytest.approx(1.0)
    assert score(registry, "volume_diff_ml", truth, pred, spacing) == pytest.approx(1.0)


def test_two_dimensional_masks(registry: miscore.Registry) -> None:
    pred = box((20, 20), (2, 2), (1, 10))
    truth = box((20, 20), (6, 2), (1, 10))
    spacing = (0.5, 2.0)
    assert score(registry, "hd95", pred, truth, spacing) == pytest.approx(2.0)
    assert score(registry, "volume_pred_ml", pred, truth, spacing) == pytest.approx(0.01)


# --- empty masks --------------------------------------------------------------------------


def test_both_masks_empty(registry: miscore.Registry) -> None:
    empty = np.zeros((8, 8, 8), dtype=bool)
    spacing = (1.0, 1.0, 1.0)
    expected = {"dice": 1, "iou": 1, "precision": 1, "recall": 1, "specificity": 1}
    expected |= {"hd95": 0, "hd": 0, "assd": 0, "nsd": 1}
    expected |= {"volume_pred_ml": 0, "volume_true_ml": 0, "volume_diff_ml": 0}
    for name, value in expected.items():
        assert score(registry, name, empty, empty, spacing) == value, name


@pytest.mark.parametrize("empty_side", ["pred", "truth"])
def test_one_mask_empty(registry: miscore.Registry, empty_side: str) -> None:
    empty = np.zeros((8, 8, 8), dtype=bool)
    full = box((8, 8, 8), (2, 2, 2), (3, 3, 3))
    pred, truth = (empty, full) if empty_side == "pred" else (full, empty)
    spacing = (1.0, 1.0, 1.0)
    for name in ("dice", "iou", "precision", "recall", "nsd"):
        assert score(registry, name, pred, truth, spacing) == 0.0, name
    for name in ("hd95", "hd", "assd"):
        assert math.isnan(score(registry, name, pred, truth, spacing)), name
        assert score(registry, name, pred, truth, spacing, empty_value=373.13) == 373.13
    assert score(registry, "volume_diff_ml", pred, truth, spacing) == pytest.approx(0.027)


def test_specificity_when_truth_fills_the_image(registry: miscore.Registry) -> None:
    full = np.ones((4, 4, 4), dtype=bool)
    assert score(registry, "specificity", full, full, (1, 1, 1)) == 1.0
    part = box((4, 4, 4), (0, 0, 0), (2, 4, 4))
    assert score(registry, "specificity", part, full, (1, 1, 1)) == 0.0


# --- bad input ----------------------------------------------------------------------------


def test_wrong_spacing_or_shape_is_an_input_error(registry: miscore.Registry) -> None:
    a = box((8, 8, 8), (2, 2, 2), (3, 3, 3))
    with pytest.raises(miscore.InputError, match="spacing"):
        score(registry, "hd95", a, a, (1.0, 1.0))
    with pytest.raises(miscore.InputError, match="positive"):
        score(registry, "assd", a, a, (1.0, 0.0, 1.0))
    with pytest.raises(miscore.InputError, match="shape"):
        score(registry, "dice", a, a[:4], (1.0, 1.0, 1.0))
    with pytest.raises(miscore.ConfigError, match="tolerance_mm"):
        metric(registry, "nsd", tolerance_mm=-1)


# --- the distance cache -------------------------------------------------------------------


def test_cache_serves_read_only_masks_and_never_stale_writable_ones(
    registry: miscore.Registry,
) -> None:
    import miscore_metrics

    a, b = random_masks(7)
    spacing = (0.7, 1.3, 2.9)
    reference = miscore_metrics.compute_surface_distances(a, b, spacing)
    a.flags.writeable = False
    b.flags.writeable = False
    first = miscore_metrics.surface_distances(a, b, spacing)
    assert miscore_metrics.surface_distances(a, b, spacing) is first
    np.testing.assert_array_equal(first.pooled, reference.pooled)
    assert miscore_metrics.surface_distances(a, b, (1.0, 1.0, 1.0)) is not first
    # writable masks are recomputed every time: changing one in place changes the answer
    c, d = a.copy(), b.copy()
    before = score(registry, "hd", c, d, spacing)
    c[:] = d
    assert score(registry, "hd", c, d, spacing) == 0.0
    assert before > 0
    miscore_metrics.clear_cache()


# --- independent implementations ----------------------------------------------------------


def _sitk_image(mask: Mask, spacing: Sequence[float]) -> object:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))  # ITK orders axes x, y, z
    return image


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_simpleitk(registry: miscore.Registry, seed: int) -> None:
    import SimpleITK as sitk

    pred, truth = random_masks(seed)
    spacing = (0.7, 1.3, 2.9)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(_sitk_image(pred, spacing), _sitk_image(truth, spacing))
    expected = {
        "dice": overlap.GetDiceCoefficient(),
        "iou": overlap.GetJaccardCoefficient(),
        "recall": 1 - overlap.GetFalseNegativeError(),
        "specificity": 1 - overlap.GetFalsePositiveError(),
        "precision": 1 - overlap.GetFalseDiscoveryRate(),
    }
    for name, value in expected.items():
        assert score(registry, name, pred, truth, spacing) == pytest.approx(value, abs=1e-6), name
    # ITK's Hausdorff distance is over all voxels, ours over boundary voxels: for these blobs
    # the farthest voxel lies on a boundary either way; see docs/metrics.md for the tolerance.
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(_sitk_image(pred, spacing), _sitk_image(truth, spacing))
    ours = score(registry, "hd", pred, truth, spacing)
    assert ours == pytest.approx(hausdorff.GetHausdorffDistance(), abs=max(spacing))
    assert ours >= hausdorff.GetHausdorffDistance() - 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_medpy(registry: miscore.Registry, seed: int) -> None:
    binary = pytest.importorskip("medpy.metric.binary")
    pred, truth = random_masks(seed + 10, shape=(28, 22, 15))
    spacing = (0.6, 1.1, 3.3)
    expected = {
        "dice": binary.dc(pred, truth),
        "iou": binary.jc(pred, truth),
        "precision": binary.precision(pred, truth),
        "recall": binary.recall(pred, truth),
        "specificity": binary.specificity(pred, truth),
        "hd95": binary.hd95(pred, truth, voxelspacing=spacing),
        "hd": binary.hd(pred, truth, voxelspacing=spacing),
        "assd": binary.assd(pred, truth, voxelspacing=spacing),
    }
    for name, value in expected.items():
        assert score(registry, name, pred, truth, spacing) == pytest.approx(value, abs=1e-9), name


def test_nsd_against_brute_force(registry: miscore.Registry) -> None:
    from scipy.spatial.distance import cdist

    pred, truth = random_masks(3, shape=(20, 18, 12))
    spacing = (0.6, 1.1, 3.3)
    from miscore_metrics.surface import boundary

    points_p = np.argwhere(boundary(pred)) * spacing
    points_t = np.argwhere(boundary(truth)) * spacing
    distances = cdist(points_p, points_t)
    to_truth, to_pred = distances.min(axis=1), distances.min(axis=0)
    for tolerance in (0.5, 2.0, 4.0):
        hits = np.count_nonzero(to_truth <= tolerance) + np.count_nonzero(to_pred <= tolerance)
        expected = hits / (len(to_truth) + len(to_pred))
        got = score(registry, "nsd", pred, truth, spacing, tolerance_mm=tolerance)
        assert got == pytest.approx(expected, abs=1e-12)
    pooled = np.concatenate([to_truth, to_pred])
    assert score(registry, "hd95", pred, truth, spacing) == pytest.approx(
        np.percentile(pooled, 95), abs=1e-9
    )


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    spacing=st.tuples(*[st.floats(0.3, 4.0)] * 3),
    density=st.floats(0.05, 0.6),
)
def test_symmetries_and_bounds(
    registry: miscore.Registry, seed: int, spacing: tuple[float, float, float], density: float
) -> None:
    rng = np.random.default_rng(seed)
    pred = rng.random((7, 6, 5)) < density
    truth = rng.random((7, 6, 5)) < density
    for name in ("dice", "iou", "hd95", "hd", "assd", "nsd", "volume_diff_ml"):
        forward = score(registry, name, pred, truth, spacing)
        backward = score(registry, name, truth, pred, spacing)
        assert forward == pytest.approx(backward, nan_ok=True), name
    assert score(registry, "precision", pred, truth, spacing) == pytest.approx(
        score(registry, "recall", truth, pred, spacing)
    )
    dice = score(registry, "dice", pred, truth, spacing)
    iou = score(registry, "iou", pred, truth, spacing)
    assert dice == pytest.approx(2 * iou / (1 + iou))
    if pred.any() and truth.any():
        hd95 = score(registry, "hd95", pred, truth, spacing)
        assert (
            0
            <= score(registry, "assd", pred, truth, spacing)
            <= score(registry, "hd", pred, truth, spacing)
        )
        assert hd95 <= score(registry, "hd", pred, truth, spacing) + 1e-9
        hd = score(registry, "hd", pred, truth, spacing)
        assert score(registry, "nsd", pred, truth, spacing, tolerance_mm=hd) == 1.0
        within_hd95 = score(registry, "nsd", pred, truth, spacing, tolerance_mm=hd95)
        assert 0.5 <= within_hd95 <= 1.0


def test_cache_does_not_keep_masks_alive(registry: miscore.Registry) -> None:
    import gc
    import weakref

    import miscore_metrics

    a, b = random_masks(8)
    a.flags.writeable = False
    b.flags.writeable = False
    first = score(registry, "hd95", a, b, (1.0, 1.0, 1.0))
    ref = weakref.ref(a)
    del a
    gc.collect()
    assert ref() is None
    c, d = random_masks(9)
    c.flags.writeable = False
    d.flags.writeable = False
    fresh = miscore_metrics.compute_surface_distances(c, d, (1.0, 1.0, 1.0))
    expected = float(np.percentile(fresh.pooled, 95))
    assert score(registry, "hd95", c, d, (1.0, 1.0, 1.0)) == expected != first
