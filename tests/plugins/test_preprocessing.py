"""The preprocessing subfunctions on real NIfTI files: preprocess, then undo it on predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from miscore_preprocessing import (
    Clip,
    CropForeground,
    CtWindow,
    MinMax,
    Pad,
    Reorient,
    Resample,
    Resize,
    Scale,
    ZScore,
)

import miscore
from miscore.data.preprocess import build_steps, postprocess_prediction, preprocess_case
from miscore.testing import check_component, oblique_affine

ALL = [ZScore, MinMax, Scale, Clip, CtWindow, Resample, Resize, Reorient, Pad, CropForeground]
SHAPE = (40, 36, 14)
SPACING = (0.8, 0.9, 2.5)  # anisotropic: ratio 3.1 > 3


def write_case(tmp_path: Path, zero_background: bool = False) -> tuple[Path, Path]:
    """An oblique, anisotropic image and a 3-class label of smooth shapes, as NIfTI files."""
    rng = np.random.default_rng(0)
    affine = oblique_affine(SPACING)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    # an off-centre ellipsoid with a core: not symmetric, so flips would show
    radius = np.sqrt((grids[0] - 0.2) ** 2 + (grids[1] + 0.1) ** 2 + grids[2] ** 2)
    label = np.zeros(SHAPE, np.uint8)
    label[radius < 0.7] = 1
    label[radius < 0.35] = 2
    image = 100.0 * label + rng.normal(0, 5, SHAPE)
    if zero_background:
        image = np.where(radius < 0.85, image + 300.0, 0.0)
    image_path, label_path = tmp_path / "img.nii.gz", tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), image_path)
    nib.save(nib.Nifti1Image(label, affine), label_path)
    return image_path, label_path


def read_case(image_path: Path, label_path: Path) -> miscore.Case:
    img, seg = nib.load(image_path), nib.load(label_path)
    image = miscore.Volume(np.asarray(img.get_fdata(), np.float32)[..., None], img.affine)
    label = miscore.Volume(np.asarray(seg.dataobj).astype(np.uint8)[..., None], seg.affine)
    return miscore.Case("case_01", image, label)


@pytest.fixture
def case(tmp_path: Path) -> miscore.Case:
    return read_case(*write_case(tmp_path))


@pytest.fixture
def registry(installed_plugins: miscore.PluginManager) -> miscore.Registry:
    return installed_plugins.registry


def run(
    case: miscore.Case, specs: list[Any], registry: miscore.Registry
) -> tuple[miscore.Case, miscore.Volume]:
    """Preprocess, then postprocess the preprocessed label as if it were the prediction."""
    steps = build_steps(specs, registry)
    ready = preprocess_case(case, steps, training=True)
    assert ready.label is not None
    back = postprocess_prediction(ready.label, ready, steps)
    return ready, back


def world(volume: miscore.Volume, index: Any) -> Any:
    return (volume.affine @ np.r_[np.asarray(index, float), 1.0])[:3]


def label_centroid_world(volume: miscore.Volume, cls: int) -> Any:
    index = np.argwhere(volume.array[..., 0] == cls).mean(axis=0)
    return world(volume, index)


# --- registration -----------------------------------------------------------------------


def test_every_step_is_registered_and_meets_the_contract(registry: miscore.Registry) -> None:
    names = {cls.name for cls in ALL}
    assert names <= set(registry.names("subfunction"))
    for cls in ALL:
        if cls in (Resample, Resize, CtWindow):
            continue  # these have required params
        check_component(cls)
    assert registry.get_subfunction("resample") is Resample


def test_bad_params_name_the_field(registry: miscore.Registry) -> None:
    with pytest.raises(miscore.ConfigError, match=r"preprocessing\[1\]\.ct_window"):
        build_steps(["zscore", {"name": "ct_window", "width": 400}], registry)
    with pytest.raises(miscore.ConfigError, match=r"preprocessing\[0\]\.reorient\.axcodes"):
        build_steps([{"name": "reorient", "axcodes": "RAR"}], registry)
    with pytest.raises(miscore.ConfigError, match="spacng"):
        build_steps([{"name": "resample", "spacng": [1, 1, 1]}], registry)


# --- grid steps: the original grid comes back ---------------------------------------------


def test_reorient_to_ras_is_exactly_undone(case: miscore.Case, registry: miscore.Registry) -> None:
    assert nib.aff2axcodes(case.image.affine) != ("R", "A", "S")
    ready, back = run(case, ["reorient"], registry)
    assert nib.aff2axcodes(ready.image.affine) == ("R", "A", "S")
    # the same voxel holds the same value at the same world position
    assert np.allclose(label_centroid_world(ready.label, 2), label_centroid_world(case.label, 2))
    assert back.spatial_shape == case.label.spatial_shape
    assert np.array_equal(back.affine, case.label.affine)
    assert np.array_equal(back.array, case.label.array)


def test_reorient_to_lps(case: miscore.Case, registry: miscore.Registry) -> None:
    ready, back = run(case, [{"name": "reorient", "axcodes": "lps"}], registry)
    assert nib.aff2axcodes(ready.image.affine) == ("L", "P", "S")
    assert np.array_equal(back.array, case.label.array)


def test_pad_to_multiple_of_depth_is_exactly_undone(
    case: miscore.Case, registry: miscore.Registry
) -> None:
    ready, back = run(case, [{"name": "pad", "depth": 4, "shape": [40, 48, 8]}], registry)
    assert ready.image.spatial_shape == (48, 48, 16)
    # voxel (0,0,0) of the input sits at the same world position in the padded grid
    before = np.array(ready.meta["steps"]["0.pad"]["start"])
    assert np.allclose(world(ready.image, before), world(case.image, [0, 0, 0]))
    assert ready.image.array[0, 0, 0, 0] == 0  # constant 0 padding
    assert np.array_equal(back.affine, case.label.affine)
    assert np.array_equal(back.array, case.label.array)


def test_pad_edge_mode_repeats_the_border(case: miscore.Case, registry: miscore.Registry) -> None:
    ready, _ = run(case, [{"name": "pad", "shape": [44, 36, 14], "mode": "edge"}], registry)
    assert np.array_equal(ready.image.array[0], case.image.array[0])
    assert np.array_equal(ready.image.array[-1], case.image.array[-1])


def test_crop_foreground_is_exactly_undone(tmp_path: Path, registry: miscore.Registry) -> None:
    case = read_case(*write_case(tmp_path, zero_background=True))
    ready, back = run(case, [{"name": "crop_foreground", "margin": 1}], registry)
    assert ready.image.spatial_shape < case.image.spatial_shape
    assert (ready.label.array > 0).sum() == (case.label.array > 0).sum()
    assert np.allclose(label_centroid_world(ready.label, 2), label_centroid_world(case.label, 2))
    assert np.array_equal(back.affine, case.label.affine)
    assert np.array_equal(back.array, case.label.array)


def test_crop_foreground_probabilities_are_background_outside(
    tmp_path: Path, registry: miscore.Registry
) -> None:
    case = read_case(*write_case(tmp_path, zero_background=True))
    steps = build_steps(["crop_foreground"], registry)
    ready = preprocess_case(case, steps, training=False)
    probs = np.full((*ready.image.spatial_shape, 3), 1 / 3, np.float32)
    back = postprocess_prediction(ready.image.with_array(probs), ready, steps)
    assert back.array.shape == (*SHAPE, 3)
    assert np.allclose(back.array.sum(axis=-1), 1.0)
    assert np.array_equal(back.array[0, 0, 0], [1, 0, 0])


@pytest.mark.parametrize(
    ("spacing", "min_agreement"),
    [([1.5, 1.5, 1.5], 0.96), ([0.5, 0.5, 1.0], 0.995), ([1.0, 1.0, 2.5], 0.98)],
)
def test_resample_roundtrip_keeps_labels_and_world_positions(
    case: miscore.Case, registry: miscore.Registry, spacing: list[float], min_agreement: float
) -> None:
    ready, back = run(case, [{"name": "resample", "spacing": spacing}], registry)
    # spacing reached to within half a voxel over the extent
    extent = np.multiply(SHAPE, SPACING)
    assert np.all(
        np.abs(np.subtract(ready.image.spacing, spacing))
        <= np.divide(spacing, 2) * (np.divide(spacing, extent) + 1e-9) + 1e-6
    )
    # the physical extent stays put: its centre and its first corner
    centre_in = world(case.image, (np.array(SHAPE) - 1) / 2)
    centre_out = world(ready.image, (np.array(ready.image.spatial_shape) - 1) / 2)
    assert np.allclose(centre_in, centre_out, atol=1e-6)
    assert np.allclose(world(case.image, [-0.5] * 3), world(ready.image, [-0.5] * 3), atol=1e-6)
    # so do the structures (within a fraction of a voxel)
    shift = np.linalg.norm(
        label_centroid_world(ready.label, 2) - label_centroid_world(case.label, 2)
    )
    assert shift < 0.5 * max(SPACING)
    assert set(np.unique(ready.label.array)) == {0, 1, 2}  # no new classes
    assert back.spatial_shape == SHAPE
    assert np.array_equal(back.affine, case.label.affine)
    agreement = float((back.array == case.label.array).mean())
    assert agreement >= min_agreement, agreement


def test_resample_image_interpolation_is_smooth(
    case: miscore.Case, registry: miscore.Registry
) -> None:
    linear, _ = run(case, [{"name": "resample", "spacing": [1, 1, 1], "order": 1}], registry)
    cubic, _ = run(case, [{"name": "resample", "spacing": [1, 1, 1], "order": 3}], registry)
    for ready in (linear, cubic):
        assert ready.image.array.dtype == np.float32
        inside = ready.image.array[ready.label.array == 2]
        assert abs(float(np.median(inside)) - 200.0) < 5.0
        mean_in, mean_out = float(case.image.array.mean()), float(ready.image.array.mean())
        assert abs(mean_out - mean_in) < 0.03 * mean_in
    # linear interpolation never leaves the input range; cubic may overshoot a little
    assert linear.image.array.max() <= case.image.array.max() + 1e-3


def test_resample_probabilities_linear_back(case: miscore.Case, registry: miscore.Registry) -> None:
    steps = build_steps([{"name": "resample", "spacing": [1.2, 1.2, 1.2]}], registry)
    ready = preprocess_case(case, steps, training=False)
    assert ready.label is not None
    probs = np.eye(3, dtype=np.float32)[ready.label.array[..., 0]]
    back = postprocess_prediction(ready.image.with_array(probs), ready, steps)
    assert back.array.shape == (*SHAPE, 3)
    assert back.array.dtype == np.float32
    assert np.allclose(back.array.sum(axis=-1), 1.0, atol=1e-5)
    agreement = float((back.array.argmax(-1) == case.label.array[..., 0]).mean())
    assert agreement >= 0.97, agreement


def test_resize_roundtrip(case: miscore.Case, registry: miscore.Registry) -> None:
    ready, back = run(case, [{"name": "resize", "shape": [32, 32, 32]}], registry)
    assert ready.image.spatial_shape == (32, 32, 32)
    expected = np.multiply(SPACING, np.divide(SHAPE, 32))
    assert np.allclose(ready.image.spacing, expected)
    assert np.array_equal(back.affine, case.label.affine)
    assert float((back.array == case.label.array).mean()) >= 0.97


def test_resample_and_pad_work_on_2d(registry: miscore.Registry) -> None:
    grids = np.meshgrid(np.linspace(-1, 1, 30), np.linspace(-1, 1, 20), indexing="ij")
    label = (grids[0] ** 2 + grids[1] ** 2 < 0.5).astype(np.uint8)[..., None]
    affine = np.diag([0.5, 0.7, 1.0, 1.0])
    case = miscore.Case(
        "x", miscore.Volume(label.astype(np.float32), affine), miscore.Volume(label, affine)
    )
    ready, back = run(
        case, [{"name": "resample", "spacing": [0.35, 0.35]}, {"name": "pad", "depth": 3}], registry
    )
    assert ready.image.ndim == 2
    assert all(n % 8 == 0 for n in ready.image.spatial_shape)
    assert back.spatial_shape == (30, 20)
    assert np.array_equal(back.affine, affine)
    assert float((back.array == label).mean()) >= 0.98


def test_full_chain_returns_to_the_original_grid(
    tmp_path: Path, registry: miscore.Registry
) -> None:
    case = read_case(*write_case(tmp_path, zero_background=True))
    image_before = case.image.array.copy()
    specs = [
        "reorient",
        {"name": "crop_foreground", "margin": 2},
        {"name": "resample", "spacing": [1.0, 1.0, 1.0]},
        {"name": "clip", "lower_percentile": 1, "upper_percentile": 99},
        {"name": "zscore", "mask": "nonzero"},
        {"name": "pad", "depth": 3},
    ]
    ready, back = run(case, specs, registry)
    assert list(ready.meta["steps"]) == ["0.reorient", "1.crop_foreground", "2.resample", "5.pad"]
    assert all(n % 8 == 0 for n in ready.image.spatial_shape)
    assert np.array_equal(case.image.array, image_before)  # the input is untouched
    assert "steps" not in case.meta
    assert back.spatial_shape == SHAPE
    assert np.array_equal(back.affine, case.label.affine)
    assert float((back.array == case.label.array).mean()) >= 0.98


def test_prediction_on_a_wrong_grid_is_refused(
    case: miscore.Case, registry: miscore.Registry
) -> None:
    steps = build_steps([{"name": "pad", "depth": 4}], registry)
    ready = preprocess_case(case, steps, training=False)
    with pytest.raises(miscore.PipelineError, match=r"0\.pad: prediction shape"):
        postprocess_prediction(case.label, ready, steps)


# --- intensity steps ----------------------------------------------------------------------


def two_channel_case() -> miscore.Case:
    rng = np.random.default_rng(1)
    array = np.stack([rng.normal(50, 10, (16, 16, 8)), rng.normal(-3, 2, (16, 16, 8))], -1)
    array[:4] = 0  # a zero border, as an image cropped to the body has
    return miscore.Case("two", miscore.Volume(array.astype(np.float32), oblique_affine()))


def preprocess(case: miscore.Case, spec: Any, registry: miscore.Registry) -> Any:
    steps = build_steps([spec], registry)
    ready = preprocess_case(case, steps, training=False)
    assert ready.image.same_grid(case.image)
    return ready.image.array


def test_zscore_per_channel(registry: miscore.Registry) -> None:
    case = two_channel_case()
    out = preprocess(case, "zscore", registry)
    assert out.dtype == np.float32
    assert np.allclose(out.reshape(-1, 2).mean(0), 0, atol=1e-4)
    assert np.allclose(out.reshape(-1, 2).std(0), 1, atol=1e-3)
    masked = preprocess(case, {"name": "zscore", "mask": "nonzero"}, registry)
    inside = masked[4:].reshape(-1, 2)
    assert np.allclose(inside.mean(0), 0, atol=1e-4)
    assert np.allclose(inside.std(0), 1, atol=1e-3)
    assert np.all(masked[:4] == 0)
    fixed = preprocess(case, {"name": "zscore", "mean": [50, -3], "std": [10, 2]}, registry)
    assert np.allclose(fixed[4:].reshape(-1, 2).mean(0), 0, atol=0.1)
    assert np.allclose(fixed[0, 0, 0], [-5.0, 1.5])


def test_minmax_and_scale(registry: miscore.Registry) -> None:
    case = two_channel_case()
    unit = preprocess(case, "minmax", registry)
    assert np.allclose(unit.reshape(-1, 2).min(0), 0)
    assert np.allclose(unit.reshape(-1, 2).max(0), 1)
    signed = preprocess(case, "scale", registry)
    assert np.allclose(signed.reshape(-1, 2).min(0), -1)
    assert np.allclose(signed.reshape(-1, 2).max(0), 1)
    masked = preprocess(case, {"name": "scale", "mask": "nonzero"}, registry)
    assert np.allclose(masked[4:].reshape(-1, 2).min(0), -1)
    assert np.all(masked[:4] == 0)


def test_clip_fixed_and_percentiles(registry: miscore.Registry) -> None:
    case = two_channel_case()
    fixed = preprocess(case, {"name": "clip", "min": [0, -4], "max": [60, 0]}, registry)
    assert np.allclose(fixed.reshape(-1, 2).min(0), [0, -4])
    assert np.allclose(fixed.reshape(-1, 2).max(0), [60, 0])
    pct = preprocess(
        case, {"name": "clip", "lower_percentile": 5, "upper_percentile": 95}, registry
    )
    channel = case.image.array[..., 0]
    assert np.isclose(pct[..., 0].max(), np.percentile(channel, 95))
    assert np.isclose(pct[..., 0].min(), np.percentile(channel, 5))
    # 10% of voxels clipped, in total, per channel
    changed = (pct[..., 1] != case.image.array[..., 1]).mean()
    assert 0.08 <= changed <= 0.12


def test_ct_window_presets(registry: miscore.Registry) -> None:
    hu = np.linspace(-2000, 2000, 2 * 3 * 400, dtype=np.float32).reshape(2, 3, 400, 1)
    case = miscore.Case("ct", miscore.Volume(hu))
    lung = preprocess(case, {"name": "ct_window", "preset": "lung"}, registry)
    assert lung.min() == 0 and lung.max() == 1
    # lung window: centre -600, width 1500 -> -1350..150 HU; -600 HU maps to 0.5
    i = np.argmin(np.abs(hu + 600))
    assert abs(lung.reshape(-1)[i] - 0.5) < 0.01
    raw = preprocess(
        case, {"name": "ct_window", "center": 40, "width": 80, "rescale": False}, registry
    )
    assert raw.min() == 0 and raw.max() == 80
