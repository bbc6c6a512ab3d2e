"""Build small DICOM series, enhanced multi-frame files and RTSTRUCTs on disk for the tests.

Written with pydicom directly (not with the plugin's writer), so the reader is checked against
files it did not make. Geometry is given in DICOM's LPS world.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class SeriesSpec:
    """Geometry and identity of a test series (LPS)."""

    shape: tuple[int, int, int] = (12, 10, 6)  # (columns i, rows j, slices k)
    row_cosine: tuple[float, float, float] = (1.0, 0.0, 0.0)
    column_cosine: tuple[float, float, float] = (0.0, 1.0, 0.0)
    pixel_spacing: tuple[float, float] = (0.7, 0.9)  # (between rows, between columns)
    slice_step: float = 2.5
    origin: tuple[float, float, float] = (-40.0, -30.0, 12.0)
    series_uid: str = field(default_factory=lambda: str(generate_uid()))
    study_uid: str = field(default_factory=lambda: str(generate_uid()))
    frame_uid: str = field(default_factory=lambda: str(generate_uid()))
    description: str = "test series"

    @property
    def normal(self) -> npt.NDArray[np.float64]:
        return np.cross(self.row_cosine, self.column_cosine)

    def affine_lps(self) -> npt.NDArray[np.float64]:
        affine = np.eye(4)
        affine[:3, 0] = np.asarray(self.row_cosine) * self.pixel_spacing[1]
        affine[:3, 1] = np.asarray(self.column_cosine) * self.pixel_spacing[0]
        affine[:3, 2] = self.normal * self.slice_step
        affine[:3, 3] = self.origin
        return affine

    def affine_ras(self) -> npt.NDArray[np.float64]:
        return LPS_TO_RAS @ self.affine_lps()

    def position(self, k: float) -> npt.NDArray[np.float64]:
        return np.asarray(self.origin) + k * self.slice_step * self.normal


Cosines = tuple[float, float, float]


def oblique_cosines(degrees: float = 20.0) -> tuple[Cosines, Cosines]:
    """Row and column direction cosines rotated about two axes."""
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rotation = rx @ rz
    row = rotation[:, 0]
    column = rotation[:, 1]
    return (float(row[0]), float(row[1]), float(row[2])), (
        float(column[0]),
        float(column[1]),
        float(column[2]),
    )


def stored_values(shape: Sequence[int], seed: int = 0) -> npt.NDArray[np.int16]:
    """Stored int16 values that differ in every voxel, so any reordering shows."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 3000, size=tuple(shape)).astype(np.int16)


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _identity(ds: Dataset, spec: SeriesSpec, modality: str = "CT") -> None:
    ds.PatientID = "P001"
    ds.PatientName = "Test^Patient"
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.FrameOfReferenceUID = spec.frame_uid
    ds.Modality = modality
    ds.SeriesDescription = spec.description
    ds.SeriesNumber = 1


def _pixel_module(ds: Dataset, rows: int, columns: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1


def slice_dataset(
    spec: SeriesSpec,
    plane: npt.NDArray[np.int16],
    position: npt.ArrayLike,
    instance: int,
    slope: float = 1.0,
    intercept: float = -1024.0,
    orientation: Sequence[float] | None = None,
) -> Dataset:
    """One CT slice; ``plane`` is ``(i, j)`` = (columns, rows)."""
    sop_uid = str(generate_uid())
    ds = Dataset()
    ds.file_meta = _file_meta(CT_STORAGE, sop_uid)
    ds.SOPClassUID = CT_STORAGE
    ds.SOPInstanceUID = sop_uid
    _identity(ds, spec)
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(position, dtype=float)]
    ds.ImageOrientationPatient = [
        f"{v:.8f}" for v in (orientation or (*spec.row_cosine, *spec.column_cosine))
    ]
    ds.PixelSpacing = [f"{v:.6f}" for v in spec.pixel_spacing]
    ds.SliceThickness = f"{spec.slice_step:.6f}"
    ds.RescaleSlope = f"{slope:.6f}"
    ds.RescaleIntercept = f"{intercept:.6f}"
    _pixel_module(ds, plane.shape[1], plane.shape[0])
    ds.PixelData = np.ascontiguousarray(plane.T).astype("<i2").tobytes()
    return ds


