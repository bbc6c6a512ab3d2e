"""NIfTI reader and writer (nibabel): .nii and .nii.gz, 3D and 4D.

Geometry is nibabel's ``img.affine`` (the sform when its code is set, else the qform), which
is already voxel index -> RAS+ mm with array axis i = affine column i: no reorientation.
A 4th dimension holds channels (a 5D file with a singleton 4th dimension too). Scaling
(``scl_slope``/``scl_inter``) is applied; the result is float when it is not the identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

import miscore
from miscore import ImageIO, InputError, Volume

__version__ = "0.1.0"

#: dtypes NIfTI-1 stores; others are converted before writing
_WRITABLE = {
    "uint8",
    "int8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
}


def _native(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The array in native byte order (Analyze-era files are often big-endian)."""
    if array.dtype.byteorder not in ("=", "|"):
        return array.astype(array.dtype.newbyteorder("="))
    return array


def _header_meta(
    header: Any, dataobj: Any, raw_dtype: np.dtype[Any], shape: tuple[int, ...]
) -> dict[str, Any]:
    """The JSON-able header facts a writer needs to restore the file."""
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    # nibabel moves the scaling from a loaded image's header onto its dataobj
    slope, inter = _scaling(getattr(dataobj, "slope", None), getattr(dataobj, "inter", None))
    intent_name, intent_params, intent_label = header.get_intent()
    space, time = header.get_xyzt_units()
    descrip = header["descrip"].item()
    return {
        "format": "nifti",
        "nifti_version": 2 if header.sizeof_hdr == 540 else 1,
        "dtype": np.dtype(raw_dtype).newbyteorder("=").name if raw_dtype.names is None else "rgb",
        "file_shape": list(shape),
        "sform_code": int(sform_code or 0),
        "qform_code": int(qform_code or 0),
        "sform": None if sform is None else np.asarray(sform, float).tolist(),
        "qform": None if qform is None else np.asarray(qform, float).tolist(),
        # the quaternion as stored, so that a writer restores the qform bit for bit
        "quatern": [float(header[k]) for k in ("quatern_b", "quatern_c", "quatern_d")]
        + [float(header[k]) for k in ("qoffset_x", "qoffset_y", "qoffset_z")],
        "pixdim": [float(v) for v in header["pixdim"]],
        "scl_slope": None if slope is None else float(slope),
        "scl_inter": None if inter is None else float(inter),
        "xyzt_units": [space, time],
        "intent": [intent_name, [float(p) for p in intent_params], intent_label],
        "descrip": descrip.decode("latin-1") if isinstance(descrip, bytes) else str(descrip),
    }


def _nibabel() -> Any:
    """nibabel, imported where it is used, untyped (its partial hints confuse strict mypy)."""
    import nibabel

    return nibabel


def _scaling(slope: Any, inter: Any) -> tuple[float | None, float | None]:
    """(slope, inter) as NIfTI means them: a slope of 0 or NaN is no scaling."""
    if slope is None or not np.isfinite(slope) or slope == 0:
        return None, None
    inter = float(inter) if inter is not None and np.isfinite(inter) else 0.0
    return float(slope), inter


