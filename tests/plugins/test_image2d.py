"""The 2D image IO: axes as numpy gives them, channels, masks as classes, PNG writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from miscore_image2d import Image2DIO
from PIL import Image

import miscore
from miscore.testing import check_component, check_io_roundtrip


@pytest.fixture
def io() -> Image2DIO:
    component = check_component(Image2DIO)
    assert isinstance(component, Image2DIO)
    return component


def grey(rows: int = 10, cols: int = 14) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (rows, cols), dtype=np.uint8)


def test_registered(installed_plugins: miscore.PluginManager, tmp_path: Path) -> None:
    registry = installed_plugins.registry
    assert registry.get_io("image2d") is Image2DIO
    for name in ("a.png", "b.JPG", "c.tiff", "d.bmp"):
        (tmp_path / name).write_bytes(b"")
        assert registry.io_for(tmp_path / name).name == "image2d"


def test_axes_are_rows_then_columns(io: Image2DIO, tmp_path: Path) -> None:
    pixels = grey(10, 14)
    Image.fromarray(pixels).save(tmp_path / "g.png")
    volume = io.read(tmp_path / "g.png")
    assert volume.array.shape == (10, 14, 1)
    np.testing.assert_array_equal(volume.array[..., 0], pixels)
    # row 3, column 7: the pixel PIL reports at x=7, y=3
    assert volume.array[3, 7, 0] == Image.open(tmp_path / "g.png").getpixel((7, 3))
    np.testing.assert_array_equal(volume.affine, np.eye(4))
    assert volume.spacing == (1.0, 1.0)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_rgb_is_three_channels(io: Image2DIO, tmp_path: Path, suffix: str) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / f"c{suffix}")
    volume = io.read(tmp_path / f"c{suffix}")
    np.testing.assert_array_equal(volume.array, rgb)


def test_alpha_dropped_unless_kept(io: Image2DIO, tmp_path: Path) -> None:
    rgba = np.random.default_rng(2).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert io.read(tmp_path / "a.png").array.shape == (6, 5, 3)
    kept = Image2DIO(keep_alpha=True).read(tmp_path / "a.png")
    np.testing.assert_array_equal(kept.array, rgba)


def test_jpeg_reads_close(io: Image2DIO, tmp_path: Path) -> None:
    smooth = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (24, 1))
    Image.fromarray(smooth).save(tmp_path / "s.jpg", quality=95)
    volume = io.read(tmp_path / "s.jpg")
    assert volume.array.shape == (24, 32, 1)
    assert np.abs(volume.array[..., 0].astype(int) - smooth).max() <= 8


def test_binary_0_255_mask_reads_as_classes(io: Image2DIO, tmp_path: Path) -> None:
    mask = np.zeros((8, 9), np.uint8)
    mask[2:5, 3:7] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    image = io.read(tmp_path / "m.png")
    label = io.read_label(tmp_path / "m.png", image)
    assert label.array.dtype == np.uint8
    np.testing.assert_array_equal(label.array[..., 0], mask // 255)


def test_class_mask_values_are_kept(io: Image2DIO, tmp_path: Path) -> None:
    mask = np.zeros((8, 9), np.uint8)
    mask[1:3] = 1
    mask[4:6] = 2
    mask[7, 0] = 255  # 255 among other classes is a class id, not "foreground"
    Image.fromarray(mask).save(tmp_path / "m.png")
    label = io.read_label(tmp_path / "m.png", io.read(tmp_path / "m.png"))
    np.testing.assert_array_equal(label.array[..., 0], mask)


def test_palette_mask_gives_indices(io: Image2DIO, tmp_path: Path) -> None:
    indices = np.zeros((6, 6), np.uint8)
    indices[1:4, 1:4] = 2
    pil = Image.fromarray(indices, mode="L").convert("P")
    pil.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    pil.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    label = io.read_label(tmp_path / "p.png", io.read(tmp_path / "p.png"))
    np.testing.assert_array_equal(label.array[..., 0], indices)
    # as an image the palette colours are shown
    colours = io.read(tmp_path / "p.png").array
    assert colours.shape == (6, 6, 3)
    assert tuple(colours[2, 2]) == (0, 255, 0)


def test_lossy_mask_with_threshold(tmp_path: Path) -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "m.jpg", quality=70)
    io = Image2DIO(binary_threshold=128)
    label = io.read_label(tmp_path / "m.jpg", io.read(tmp_path / "m.jpg"))
    np.testing.assert_array_equal(label.array[..., 0], mask // 255)


def test_colour_mask_is_refused(io: Image2DIO, tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(miscore.InputError, match=r"c\.png.*colour mask"):
        io.read_label(tmp_path / "c.png", io.read(tmp_path / "c.png"))


def test_png_roundtrip_keeps_values_and_geometry(io: Image2DIO, tmp_path: Path) -> None:
    affine = np.diag([0.5, 0.7, 1.0, 1.0])
    affine[:3, 3] = (10.0, -4.0, 2.5)
    volume = miscore.Volume(grey()[..., None], affine)
    back = check_io_roundtrip(io, volume, tmp_path)
    assert back.spacing == (0.5, 0.7)
    rgb = miscore.Volume(np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    check_io_roundtrip(io, rgb, tmp_path / "rgb")


def test_masks_written_as_uint8_or_uint16(io: Image2DIO, tmp_path: Path) -> None:
    image = miscore.Volume(grey()[..., None])
    small = np.zeros((10, 14, 1), np.int64)
    small[2:4, 2:9] = 3
    io.write(image.with_array(small), tmp_path / "small.png", reference=image)
    assert Image.open(tmp_path / "small.png").mode == "L"
    many = np.arange(140, dtype=np.int64).reshape(10, 14, 1) * 4
    io.write(image.with_array(many), tmp_path / "many.png", reference=image)
    assert Image.open(tmp_path / "many.png").mode.startswith("I")
    back = io.read_label(tmp_path / "many.png", image)
    np.testing.assert_array_equal(back.array, many)
    assert back.array.dtype == np.uint16


def test_float_images_need_tiff(io: Image2DIO, tmp_path: Path) -> None:
    volume = miscore.Volume(np.random.default_rng(4).random((5, 6, 1)).astype(np.float32))
    with pytest.raises(miscore.InputError, match=r"x\.png.*integers"):
        io.write(volume, tmp_path / "x.png")
    check_io_roundtrip(io, volume, tmp_path, suffix=".tiff", atol=0)


def test_one_slice_3d_volume_is_written_as_2d(io: Image2DIO, tmp_path: Path) -> None:
    volume = miscore.Volume(grey(6, 5)[:, :, None, None])
    written = io.write(volume, tmp_path / "s.png")
    assert io.read(written).array.shape == (6, 5, 1)
    with pytest.raises(miscore.InputError, match="2D"):
        io.write(miscore.Volume(np.zeros((4, 4, 3, 1), np.uint8)), tmp_path / "t.png")


def test_broken_files_are_input_errors(io: Image2DIO, tmp_path: Path) -> None:
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(miscore.InputError, match=r"text\.png"):
        io.read(tmp_path / "text.png")
    Image.fromarray(grey(64, 64)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(miscore.InputError, match=r"cut\.png"):
        io.read(tmp_path / "cut.png")
