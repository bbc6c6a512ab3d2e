"""Overlay GIFs/PNGs and the cross-validation plots, read back from disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from miscore import InputError, PluginManager, Volume
from miscore.pipeline.evaluate import evaluate
from miscore.pipeline.visualize import (
    OVERLAY_ALPHA,
    class_colour,
    fold_curves_figure,
    intensity_window,
    paint_labels,
    plot_fold_curves,
    plot_metric_boxes,
    save_overlay,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_class_colours_are_fixed_red_green_blue_then_tab10() -> None:
    assert [class_colour(c) for c in (1, 2, 3)] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert class_colour(4) == (31, 119, 180)  # tab10 blue
    assert class_colour(14) == class_colour(4)  # tab10 cycles after ten colours
    with pytest.raises(ValueError, match="background"):
        class_colour(0)


def test_labels_are_blended_at_alpha_and_background_is_untouched() -> None:
    rgb = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [2, 0]])
    painted = paint_labels(rgb, labels)
    assert OVERLAY_ALPHA == 0.4
    assert painted[0, 0].tolist() == [100, 100, 100]
    assert painted[0, 1].tolist() == [162, 60, 60]  # 0.6 * 100 + 0.4 * 255 = 162
    assert painted[1, 0].tolist() == [60, 162, 60]


def test_the_window_is_the_05_and_995_percentiles() -> None:
    values = np.arange(1001, dtype=np.float32)
    assert intensity_window(values) == pytest.approx((5.0, 995.0))
    assert intensity_window(np.zeros(10)) == (0.0, 1.0)  # flat image: no division by zero


def _volume_pair(shape: tuple[int, ...]) -> tuple[Volume, Volume]:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 100, size=(*shape, 1)).astype(np.float32)
    label = np.zeros((*shape, 1), np.uint8)
    # class 1 in the top-left quarter (axis 0 < half, axis 1 > half) of every slice
    label[: shape[0] // 2, shape[1] // 2 :] = 1
    affine = np.diag([0.8, 0.8, 2.5, 1.0]) if len(shape) == 3 else np.diag([0.5, 0.5, 1, 1])
    return Volume(image, affine), Volume(label, affine)


def _tint(frame: Image.Image, panel: int, x: float, y: float) -> np.ndarray:
    """Mean RGB of a small patch at fraction (x, y) of one of three panels of a frame."""
    rgb = np.asarray(frame.convert("RGB"), dtype=np.float64)
    height, width = rgb.shape[:2]
    left = panel * width / 3
    col, row = int(left + x * width / 3), int(y * height)
    patch: np.ndarray = rgb[row - 3 : row + 3, col - 3 : col + 3].reshape(-1, 3).mean(axis=0)
    return patch


def test_a_3d_overlay_gif_has_one_frame_per_slice_even_where_slices_are_equal(
    tmp_path: Path,
) -> None:
    image, truth = _volume_pair((32, 28, 12))
    flat = image.array.copy()
    flat[..., 8:, :] = 0.0  # the last slices are identical: Pillow would merge such frames
    image = image.with_array(flat)
    prediction = truth.with_array(truth.array * 2)  # class 2: green
    path = save_overlay(image, truth, prediction, tmp_path / "case.gif")
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert getattr(gif, "n_frames", 1) == 12
        gif.seek(3)
        frame = gif.copy()
    top_left, bottom_right = (0.25, 0.3), (0.75, 0.8)
    red = _tint(frame, 1, *top_left)
    assert red[0] > red[1] + 60 and red[0] > red[2] + 60  # truth panel: class 1 red
    green = _tint(frame, 2, *top_left)
    assert green[1] > green[0] + 60 and green[1] > green[2] + 60  # prediction: class 2 green
    for panel in (0, 1, 2):
        r, g, b = _tint(frame, panel, *bottom_right)
        assert abs(r - g) < 25 and abs(g - b) < 25  # no label there: grey
    r, g, b = _tint(frame, 0, *top_left)
    assert abs(r - g) < 25 and abs(g - b) < 25  # the image panel is never painted


def test_a_2d_overlay_is_a_png_with_three_panels(tmp_path: Path) -> None:
    image, truth = _volume_pair((40, 40))
    path = save_overlay(image, truth, truth, tmp_path / "case.png")
    assert path.read_bytes()[:8] == PNG
    with Image.open(path) as png:
        width, height = png.size
        assert getattr(png, "n_frames", 1) == 1
        frame = png.copy()
    assert width > 2.9 * (height - 20)
    red = _tint(frame, 2, 0.25, 0.3)
    assert red[0] > red[1] + 60


def test_panels_keep_the_voxel_aspect_ratio(tmp_path: Path) -> None:
    image = Volume(np.random.default_rng(1).normal(size=(32, 32, 1)), np.eye(4))
    tall = Volume(image.array, np.diag([1.0, 2.0, 1.0, 1.0]))
    sizes = []
    for name, volume in (("square", image), ("tall", tall)):
        with Image.open(save_overlay(volume, None, None, tmp_path / f"{name}.png")) as png:
            sizes.append(png.size)
    (square_w, square_h), (tall_w, tall_h) = sizes
    assert square_w == 2 * tall_w  # axis 1 voxels are twice as long: half the width
    assert square_h == tall_h


def test_overlay_errors_name_the_problem(tmp_path: Path) -> None:
    image, truth = _volume_pair((16, 16, 4))
    with pytest.raises(InputError, match=r"case\.png: a 3D overlay is written as \.gif"):
        save_overlay(image, truth, None, tmp_path / "case.png")
    small = Volume(np.zeros((8, 16, 4, 1), np.uint8), np.eye(4))
    with pytest.raises(InputError, match="the prediction has shape"):
        save_overlay(image, truth, small, tmp_path / "case.gif")
    assert not list(tmp_path.iterdir())


HISTORIES = {
    "fold_0": [
        {"epoch": 1.0, "loss": 1.0, "val_loss": 1.1, "dice": 0.2, "learning_rate": 0.001},
        {"epoch": 2.0, "loss": 0.8, "val_loss": 0.9, "dice": 0.4, "learning_rate": 0.001},
    ],
    "fold_1": [
        {"epoch": 1.0, "loss": 1.2, "val_loss": 1.3, "dice": 0.1, "learning_rate": 0.001},
        {"epoch": 2.0, "loss": 0.7, "val_loss": 1.0, "dice": 0.5, "learning_rate": 0.001},
    ],
}


def test_fold_curves_have_a_line_per_fold_and_metric(tmp_path: Path) -> None:
    written = plot_fold_curves(HISTORIES, tmp_path / "plots")
    assert [p.name for p in written] == ["curves_loss.png", "curves_dice.png"]
    assert all(p.read_bytes()[:8] == PNG for p in written)
    loss = fold_curves_figure(HISTORIES, "loss").axes[0]
    labels = [line.get_label() for line in loss.get_lines()]
    assert labels == ["fold_0", "fold_0 val", "fold_1", "fold_1 val"]
    assert loss.get_lines()[2].get_ydata().tolist() == [1.2, 0.7]
    dice = fold_curves_figure(HISTORIES, "dice").axes[0]
    assert [line.get_label() for line in dice.get_lines()] == ["fold_0", "fold_1"]


def test_box_plot_of_dice_per_class(tmp_path: Path) -> None:
    registry = PluginManager().registry
    affine = np.eye(4)
    truth = np.zeros((8, 8, 4, 1), np.uint8)
    truth[:4] = 1
    truth[4:6] = 2
    pairs = []
    for i, shift in enumerate((0, 1, 2)):
        pred = np.roll(truth, shift, axis=0)
        pairs.append((f"c{i}", Volume(pred, affine), Volume(truth, affine)))
    report = evaluate(pairs, registry, metrics=["dice"], classes=[1, 2])
    path = plot_metric_boxes(report, "dice", tmp_path / "box_dice.png", ["bg", "organ", "tumour"])
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(InputError, match="no metric 'hd95'"):
        plot_metric_boxes(report, "hd95", tmp_path / "box_hd95.png")