def _load(nib: Any, path: Path) -> Any:
    """Load a NIfTI file; a ``.gz`` one is decompressed whole so that its CRC is checked
    (nibabel stops reading at the end of the data and never sees a damaged stream's CRC)."""
    if not path.name.lower().endswith(".gz"):
        return nib.load(str(path), mmap=False)
    import gzip

    with gzip.open(path, "rb") as handle:
        data = handle.read()
    n2 = data[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")  # sizeof_hdr 540
    return (nib.Nifti2Image if n2 else nib.Nifti1Image).from_bytes(data)


def _to_channels_last(array: npt.NDArray[Any], path: Path) -> npt.NDArray[Any]:
    """File axes (x, y, z[, t or 1, c]) -> ``(x, y, z, C)``."""
    if array.ndim == 2:  # a single slice stored as 2D: keep it 3D with one slice
        return array[:, :, None, None]
    if array.ndim == 3:
        return array[..., None]
    if array.ndim == 4:
        return array
    if array.ndim == 5 and array.shape[3] == 1:
        return array[:, :, :, 0, :]
    raise InputError(
        f"{path}: NIfTI shape {array.shape} is not supported: expected 3D, 4D (channels) "
        f"or 5D with a singleton 4th dimension"
    )


class NiftiIO(ImageIO):
    """NIfTI-1/2 images and label maps (.nii, .nii.gz) via nibabel."""

    name = "nifti"
    suffixes: ClassVar[tuple[str, ...]] = (".nii.gz", ".nii")
    write_suffix = ".nii.gz"

    def read(self, path: Path) -> Volume:
        nib = _nibabel()
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        try:
            img = _load(nib, path)
            header = img.header
            raw = np.asanyarray(img.dataobj.get_unscaled())
        except Exception as exc:
            raise InputError(
                f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc}); "
                f"check that the file is complete and really NIfTI"
            ) from None
        raw_dtype = raw.dtype
        try:
            meta = _header_meta(header, img.dataobj, raw_dtype, tuple(int(n) for n in raw.shape))
        except Exception as exc:  # a header field nibabel cannot decode (unit, intent codes)
            raise InputError(
                f"{path}: damaged NIfTI header ({type(exc).__name__}: {exc}); check the file"
            ) from None
        if raw.dtype.names is not None:  # RGB24/RGBA32: one channel per field
            array = np.stack([raw[f] for f in raw.dtype.names], axis=-1)
            if array.ndim > 4:
                raise InputError(f"{path}: 4D colour NIfTI files are not supported")
            if array.ndim == 3:
                array = array[:, :, None, :]
        else:
            array = _to_channels_last(_native(raw), path)
        slope, inter = meta["scl_slope"], meta["scl_inter"]
        if slope is not None and (slope != 1.0 or (inter or 0.0) != 0.0):
            out = np.promote_types(array.dtype, np.float32)
            array = array.astype(out) * out.type(slope) + out.type(inter or 0.0)
        affine = np.asarray(img.affine, dtype=np.float64)
        if isinstance(array, np.memmap):  # an uncompressed .nii: read it now, hold no file open
            array = np.array(array, order="K")
        # nibabel's arrays are Fortran-ordered; a C-order copy would cost more than the
        # decompression (a 512x512x300 read took 3.6x nibabel's time), and nothing needs it
        return Volume(array, affine, meta)

    def write(self, volume: Volume, path: Path, reference: Volume | None = None) -> Path:
        nib = _nibabel()
        path = Path(path)
        ref_meta = (reference.meta if reference is not None else volume.meta) or {}
        nifti = ref_meta if ref_meta.get("format") == "nifti" else {}
        array = _writable_array(volume)
        affine = volume.affine
        if volume.ndim == 2:
            array = array[:, :, None, :]
        if array.shape[-1] == 1:
            array = array[..., 0]
        img = nib.Nifti1Image(array, None)
        header = img.header
        header.set_data_dtype(array.dtype)
        space, time = nifti.get("xyzt_units", ["mm", "sec"])
        header.set_xyzt_units(space if space != "unknown" else "mm", time)
        intent = nifti.get("intent")
        if intent and intent[0] != "none" and array.dtype.name == nifti.get("dtype"):
            try:  # the image itself written back: keep what its values mean
                header.set_intent(intent[0], tuple(intent[1]), name=intent[2])
            except Exception:  # an intent this header cannot take: drop it, not the file
                header.set_intent("none")
        if nifti.get("descrip"):
            header["descrip"] = nifti["descrip"][:79].encode("latin-1", "replace")
        sform_code = int(nifti.get("sform_code", 0))
        qform_code = int(nifti.get("qform_code", 0))
        stored_sform, stored_qform = nifti.get("sform"), nifti.get("qform")
        source = stored_sform if sform_code and stored_sform is not None else None
        if source is None and qform_code and stored_qform is not None:
            source = stored_qform
        restore = source is not None and bool(np.allclose(source, affine, atol=1e-5))
        if restore:
            # The source's grid: restore both matrices and codes exactly as it had them.
            sform = affine if stored_sform is None else np.asarray(stored_sform)
            qform = affine if stored_qform is None else np.asarray(stored_qform)
        else:
            # A new grid, or a source without coded geometry: code both, so readers agree.
            sform, qform = affine, affine
            sform_code, qform_code = sform_code or 2, qform_code or 1
        img.set_sform(sform, code=sform_code)
        img.set_qform(qform, code=qform_code)
        if restore and nifti.get("quatern") and nifti.get("pixdim"):
            names = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")
            for key, value in zip(names, nifti["quatern"], strict=True):
                header[key] = value
            pixdim = header["pixdim"]
            pixdim[:4] = nifti["pixdim"][:4]  # qfac and the voxel sizes
            header["pixdim"] = pixdim
        header.set_slope_inter(1.0, 0.0)
        with miscore.atomic_output(path) as temp:
            try:
                nib.save(img, str(temp))
            except Exception as exc:
                raise miscore.PipelineError(
                    f"{path}: writing NIfTI failed: {type(exc).__name__}: {exc}"
                ) from exc
        return path


def _writable_array(volume: Volume) -> npt.NDArray[Any]:
    """The array in a dtype NIfTI stores; one-channel non-negative integer maps (labels,
    predictions) in the smallest unsigned type that holds them unless the volume keeps the
    dtype it was read with."""
    array = volume.array
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype.kind in "iu":
        source = volume.meta.get("dtype")
        if volume.channels == 1 and source != array.dtype.name and array.size:
            low, high = int(array.min()), int(array.max())
            if low >= 0:
                return array.astype(_label_dtype(high), copy=False)
        return array
    if array.dtype.name in _WRITABLE:
        return array
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    raise InputError(f"NIfTI cannot store arrays of dtype {array.dtype}")


def _label_dtype(high: int) -> np.dtype[Any]:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if high <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


@miscore.hookimpl
def miscore_register_io() -> list[type[ImageIO]]:
    return [NiftiIO]