def write_series(
    folder: Path,
    spec: SeriesSpec,
    stored: npt.NDArray[np.int16],
    rng: np.random.Generator | None = None,
    slopes: Sequence[float] | None = None,
    intercept: float = -1024.0,
    positions: Sequence[npt.ArrayLike] | None = None,
    prefix: str = "",
) -> list[Path]:
    """Write ``stored`` (i, j, k) as single-frame files.

    File names are shuffled (when ``rng`` is given) and InstanceNumber runs against k, so a
    reader that trusts either one gets the order wrong. Returns the paths in k order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    nk = stored.shape[2]
    names = np.arange(nk) if rng is None else rng.permutation(nk)
    paths = []
    for k in range(nk):
        position = positions[k] if positions is not None else spec.position(k)
        ds = slice_dataset(
            spec,
            stored[:, :, k],
            position,
            instance=nk - k,
            slope=1.0 if slopes is None else slopes[k],
            intercept=intercept,
        )
        path = folder / f"{prefix}IM{int(names[k]):04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced(
    path: Path,
    spec: SeriesSpec,
    stored: npt.NDArray[np.int16],
    frame_order: Sequence[int],
    slopes: Sequence[float],
    intercept: float = -1024.0,
) -> Path:
    """An enhanced CT file whose frame ``f`` is slice ``frame_order[f]`` (per-frame groups)."""
    sop_uid = str(generate_uid())
    ds = Dataset()
    ds.file_meta = _file_meta(ENHANCED_CT_STORAGE, sop_uid)
    ds.SOPClassUID = ENHANCED_CT_STORAGE
    ds.SOPInstanceUID = sop_uid
    _identity(ds, spec)
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(frame_order)
    _pixel_module(ds, stored.shape[1], stored.shape[0])
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [
        f"{v:.8f}" for v in (*spec.row_cosine, *spec.column_cosine)
    ]
    measures = Dataset()
    measures.PixelSpacing = [f"{v:.6f}" for v in spec.pixel_spacing]
    measures.SliceThickness = f"{spec.slice_step:.6f}"
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for f, k in enumerate(frame_order):
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [f"{v:.6f}" for v in spec.position(k)]
        item.PlanePositionSequence = DicomSequence([position])
        transform = Dataset()
        transform.RescaleSlope = f"{slopes[f]:.6f}"
        transform.RescaleIntercept = f"{intercept:.6f}"
        transform.RescaleType = "HU"
        item.PixelValueTransformationSequence = DicomSequence([transform])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    frames = np.stack([stored[:, :, k].T for k in frame_order])
    ds.PixelData = np.ascontiguousarray(frames).astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_rtstruct(
    path: Path,
    spec: SeriesSpec,
    rois: Mapping[str, Sequence[npt.NDArray[np.float64]]],
    frame_uid: str | None = None,
) -> Path:
    """An RTSTRUCT with one CLOSED_PLANAR contour per array of LPS points ``(n, 3)``."""
    sop_uid = str(generate_uid())
    ds = Dataset()
    ds.file_meta = _file_meta(RTSTRUCT_STORAGE, sop_uid)
    ds.SOPClassUID = RTSTRUCT_STORAGE
    ds.SOPInstanceUID = sop_uid
    _identity(ds, spec, modality="RTSTRUCT")
    ds.SeriesInstanceUID = str(generate_uid())
    ds.StructureSetLabel = "test"
    roi_items, contour_items = [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ROIName = name
        roi.ReferencedFrameOfReferenceUID = frame_uid or spec.frame_uid
        roi_items.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        items = []
        for points in contours:
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [f"{v:.6f}" for v in np.asarray(points).ravel()]
            items.append(contour)
        roi_contour.ContourSequence = DicomSequence(items)
        contour_items.append(roi_contour)
    ds.StructureSetROISequence = DicomSequence(roi_items)
    ds.ROIContourSequence = DicomSequence(contour_items)
    ds.save_as(path, enforce_file_format=True)
    return path


def index_to_lps(spec: SeriesSpec, ijk: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Continuous voxel indices ``(n, 3)`` -> LPS points."""
    homogeneous = np.column_stack([ijk, np.ones(len(ijk))])
    return (spec.affine_lps() @ homogeneous.T).T[:, :3]


def rectangle(i0: float, i1: float, j0: float, j1: float, k: int) -> npt.NDArray[np.float64]:
    """A rectangle's corners in voxel index space on slice ``k``."""
    return np.array([[i0, j0, k], [i1, j0, k], [i1, j1, k], [i0, j1, k]], dtype=np.float64)
