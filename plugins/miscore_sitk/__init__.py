"""Formats SimpleITK reads and writes (.mha, .mhd, .nrrd, ...), LPS converted to RAS.

ITK keeps geometry as origin, spacing and a direction matrix in LPS world coordinates, with
index order (x, y, z); ``sitk.GetArrayFromImage`` returns the array in (z, y, x) order. The
reader transposes the array to (x, y, z) and builds the RAS+ affine
``diag(-1, -1, 1) @ [direction @ diag(spacing) | origin]``, so array axis i = affine column i;
the writer inverts both steps. Multi-component pixels become channels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

import miscore
from miscore import ImageIO, InputError, Volume

__version__ = "0.1.0"

_LPS = np.diag([-1.0, -1.0, 1.0])


def itk_to_affine(
    origin: npt.ArrayLike, spacing: npt.ArrayLike, direction: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """The RAS+ affine of an ITK geometry (LPS, index order x, y, z), for 2 or 3 dimensions."""
    origin = np.asarray(origin, float)
    spacing = np.asarray(spacing, float)
    n = origin.size
    direction = np.asarray(direction, float).reshape(n, n)
    linear = np.eye(3)
    linear[:n, :n] = direction @ np.diag(spacing)
    offset = np.zeros(3)
    offset[:n] = origin
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ linear
    affine[:3, 3] = _LPS @ offset
    return affine


def affine_to_itk(
    affine: npt.NDArray[np.float64], ndim: int
) -> tuple[list[float], list[float], list[float]]:
    """(origin, spacing, direction row-major) in ITK's LPS for the first ``ndim`` axes."""
    linear = _LPS @ affine[:3, :3]
    origin = _LPS @ affine[:3, 3]
    spacing = np.linalg.norm(linear[:, :ndim], axis=0)
    direction = linear[:ndim, :ndim] / spacing
    return (
        [float(v) for v in origin[:ndim]],
        [float(v) for v in spacing],
        [float(v) for v in direction.ravel()],
    )


def _simpleitk() -> Any:
    """SimpleITK, imported where it is used (it is slow to import), untyped."""
    import SimpleITK

    return SimpleITK


def _in_plane(affine: npt.NDArray[np.float64]) -> bool:
    """True when a 2D volume's axes lie in the world xy-plane (a 2D ITK image holds it)."""
    return bool(
        np.allclose(affine[2, :2], 0.0)
        and np.allclose(affine[:2, 2], 0.0)
        and np.isclose(affine[2, 3], 0.0)
    )


