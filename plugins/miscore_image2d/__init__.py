"""2D images (PNG, JPEG, TIFF, BMP) and PNG label masks.

Conventions (docs/io.md):
- the array is ``(row, col, C)`` exactly as ``numpy.asarray(PIL.Image.open(f))`` gives it;
  array axis 0 (rows, top to bottom) is affine column 0, axis 1 (columns, left to right) is
  affine column 1; the affine is the identity (1 mm pixels, origin 0) unless the PNG was
  written by miscore, which stores the affine in a ``miscore:affine`` text chunk;
- grey -> 1 channel, RGB -> 3; alpha is dropped (``keep_alpha`` keeps it as a 4th channel);
  palette images are read as RGB, except as label masks, where the palette index is the class;
- label masks are class ids; a mask holding only 0 and 255 is read as classes 0/1 (binary
  masks saved for viewing), and ``binary_threshold`` turns any mask into 0/1 by a threshold;
- masks are written as PNG, uint8 or uint16 when a class id exceeds 255.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field

import miscore
from miscore import ImageIO, InputError, Volume

__version__ = "0.1.0"

AFFINE_KEY = "miscore:affine"


class Image2DIO(ImageIO):
    """2D PNG, JPEG, TIFF and BMP images and PNG label masks via Pillow."""

    name = "image2d"
    suffixes: ClassVar[tuple[str, ...]] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
    write_suffix = ".png"

    class Params(miscore.Params):
        keep_alpha: bool = Field(False, description="keep an alpha channel as a 4th channel")
        binary_threshold: int | None = Field(
            None,
            ge=1,
            description="label masks: values >= this are class 1, others 0 (lossy JPEG masks)",
        )

    params: Params

    def _open(self, path: Path) -> Any:
        from PIL import Image, UnidentifiedImageError

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        try:
            image: Any = Image.open(path)
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise InputError(
                f"{path}: not a readable image ({type(exc).__name__}: {exc}); "
                f"check that the file is complete"
            ) from None
        if getattr(image, "n_frames", 1) > 1:
            raise InputError(
                f"{path}: has {image.n_frames} frames; image2d reads single 2D images "
                f"(read 3D stacks with the sitk IO)"
            )
        return image

    def _volume(self, array: npt.NDArray[Any], image: Any, path: Path) -> Volume:
        if array.ndim == 2:
            array = array[..., None]
        affine = np.eye(4)
        stored = getattr(image, "text", {}).get(AFFINE_KEY) if hasattr(image, "text") else None
        if stored:
            try:
                affine = np.asarray(json.loads(stored), dtype=np.float64).reshape(4, 4)
            except (ValueError, TypeError):
                raise InputError(
                    f"{path}: its {AFFINE_KEY} text chunk is not a 4x4 matrix"
                ) from None
        meta = {"format": "image2d", "mode": image.mode, "dtype": array.dtype.name}
        return Volume(np.ascontiguousarray(array), affine, meta)

    def read(self, path: Path) -> Volume:
        image = self._open(path)
        mode = image.mode
        if mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        elif mode == "1":
            image = image.convert("L")
        elif mode == "PA":
            image = image.convert("LA")
        array = np.asarray(image)
        if image.mode in ("RGBA", "LA") and not self.params.keep_alpha:
            array = array[..., :-1]
        if array.dtype.byteorder not in ("=", "|"):
            array = array.astype(array.dtype.newbyteorder("="))
        return self._volume(array, image, Path(path))

    def read_label(self, path: Path, image: Volume) -> Volume:
        """Read a mask as class ids (palette index, grey value); see the module docstring."""
        path = Path(path)
        pil = self._open(path)
        if pil.mode == "1":
            array = np.asarray(pil, dtype=np.uint8)
        else:
            array = np.asarray(pil)
            if array.ndim == 3:
                colour = array[..., :3]
                if not (
                    np.array_equal(colour[..., 0], colour[..., 1])
                    and np.array_equal(colour[..., 0], colour[..., 2])
                ):
                    raise InputError(
                        f"{path}: a colour mask; save label masks as grey or palette PNGs "
                        f"whose values are class ids"
                    )
                array = colour[..., 0]
        if array.dtype.kind == "f":
            raise InputError(f"{path}: float mask; label masks hold integer class ids")
        threshold = self.params.binary_threshold
        if threshold is not None:
            array = (array >= threshold).astype(np.uint8)
        else:
            values = np.unique(array)
            if values.size == 2 and values[0] == 0 and values[1] == 255:
                array = (array == 255).astype(np.uint8)  # a 0/255 binary mask
        return miscore.as_label_volume(self._volume(array, pil, path), path)

    def write(self, volume: Volume, path: Path, reference: Volume | None = None) -> Path:
        from PIL import Image, PngImagePlugin

        path = Path(path)
        if volume.ndim != 2:
            if volume.spatial_shape[2] != 1:
                raise InputError(
                    f"{path}: image2d writes 2D images; got spatial shape {volume.spatial_shape}"
                )
            array = volume.array[:, :, 0, :]
        else:
            array = volume.array
        suffix = path.name.lower().rsplit(".", 1)[-1]
        channels = array.shape[-1]
        if channels not in (1, 3, 4):
            raise InputError(f"{path}: 2D images have 1, 3 or 4 channels; got {channels}")
        array = _pixel_array(array, suffix, path)
        if channels == 1:
            array = array[..., 0]
        pil = Image.fromarray(np.ascontiguousarray(array))
        options: dict[str, Any] = {}
        if suffix == "png":
            info = PngImagePlugin.PngInfo()
            info.add_text(AFFINE_KEY, json.dumps(volume.affine.tolist()))
            options["pnginfo"] = info
        elif suffix in ("jpg", "jpeg"):
            options["quality"] = 95
        with miscore.atomic_output(path) as temp:
            try:
                pil.save(temp, format=_PIL_FORMATS.get(suffix), **options)
            except (OSError, KeyError, ValueError) as exc:
                raise InputError(f"{path}: cannot write this image: {exc}") from None
        return path


_PIL_FORMATS = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "tif": "TIFF",
    "tiff": "TIFF",
    "bmp": "BMP",
}


def _pixel_array(array: npt.NDArray[Any], suffix: str, path: Path) -> npt.NDArray[Any]:
    """Cast to a type the format stores without changing a value, or say why it cannot."""
    if suffix not in _PIL_FORMATS:
        raise InputError(f"{path}: image2d writes {', '.join(sorted(_PIL_FORMATS))} files")
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if suffix in ("tif", "tiff") and array.shape[-1] == 1:
            return array.astype(np.float32)
        if not np.array_equal(array, np.round(array)):
            raise InputError(
                f"{path}: {suffix.upper()} stores integers; scale the float image to "
                f"0..255 first, or write a one-channel float image as .tiff"
            )
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = float(array.min()), float(array.max())
    if low >= 0 and high <= 255:
        return array.astype(np.uint8)
    if low >= 0 and high <= 65535 and array.shape[-1] == 1 and suffix in ("png", "tif", "tiff"):
        return array.astype(np.uint16)
    raise InputError(
        f"{path}: values {low:g}..{high:g} do not fit this format (8-bit, or 16-bit grey PNG/TIFF)"
    )


@miscore.hookimpl
def miscore_register_io() -> list[type[ImageIO]]:
    return [Image2DIO]
