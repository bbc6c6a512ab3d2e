"""Writing: a Volume as a DICOM CT series folder, and predictions as NIfTI with DICOM geometry."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import miscore
from miscore_dicom.series import LPS_TO_RAS

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_nifti(volume: miscore.Volume, path: Path) -> Path:
    """Write ``volume`` as NIfTI (``.nii`` or ``.nii.gz``) with its RAS+ affine, atomically."""
    import nibabel as nib

    array = volume.array[..., 0] if volume.channels == 1 else volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    image = nib.Nifti1Image(np.asarray(array), volume.affine)  # type: ignore[no-untyped-call]
    image.set_qform(volume.affine, code=1)  # type: ignore[no-untyped-call]
    image.set_sform(volume.affine, code=1)  # type: ignore[no-untyped-call]
    image.header.set_xyzt_units("mm")  # type: ignore[no-untyped-call]
    with miscore.atomic_output(path) as temp:
        nib.save(image, temp)
    return path


def _ds_number(value: float) -> str:
    """``value`` as a DICOM decimal string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return str(format_number_as_ds(float(value)))


def quantise(
    array: npt.NDArray[Any],
) -> tuple[npt.NDArray[np.int16], str, str]:
    """Store ``array`` as int16 with a rescale slope and intercept (as DS strings).

    Whole numbers that fit int16 are stored as they are (slope 1, intercept 0); anything else
    is scaled onto the int16 range, with the slope and intercept that the DS strings carry, so
    that reading back loses at most half a slope.
    """
    values = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise miscore.InputError("a DICOM series cannot store NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if np.array_equal(values, np.round(values)) and low >= -32768 and high <= 32767:
        return values.astype(np.int16), "1", "0"
    if np.array_equal(values, np.round(values)) and high - low <= 65535:
        intercept_s = _ds_number(low + 32768)
        intercept = float(intercept_s)
        stored = np.round(values - intercept)
        if stored.min() >= -32768 and stored.max() <= 32767:
            return stored.astype(np.int16), "1", intercept_s
    slope_s = _ds_number(max((high - low) / 65534.0, 1e-12))
    slope = float(slope_s)
    intercept_s = _ds_number(low + 32767 * slope)
    intercept = float(intercept_s)
    stored = np.clip(np.round((values - intercept) / slope), -32768, 32767)
    return stored.astype(np.int16), slope_s, intercept_s


def _uid(seed: str, role: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[seed, role]))


def _content_seed(volume: miscore.Volume, name: str) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(volume.array).tobytes())
    digest.update(np.ascontiguousarray(volume.affine).tobytes())
    digest.update(name.encode())
    return digest.hexdigest()


def slice_geometry(
    affine_ras: npt.NDArray[np.float64], source: Path
) -> tuple[list[float], list[float], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """ImageOrientationPatient, PixelSpacing, first position and slice step (LPS) of an affine."""
    lps = LPS_TO_RAS @ affine_ras
    col_i, col_j = lps[:3, 0], lps[:3, 1]
    spacing_i, spacing_j = float(np.linalg.norm(col_i)), float(np.linalg.norm(col_j))
    row_cos, col_cos = col_i / spacing_i, col_j / spacing_j
    if abs(float(row_cos @ col_cos)) > 1e-4:
        raise miscore.InputError(
            f"{source}: the volume's first two axes are not orthogonal; DICOM slices need a "
            f"rectangular pixel grid (resample first)"
        )
    orientation = [float(v) for v in (*row_cos, *col_cos)]
    return orientation, [spacing_j, spacing_i], lps[:3, 3].copy(), lps[:3, 2].copy()


def write_ct_series(
    volume: miscore.Volume,
    folder: Path,
    patient_id: str | None = None,
    description: str = "miscore synthetic",
) -> Path:
    """Write a one-channel Volume as a CT image series: one file per slice, atomically.

    UIDs are derived from the content (array, affine, folder name), so the same volume gives
    the same files. Values are stored as int16 with RescaleSlope/RescaleIntercept.
    """
    if volume.channels != 1:
        raise miscore.InputError(
            f"{folder}: a DICOM CT series holds one channel; the volume has {volume.channels}"
        )
    array = volume.array[..., 0]
    if volume.ndim == 2:
        array = array[:, :, None]
    orientation, pixel_spacing, origin, step = slice_geometry(volume.affine, folder)
    stored, slope, intercept = quantise(array)
    seed = _content_seed(volume, folder.name)
    normal = np.cross(orientation[:3], orientation[3:])
    thickness = abs(float(step @ normal)) if volume.ndim == 3 else 1.0
    columns, rows, slices = stored.shape
    patient = patient_id or str(volume.meta.get("patient_id") or folder.name)
    series = {
        "StudyInstanceUID": str(volume.meta.get("study_instance_uid") or _uid(seed, "study")),
        "SeriesInstanceUID": _uid(seed, "series"),
        "FrameOfReferenceUID": _uid(seed, "frame-of-reference"),
        **_ct_series_attributes(patient, description),
        "ImageOrientationPatient": [_ds_number(v) for v in orientation],
        "PixelSpacing": [_ds_number(v) for v in pixel_spacing],
        "SliceThickness": _ds_number(thickness),
        "SpacingBetweenSlices": _ds_number(thickness),
        "Rows": rows,
        "Columns": columns,
        "RescaleSlope": slope,
        "RescaleIntercept": intercept,
        "RescaleType": "HU" if slope == "1" else "US",
    }
    digits = max(4, len(str(slices)))
    with miscore.atomic_output(folder) as temp:
        temp.mkdir()
        for k in range(slices):
            ds = _ct_slice(series, _uid(seed, f"slice-{k}"), k, origin + k * step, stored[:, :, k])
            ds.save_as(temp / f"slice_{k:0{digits}d}.dcm", enforce_file_format=True)
    return folder


def _ct_series_attributes(patient: str, description: str) -> dict[str, Any]:
    """The attributes every slice of a written CT series shares, besides UIDs and geometry:
    patient and study (type 2 ones empty), series, and the int16 pixel format."""
    return {
        "SOPClassUID": CT_IMAGE_STORAGE,
        "Modality": "CT",
        "PatientName": patient,
        "PatientID": patient,
        "PatientBirthDate": "",
        "PatientSex": "",
        "StudyDate": "",
        "StudyTime": "",
        "StudyID": "1",
        "AccessionNumber": "",
        "ReferringPhysicianName": "",
        "SeriesNumber": 1,
        "SeriesDescription": description,
        "Manufacturer": "miscore",
        "ImageType": ["DERIVED", "SECONDARY", "AXIAL"],
        "PositionReferenceIndicator": "",
        "KVP": "",
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": 1,
    }


def _ct_slice(
    series: dict[str, Any],
    sop_uid: str,
    k: int,
    position: npt.NDArray[np.float64],
    pixels: npt.NDArray[np.int16],
) -> Any:
    """Slice ``k`` of a CT series as a pydicom ``Dataset`` with its file meta."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPInstanceUID = sop_uid
    for keyword, value in series.items():
        setattr(ds, keyword, value)
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds_number(v) for v in position]
    ds.PixelData = np.ascontiguousarray(pixels.T).astype("<i2").tobytes()
    return ds