class SimpleITKIO(ImageIO):
    """MetaImage (.mha/.mhd), NRRD and every other format SimpleITK reads, LPS -> RAS.

    ``.nii`` files are read too when this IO is asked for by name (``data.io: sitk``);
    auto-detection leaves them to the ``nifti`` IO.
    """

    name = "sitk"
    suffixes: ClassVar[tuple[str, ...]] = (".mha", ".mhd", ".nrrd", ".nhdr")
    write_suffix = ".mha"

    def read(self, path: Path) -> Volume:
        sitk = _simpleitk()
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        _check_metaimage_header(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            raise InputError(
                f"{path}: SimpleITK cannot read this file ({first}); check that it is complete"
            ) from None
        dim = image.GetDimension()
        components = image.GetNumberOfComponentsPerPixel()
        array = sitk.GetArrayFromImage(image)  # (z, y, x[, c]) or (y, x[, c])
        if components == 1:
            array = array[..., None]
        # reverse the spatial axes: ITK index order is x, y, z
        array = np.transpose(array, (*range(dim - 1, -1, -1), dim))
        origin, spacing = image.GetOrigin(), image.GetSpacing()
        direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
        if dim == 4:  # a time/channel 4th axis (e.g. a 4D .nii): make it the channels
            if components != 1:
                raise InputError(f"{path}: 4D images with vector pixels are not supported")
            array = array[..., 0]
            origin, spacing, direction = origin[:3], spacing[:3], direction[:3, :3]
        elif dim not in (2, 3):
            raise InputError(f"{path}: {dim}D images are not supported (2D or 3D only)")
        affine = itk_to_affine(origin, spacing, direction)
        meta = {
            "format": "sitk",
            "dtype": array.dtype.name,
            "pixel_type": image.GetPixelIDTypeAsString(),
            "itk_dimension": dim,
            "metadata": {
                key: image.GetMetaData(key)
                for key in image.GetMetaDataKeys()
                if len(image.GetMetaData(key)) < 256
            },
        }
        return Volume(np.ascontiguousarray(array), affine, meta)

    def write(self, volume: Volume, path: Path, reference: Volume | None = None) -> Path:
        sitk = _simpleitk()
        path = Path(path)
        array = _writable_array(volume)
        ndim = volume.ndim
        if ndim == 2 and not _in_plane(volume.affine):
            array, ndim = array[:, :, None, :], 3  # an oblique plane: a one-slice 3D image
        origin, spacing, direction = affine_to_itk(volume.affine, ndim)
        # back to ITK's (z, y, x[, c]) order
        itk_array = np.ascontiguousarray(np.transpose(array, (*range(ndim - 1, -1, -1), ndim)))
        channels = itk_array.shape[-1]
        if channels == 1:
            image = sitk.GetImageFromArray(itk_array[..., 0])
        else:
            image = sitk.GetImageFromArray(itk_array, isVector=True)
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        try:
            image.SetDirection(direction)
        except RuntimeError:
            raise InputError(
                f"{path}: the volume's affine has sheared axes, which ITK formats cannot store"
            ) from None
        with miscore.atomic_output(path) as temp:
            try:
                sitk.WriteImage(image, str(temp), useCompression=True)
            except RuntimeError as exc:
                raise miscore.PipelineError(
                    f"{path}: SimpleITK could not write it: {str(exc).strip().splitlines()[-1]}"
                ) from None
            if path.name.lower().endswith(".mhd"):
                # a .mhd header names its data file: keep that file beside the final name
                _fix_mhd(temp, path)
        return path


def _check_metaimage_header(path: Path) -> None:
    """Refuse a MetaImage header whose NDims is not 1..4 before ITK sees it: ITK's MetaIO
    loops forever on ``NDims = -1`` (found by fuzzing)."""
    if not path.name.lower().endswith((".mha", ".mhd")):
        return
    try:
        with path.open("rb") as handle:
            head = handle.read(4096).decode("latin-1")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    for line in head.splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() == "ndims":
            try:
                ndims = int(value.strip())
            except ValueError:
                ndims = 0
            if not 1 <= ndims <= 4:
                raise InputError(
                    f"{path}: MetaImage header says NDims = {value.strip()!r}; expected 2, 3 or 4"
                )
            return


def _fix_mhd(temp: Path, final: Path) -> None:
    """Point a temporary .mhd header at a data file named after the final header."""
    text = temp.read_text(encoding="latin-1")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("ElementDataFile"):
            old = temp.parent / line.split("=", 1)[1].strip()
            new = final.with_suffix(old.suffix)
            with old.open("rb+") as data:  # on disk before its final name, as the header
                os.fsync(data.fileno())
            old.replace(new)
            lines[i] = f"ElementDataFile = {new.name}"
    temp.write_text("\n".join(lines) + "\n", encoding="latin-1")


def _writable_array(volume: Volume) -> npt.NDArray[Any]:
    """The array in a dtype ITK stores; one-channel non-negative integer maps (labels,
    predictions) in the smallest unsigned type that holds them unless the volume keeps the
    dtype it was read with."""
    array = volume.array
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype.kind in "iu":
        relabel = volume.channels == 1 and volume.meta.get("dtype") != array.dtype.name
        if relabel and array.size and int(array.min()) >= 0:
            high = int(array.max())
            for dtype in (np.uint8, np.uint16, np.uint32):
                if high <= np.iinfo(dtype).max:
                    return array.astype(dtype)
        return array
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind == "f":
        return array
    raise InputError(f"ITK formats cannot store arrays of dtype {array.dtype}")


@miscore.hookimpl
def miscore_register_io() -> list[type[ImageIO]]:
    return [SimpleITKIO]
