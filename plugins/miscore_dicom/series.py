"""Read a DICOM series (a folder) or one DICOM file into a Volume, exactly.

Slices are ordered by ImagePositionPatient projected on the slice normal (never by
InstanceNumber or file name), rescale slope/intercept are applied, and the geometry is checked
(missing slices, uneven spacing, duplicates, mixed orientation or size) before any pixel is read.

Array axes are (column index i, row index j, slice k): axis i follows the row direction cosine
of ImageOrientationPatient (scaled by PixelSpacing[1]), axis j the column direction cosine
(PixelSpacing[0]), axis k the step between consecutive slice positions. DICOM's LPS world is
converted to RAS+ by negating the first two rows of the affine.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

import miscore

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: LPS <-> RAS: negate x and y (its own inverse)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: SOP classes and modalities that are never an image series
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG"})
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

#: how many files of a folder ``looks_like_dicom_folder`` opens at most
PROBE_FILES = 16
#: values larger than this are read only when used: headers are parsed once, pixels later
DEFER_BYTES = 4096
#: DICOM file suffixes: such a file is DICOM even without the preamble (an error if unreadable)
DICOM_SUFFIXES = (".dcm", ".dicom")


@functools.cache
def unreadable_file_errors() -> tuple[type[Exception], ...]:
    """What ``pydicom.dcmread`` raises for bytes that are not a well-formed DICOM file.

    No preamble (InvalidDicomError); a garbled VR (NotImplementedError); a value whose length
    does not fit its VR (BytesLengthException, struct.error); a file that ends early
    (EOFError, OSError "No tag to read"); a value or tag that does not decode (ValueError,
    OverflowError); a file that cannot be opened (OSError). Only pydicom's parsing of the
    file runs inside ``dcmread``, so each of them is about the file.
    """
    from pydicom.errors import BytesLengthException, InvalidDicomError

    return (
        InvalidDicomError,
        BytesLengthException,
        NotImplementedError,
        struct.error,
        EOFError,
        OSError,
        ValueError,
        OverflowError,
    )


@functools.cache
def element_decode_errors() -> tuple[type[Exception], ...]:
    """What pydicom raises when a damaged element is first used (values are decoded lazily).

    A garbled VR (NotImplementedError "Unknown Value Representation"), a value whose length
    does not fit its VR (BytesLengthException, struct.error), a value cut off by the end of
    the file (EOFError). miscore's own code raises none of them, so the reader reports them
    as damaged data; anything else it lets through as a bug.
    """
    from pydicom.errors import BytesLengthException

    return (BytesLengthException, NotImplementedError, struct.error, EOFError)


# --- finding files ----------------------------------------------------------------------


def has_dicom_preamble(path: Path) -> bool:
    """True when ``path`` is a file with the 128-byte preamble followed by ``DICM``."""
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def starts_like_dataset(path: Path) -> bool:
    """True when a file begins like a DICOM data set written without the preamble (cheap:
    8 bytes): its first tag is in the file meta group (0002) or the identifying group (0008),
    and the first value fits in the file (an explicit VR, or an implicit length)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return False
    if len(head) < 8:
        return False
    order: Literal["little", "big"] = "little"
    if int.from_bytes(head[:2], "little") not in (0x0002, 0x0008):
        if int.from_bytes(head[:2], "big") != 0x0008:
            return False
        order = "big"
    if head[4:6].isalpha() and head[4:6].isupper():  # explicit VR: its letters
        return True
    return int.from_bytes(head[4:8], order) <= size - 8


def has_dicom_suffix(path: Path) -> bool:
    return path.name.lower().endswith(DICOM_SUFFIXES)


def is_headless_dicom(path: Path) -> bool:
    """True for a file without the preamble that parses to a DICOM data set (a SOPClassUID)."""
    return starts_like_dataset(path) and _read_without_preamble(path, True, None) is not None


def is_dicom_file(path: Path) -> bool:
    """The preamble, a ``.dcm``/``.dicom`` suffix, or a data set without the preamble."""
    return has_dicom_preamble(path) or has_dicom_suffix(path) or is_headless_dicom(path)


def folder_entries(folder: Path) -> list[Path]:
    """The visible files directly inside ``folder``, sorted by name (DICOMDIR excluded)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    )


def looks_like_dicom_folder(folder: Path) -> bool:
    """True when one of the first files of ``folder`` is a DICOM file (cheap: the preamble,
    or the first 8 bytes and then the header of a file without it)."""
    try:
        entries = folder_entries(folder)
    except OSError:
        return False
    probed = entries[:PROBE_FILES]
    return any(has_dicom_preamble(p) for p in probed) or any(is_headless_dicom(p) for p in probed)


def _dcmread(path: Path, stop_before_pixels: bool, defer_size: int | None = None) -> Dataset:
    """Read a DICOM file; files without the preamble (older exports) are read when they
    parse to a dataset with a SOPClassUID."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    options: dict[str, Any] = {"stop_before_pixels": stop_before_pixels, "defer_size": defer_size}
    try:
        return pydicom.dcmread(path, **options)
    except InvalidDicomError as exc:
        cause: Exception = exc
    except unreadable_file_errors() as exc:
        raise miscore.InputError(f"{path}: not a readable DICOM file ({exc})") from exc
    ds = _read_without_preamble(path, stop_before_pixels, defer_size)
    if ds is None:
        raise miscore.InputError(f"{path}: not a readable DICOM file ({cause})") from cause
    return ds


def _read_without_preamble(
    path: Path, stop_before_pixels: bool, defer_size: int | None
) -> Dataset | None:
    """A file without the preamble read as a data set, or None when it does not parse to one
    with a SOPClassUID (a forced read accepts almost any bytes; every stored DICOM object has
    one). Without file meta, the transfer syntax is the encoding pydicom read it in."""
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(
            path, force=True, stop_before_pixels=stop_before_pixels, defer_size=defer_size
        )
        if "SOPClassUID" not in ds or not str(ds.SOPClassUID):
            return None
    except unreadable_file_errors():
        return None
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        if implicit is not None and little is not None:
            meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian
                if implicit
                else ExplicitVRLittleEndian
                if little
                else ExplicitVRBigEndian
            )
    return ds


def read_header(path: Path) -> Dataset:
    """The header of one DICOM file, without its pixel data."""
    return _dcmread(path, stop_before_pixels=True)


def read_deferred(path: Path) -> Dataset:
    """One DICOM file whose large values (the pixel data) are read from disk when used."""
    return _dcmread(path, stop_before_pixels=False, defer_size=DEFER_BYTES)


def read_dataset(path: Path) -> Dataset:
    """One DICOM file with its pixel data."""
    return _dcmread(path, stop_before_pixels=False)


# --- series in a folder -----------------------------------------------------------------


@dataclass
class SeriesGroup:
    """The files of one SeriesInstanceUID in a folder."""

    uid: str
    description: str
    modality: str
    headers: list[tuple[Path, Dataset]]

    @property
    def size(self) -> int:
        """Number of image frames (files, or frames of a multi-frame file)."""
        total = 0
        for _, ds in self.headers:
            total += _number_of_frames(ds)
        return total

    def summary(self) -> dict[str, Any]:
        return {
            "series_uid": self.uid,
            "description": self.description,
            "modality": self.modality,
            "files": len(self.headers),
            "frames": self.size,
        }


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _is_image(ds: Dataset) -> bool:
    modality = str(ds.get("Modality", "")).upper()
    sop_class = str(ds.get("SOPClassUID", ""))
    if modality in NON_IMAGE_MODALITIES or sop_class in (SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS):
        return False
    return "Rows" in ds and "Columns" in ds


def scan_folder(folder: Path) -> list[SeriesGroup]:
    """Group the DICOM image files of ``folder`` by SeriesInstanceUID, largest first."""
    groups: dict[str, SeriesGroup] = {}
    found_dicom = False
    for path in folder_entries(folder):
        if has_dicom_preamble(path) or has_dicom_suffix(path):
            ds = read_deferred(path)  # meant to be DICOM: unreadable is an error
        elif starts_like_dataset(path):
            headless = _read_without_preamble(path, False, DEFER_BYTES)
            if headless is None:  # not DICOM after all: skipped like a README
                continue
            ds = headless
        else:
            continue
        found_dicom = True
        if not _is_image(ds):
            continue
        uid = str(ds.get("SeriesInstanceUID", "")) or "(no SeriesInstanceUID)"
        group = groups.setdefault(
            uid,
            SeriesGroup(
                uid,
                str(ds.get("SeriesDescription", "")),
                str(ds.get("Modality", "")),
                [],
            ),
        )
        group.headers.append((path, ds))
    if not groups:
        what = "no DICOM image files" if found_dicom else "no DICOM files"
        raise miscore.InputError(
            f"{folder}: {what} found; give a folder holding one DICOM image series"
        )
    return sorted(groups.values(), key=lambda g: (-g.size, g.uid))


def choose_series(
    folder: Path,
    groups: Sequence[SeriesGroup],
    series_uid: str | None,
    series_description: str | None,
) -> SeriesGroup:
    """Pick the series by UID, else by description, else the largest."""
    if series_uid is not None:
        for group in groups:
            if group.uid == series_uid:
                return group
        available = ", ".join(f"{g.uid} ({g.description or 'no description'})" for g in groups)
        raise miscore.InputError(
            f"{folder}: no series with SeriesInstanceUID {series_uid}; available: {available}"
        )
    if series_description is not None:
        wanted = series_description.strip().lower()
        matches = [g for g in groups if g.description.strip().lower() == wanted]
        if not matches:
            available = ", ".join(repr(g.description) for g in groups)
            raise miscore.InputError(
                f"{folder}: no series with SeriesDescription {series_description!r}; "
                f"available: {available}"
            )
        return matches[0]
    return groups[0]


# --- frames and geometry ----------------------------------------------------------------


@dataclass
class Frame:
    """One 2D image of the series: a single-frame file or one frame of a multi-frame file."""

    path: Path
    index: int | None  # frame index (0-based) inside a multi-frame file
    sop_uid: str
    position: npt.NDArray[np.float64]  # ImagePositionPatient, LPS mm
    orientation: npt.NDArray[np.float64]  # ImageOrientationPatient (row cosines, col cosines)
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    rows: int
    columns: int
    slope: float
    intercept: float


def _floats(value: Any, n: int, what: str, source: Path) -> npt.NDArray[np.float64]:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise miscore.InputError(f"{source}: {what} is not numeric ({value!r})") from exc
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise miscore.InputError(f"{source}: {what} must hold {n} numbers; got {value!r}")
    return out


def _rescale(item: Any, source: Path) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept of a dataset or functional group item (1 and 0 when
    absent)."""
    if item is None:
        return 1.0, 0.0
    return (
        _one_number(item.get("RescaleSlope", None), 1.0, "RescaleSlope", source),
        _one_number(item.get("RescaleIntercept", None), 0.0, "RescaleIntercept", source),
    )


def _one_number(value: Any, default: float, what: str, source: Path) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):  # a multi-valued or non-numeric string
        number = float("nan")
    if not np.isfinite(number):
        raise miscore.InputError(f"{source}: {what} {value!r} is not one number")
    return number


def _pixel_spacing(ds: Any, source: Path) -> tuple[float, float]:
    value = ds.get("PixelSpacing", None) or ds.get("ImagerPixelSpacing", None)
    if value is None:
        raise miscore.InputError(f"{source}: no PixelSpacing: cannot tell the voxel size")
    spacing = _floats(value, 2, "PixelSpacing", source)
    if np.any(spacing <= 0):
        raise miscore.InputError(f"{source}: PixelSpacing must be positive; got {value!r}")
    return float(spacing[0]), float(spacing[1])


def frames_of_single(path: Path, ds: Dataset) -> Frame:
    """The one frame of a classic single-frame image file."""
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        raise miscore.InputError(
            f"{path}: no ImagePositionPatient/ImageOrientationPatient: the slice cannot be placed "
            f"in a volume"
        )
    slope, intercept = _rescale(ds, path)
    return Frame(
        path=path,
        index=None,
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        position=_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path),
        orientation=_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path),
        pixel_spacing=_pixel_spacing(ds, path),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slope=slope,
        intercept=intercept,
    )


def _functional_item(ds: Dataset, index: int, sequence: str) -> Any:
    """The first item of ``sequence`` for frame ``index``: per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    if per_frame is not None and index < len(per_frame):
        groups = per_frame[index]
        if sequence in groups and len(groups[sequence].value):
            return groups[sequence].value[0]
    shared = ds.get("SharedFunctionalGroupsSequence", None)
    if (
        shared is not None
        and len(shared)
        and sequence in shared[0]
        and len(shared[0][sequence].value)
    ):
        return shared[0][sequence].value[0]
    return None


def frames_of_multiframe(path: Path, ds: Dataset) -> list[Frame]:
    """The frames of an enhanced (functional groups) or RT dose (GridFrameOffsetVector) file."""
    count = _number_of_frames(ds)
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    frames: list[Frame] = []
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        for index in range(count):
            where = f"{path} frame {index + 1}"
            position = _functional_item(ds, index, "PlanePositionSequence")
            orientation = _functional_item(ds, index, "PlaneOrientationSequence")
            measures = _functional_item(ds, index, "PixelMeasuresSequence")
            if position is None or orientation is None or measures is None:
                raise miscore.InputError(
                    f"{where}: no PlanePosition/PlaneOrientation/PixelMeasures functional "
                    f"group: the frame cannot be placed in a volume"
                )
            transform = _functional_item(ds, index, "PixelValueTransformationSequence")
            slope, intercept = _rescale(transform if transform is not None else ds, path)
            frames.append(
                Frame(
                    path=path,
                    index=index,
                    sop_uid=sop_uid,
                    position=_floats(
                        position.get("ImagePositionPatient"), 3, "ImagePositionPatient", path
                    ),
                    orientation=_floats(
                        orientation.get("ImageOrientationPatient"),
                        6,
                        "ImageOrientationPatient",
                        path,
                    ),
                    pixel_spacing=_pixel_spacing(measures, path),
                    rows=int(ds.Rows),
                    columns=int(ds.Columns),
                    slope=slope,
                    intercept=intercept,
                )
            )
        return frames
    if "GridFrameOffsetVector" in ds and "ImagePositionPatient" in ds:
        origin = _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path)
        orientation_v = _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path)
        offsets = _floats(ds.GridFrameOffsetVector, count, "GridFrameOffsetVector", path)
        normal = np.cross(orientation_v[:3], orientation_v[3:])
        # offsets are relative to the first frame when the first is 0 (PS3.3 C.8.8.3.2)
        base = origin if offsets[0] == 0 else origin - offsets[0] * normal
        slope = _one_number(ds.get("DoseGridScaling", None), 1.0, "DoseGridScaling", path) or 1.0
        _, intercept = _rescale(ds, path)
        for index in range(count):
            frames.append(
                Frame(
                    path,
                    index,
                    sop_uid,
                    base + offsets[index] * normal,
                    orientation_v,
                    _pixel_spacing(ds, path),
                    int(ds.Rows),
                    int(ds.Columns),
                    slope,
                    intercept,
                )
            )
        return frames
    raise miscore.InputError(
        f"{path}: a multi-frame file without per-frame positions (functional groups or "
        f"GridFrameOffsetVector): its frames are not slices of a volume"
    )


@dataclass
class Geometry:
    """The sorted frames of a series and the affine that places them (LPS and RAS)."""

    frames: list[Frame]
    affine_lps: npt.NDArray[np.float64]

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """Voxel (i, j, k) -> world RAS+ mm."""
        return LPS_TO_RAS @ self.affine_lps


def _name(frame: Frame) -> str:
    return frame.path.name if frame.index is None else f"{frame.path.name}#{frame.index + 1}"


def sort_and_check(
    source: Path,
    frames: Sequence[Frame],
    tolerance: float,
    single_slice_spacing: float,
) -> Geometry:
    """Order ``frames`` along the slice normal and check they form a regular volume.

    Args:
        source: the folder or file, named in every error.
        frames: the frames of one series, in any order.
        tolerance: allowed deviation of each slice step from the median, as a fraction of it.
        single_slice_spacing: the slice axis length (mm) when there is only one frame.
    """
    first = frames[0]
    _check_same_plane(source, frames)
    row = first.orientation[:3]
    col = first.orientation[3:]
    normal = np.cross(row, col)
    depth = np.array([float(f.position @ normal) for f in frames])
    order = np.argsort(depth, kind="stable")
    ordered = [frames[i] for i in order]
    depth = depth[order]

    affine = np.eye(4)
    affine[:3, 0] = row * first.pixel_spacing[1]
    affine[:3, 1] = col * first.pixel_spacing[0]
    affine[:3, 3] = ordered[0].position
    if len(ordered) == 1:
        affine[:3, 2] = normal * single_slice_spacing
        return Geometry(ordered, affine)
    spacing = _check_slice_steps(source, ordered, depth, tolerance)
    affine[:3, 2] = _step_vector(source, ordered, spacing, tolerance)
    return Geometry(ordered, affine)


def _check_same_plane(source: Path, frames: Sequence[Frame]) -> None:
    """Every frame has the first one's size, orientation and pixel spacing, and that
    orientation is two orthogonal unit vectors."""
    first = frames[0]
    for frame in frames[1:]:
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise miscore.InputError(
                f"{source}: mixed image sizes in one series ({first.rows}x{first.columns} in "
                f"{_name(first)}, {frame.rows}x{frame.columns} in {_name(frame)}); "
                f"choose a single series or remove the odd files"
            )
        if not np.allclose(frame.orientation, first.orientation, atol=1e-4):
            raise miscore.InputError(
                f"{source}: mixed ImageOrientationPatient in one series ({_name(first)} and "
                f"{_name(frame)}); a volume needs parallel slices"
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-6):
            raise miscore.InputError(
                f"{source}: mixed PixelSpacing in one series ({first.pixel_spacing} in "
                f"{_name(first)}, {frame.pixel_spacing} in {_name(frame)})"
            )
    row = first.orientation[:3]
    col = first.orientation[3:]
    if not (
        np.isclose(np.linalg.norm(row), 1, atol=1e-3)
        and np.isclose(np.linalg.norm(col), 1, atol=1e-3)
        and abs(float(row @ col)) < 1e-3
    ):
        raise miscore.InputError(
            f"{source}: ImageOrientationPatient {list(first.orientation)} is not two "
            f"orthogonal unit vectors"
        )


def _check_slice_steps(
    source: Path, ordered: Sequence[Frame], depth: npt.NDArray[np.float64], tolerance: float
) -> float:
    """The median slice spacing, after checking every step: no duplicate positions, no
    missing slices, no uneven spacing beyond ``tolerance``."""
    steps = np.diff(depth)
    for n, step in enumerate(steps):
        if step < 1e-3:
            raise miscore.InputError(
                f"{source}: two slices at the same position ({_name(ordered[n])} and "
                f"{_name(ordered[n + 1])} at {depth[n]:.3f} mm along the normal): "
                f"duplicates or several acquisitions in one series"
            )
    spacing = float(np.median(steps))
    for n, step in enumerate(steps):
        if abs(step - spacing) > tolerance * spacing:
            ratio = step / spacing
            if ratio > 1.5 and abs(ratio - round(ratio)) <= tolerance * round(ratio):
                missing = round(ratio) - 1
                raise miscore.InputError(
                    f"{source}: missing slices: a gap of {step:.3f} mm between "
                    f"{_name(ordered[n])} and {_name(ordered[n + 1])} where the spacing is "
                    f"{spacing:.3f} mm ({missing} slice{'s' if missing > 1 else ''} missing)"
                )
            raise miscore.InputError(
                f"{source}: uneven slice spacing: {step:.3f} mm between {_name(ordered[n])} and "
                f"{_name(ordered[n + 1])} where the median is {spacing:.3f} mm (tolerance "
                f"{tolerance:.0%})"
            )
    return spacing


def _step_vector(
    source: Path, ordered: Sequence[Frame], spacing: float, tolerance: float
) -> npt.NDArray[np.float64]:
    """The exact step from slice to slice (equal to normal * spacing unless the gantry was
    tilted, which shears it), after checking every slice lies on that line."""
    step_vector: npt.NDArray[np.float64] = (ordered[-1].position - ordered[0].position) / (
        len(ordered) - 1
    )
    positions = np.stack([f.position for f in ordered])
    expected = ordered[0].position + np.arange(len(ordered))[:, None] * step_vector
    off_line = float(np.max(np.linalg.norm(positions - expected, axis=1)))
    if off_line > tolerance * spacing:
        raise miscore.InputError(
            f"{source}: slice positions do not lie on one line (a slice is {off_line:.3f} mm off); "
            f"several stacks in one series are not supported"
        )
    return step_vector


# --- pixels -----------------------------------------------------------------------------


def _raw_pixels(ds: Dataset, path: Path) -> npt.NDArray[Any]:
    """The stored values (no rescale) of a dataset: (frames, rows, cols[, samples])."""
    present = [k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds]
    if not present:
        raise miscore.InputError(f"{path}: no pixel data in this DICOM file")
    _load_deferred(ds, present, path)
    array = _uncompressed_pixels(ds)
    if array is None:
        array = _decoded_pixels(ds, path)
    return _with_frame_axis(array, ds)


def _load_deferred(ds: Dataset, keywords: Sequence[str], path: Path) -> None:
    """Read the pixel data whose reading was deferred when the header was parsed."""
    try:
        for keyword in keywords:
            ds[keyword]  # item access reads a deferred value from the file
    except (OSError, EOFError, ValueError, struct.error) as exc:
        # pydicom re-opens the file: it is gone (OSError), changed since the header was read
        # (ValueError "Deferred read -- original file has been modified") or cut short
        raise miscore.InputError(f"{path}: cannot read its pixel data ({exc})") from exc


def _decoded_pixels(ds: Dataset, path: Path) -> npt.NDArray[Any]:
    """pydicom's ``pixel_array``; SimpleITK (GDCM) when pydicom cannot decode the syntax."""
    try:
        return np.asarray(ds.pixel_array)
    except (NotImplementedError, RuntimeError) as exc:
        # NotImplementedError: pydicom has no decoder for this transfer syntax; RuntimeError:
        # its decoders for it are not installed, or all of them failed (12-bit JPEG in Pillow)
        return _raw_pixels_gdcm(ds, path, exc)
    except (AttributeError, ValueError) as exc:
        # pydicom's checks of the pixel module: a required element missing (AttributeError
        # "Missing required element") or invalid, or fewer bytes than Rows x Columns need
        raise miscore.InputError(f"{path}: damaged pixel data ({exc})") from exc


def _uncompressed_pixels(ds: Dataset) -> npt.NDArray[Any] | None:
    """Little-endian uncompressed grey values straight from the buffer, or None.

    About 5x faster than ``pixel_array``'s general path for a 256x256 slice; does what it does
    for these syntaxes: take BitsStored of BitsAllocated bits (masked, sign-extended).
    """
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) or "PixelData" not in ds:
        return None
    try:
        allocated = int(ds.BitsAllocated)
        stored = int(ds.get("BitsStored", allocated) or allocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        rows, columns, frames = int(ds.Rows), int(ds.Columns), _number_of_frames(ds)
    except (AttributeError, TypeError, ValueError):
        return None
    if allocated not in (8, 16, 32) or samples != 1 or not 0 < stored <= allocated:
        return None
    count = rows * columns * frames
    data = ds.PixelData
    if len(data) < count * allocated // 8:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    array = np.frombuffer(data, dtype=dtype, count=count).reshape(frames, rows, columns)
    if stored < allocated:
        shift = allocated - stored
        array = (array << shift) >> shift if signed else array & ((1 << stored) - 1)
    return array


def _with_frame_axis(array: npt.NDArray[Any], ds: Dataset) -> npt.NDArray[Any]:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frame_ndim = 2 if samples == 1 else 3
    if array.ndim == frame_ndim:
        array = array[None]
    return array


def _raw_pixels_gdcm(ds: Dataset, path: Path, cause: Exception) -> npt.NDArray[Any]:
    """Decode with SimpleITK (GDCM) when pydicom has no handler; undo GDCM's rescale."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise miscore.InputError(
            f"{path}: cannot decode its pixel data (transfer syntax {syntax}): {cause}"
        ) from exc
    values = sitk.GetArrayFromImage(image)
    slope, intercept = _rescale(ds, path)
    if (slope, intercept) != (1.0, 0.0):
        values = np.round((values.astype(np.float64) - intercept) / slope)
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        values = values.astype(np.int32 if signed else np.uint32)
    return np.asarray(values)


def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def output_dtype(frames: Sequence[Frame], ds: Dataset, raw_dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype of the rescaled values: the stored type, an integer type, or float32."""
    slopes = {f.slope for f in frames}
    intercepts = {f.intercept for f in frames}
    if raw_dtype.kind == "f":
        return np.dtype(np.float32)
    if slopes == {1.0} and intercepts == {0.0}:
        return raw_dtype
    if len(slopes) == 1 and len(intercepts) == 1:
        slope, intercept = next(iter(slopes)), next(iter(intercepts))
        if slope == round(slope) and intercept == round(intercept):
            low, high = _stored_range(ds)
            ends = (low * slope + intercept, high * slope + intercept)
            for candidate in (np.int16, np.int32):
                info = np.iinfo(candidate)
                if info.min <= min(ends) and max(ends) <= info.max:
                    return np.dtype(candidate)
    return np.dtype(np.float32)


def read_pixels(
    geometry: Geometry, datasets: Mapping[Path, Dataset]
) -> tuple[npt.NDArray[Any], dict[str, Any]]:
    """The ``(i, j, k, C)`` array of the sorted frames, rescaled; plus facts for meta.

    ``datasets`` are the files' deferred-read datasets: their pixel data is read here, once.
    """
    frames = geometry.frames
    cache: dict[Path, tuple[Dataset, npt.NDArray[Any]]] = {}
    out: npt.NDArray[Any] | None = None
    dtype: np.dtype[Any] | None = None
    for k, frame in enumerate(frames):
        if frame.path not in cache:
            # keep only the current multi-frame file in memory
            cache.clear()
            ds = datasets.get(frame.path) or read_dataset(frame.path)
            cache[frame.path] = (ds, _raw_pixels(ds, frame.path))
            if "PixelData" in ds:
                del ds.PixelData  # keep headers light: the array holds the values now
        ds, raw = cache[frame.path]
        plane = raw[frame.index or 0]
        if plane.shape[:2] != (frame.rows, frame.columns):
            raise miscore.InputError(
                f"{frame.path}: pixel data is {plane.shape[:2]}, but Rows x Columns says "
                f"{frame.rows}x{frame.columns}"
            )
        if out is None:
            dtype = output_dtype(frames, ds, raw.dtype)
            channels = 1 if plane.ndim == 2 else plane.shape[2]
            out = np.empty((frame.columns, frame.rows, len(frames), channels), dtype=dtype)
        assert dtype is not None
        values = plane.reshape(frame.rows, frame.columns, -1).transpose(1, 0, 2)
        if (frame.slope, frame.intercept) != (1.0, 0.0):
            if dtype.kind == "f":
                values = values.astype(np.float64) * frame.slope + frame.intercept
            else:
                values = values.astype(np.int64) * int(frame.slope) + int(frame.intercept)
        out[:, :, k, :] = values.astype(dtype, copy=False)
    assert out is not None and dtype is not None
    slopes = sorted({f.slope for f in frames})
    intercepts = sorted({f.intercept for f in frames})
    facts = {
        "stored_dtype": str(next(iter(cache.values()))[1].dtype) if cache else str(dtype),
        "rescale_slope": slopes[0] if len(slopes) == 1 else slopes,
        "rescale_intercept": intercepts[0] if len(intercepts) == 1 else intercepts,
    }
    return out, facts


# --- whole series -----------------------------------------------------------------------


def _header_facts(ds: Dataset) -> dict[str, Any]:
    def text(keyword: str) -> str:
        value = ds.get(keyword, "")
        return "" if value is None else str(value)

    return {
        "modality": text("Modality"),
        "patient_id": text("PatientID"),
        "study_instance_uid": text("StudyInstanceUID"),
        "series_instance_uid": text("SeriesInstanceUID"),
        "series_description": text("SeriesDescription"),
        "frame_of_reference_uid": text("FrameOfReferenceUID"),
        "sop_class_uid": text("SOPClassUID"),
    }


def _slice_spacing_of_single(ds: Dataset) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword, None)
        try:
            if value not in (None, "") and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            continue
    return 1.0


def read_series(
    path: Path,
    series_uid: str | None = None,
    series_description: str | None = None,
    tolerance: float = 0.01,
) -> miscore.Volume:
    """Read a DICOM series folder or a single DICOM file into a Volume (RAS+, channels last)."""
    if path.is_dir():
        groups = scan_folder(path)
        group = choose_series(path, groups, series_uid, series_description)
        headers = group.headers
        others = [g.summary() for g in groups if g is not group]
    elif path.is_file():
        headers = [(path, read_deferred(path))]
        if not _is_image(headers[0][1]):
            raise miscore.InputError(
                f"{path}: a {headers[0][1].get('Modality', 'non-image')} object, not an image; "
                f"read it as a label with read_label"
            )
        others = []
    else:
        raise miscore.InputError(f"{path}: no such file or folder")

    frames: list[Frame] = []
    multiframe = False
    for file_path, ds in headers:
        if _number_of_frames(ds) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            if len(headers) > 1:
                raise miscore.InputError(
                    f"{path}: series {ds.get('SeriesInstanceUID', '')} mixes a multi-frame file "
                    f"({file_path.name}) with other files; give the multi-frame file itself"
                )
            frames.extend(frames_of_multiframe(file_path, ds))
            multiframe = True
        elif len(headers) == 1 and "ImagePositionPatient" not in ds:
            return _read_flat_image(file_path, ds)
        else:
            frames.append(frames_of_single(file_path, ds))

    first_ds = headers[0][1]
    geometry = sort_and_check(path, frames, tolerance, _slice_spacing_of_single(first_ds))
    array, pixel_facts = read_pixels(geometry, dict(headers))
    meta: dict[str, Any] = {
        "format": "dicom",
        "source": str(path),
        **_header_facts(first_ds),
        "multiframe": multiframe,
        "files": [str(f.path) for f in (geometry.frames[:1] if multiframe else geometry.frames)],
        "sop_instance_uids": [
            f.sop_uid for f in (geometry.frames[:1] if multiframe else geometry.frames)
        ],
        "frame_numbers": [int(f.index or 0) + 1 for f in geometry.frames] if multiframe else [],
        "image_orientation_patient": [float(v) for v in geometry.frames[0].orientation],
        "pixel_spacing": list(geometry.frames[0].pixel_spacing),
        "dtype": str(array.dtype),
        **pixel_facts,
        "other_series": others,
    }
    return miscore.Volume(array, geometry.affine, meta)


def _read_flat_image(path: Path, ds: Dataset) -> miscore.Volume:
    """A single 2D image without patient geometry (X-ray, secondary capture): spacing only."""
    if _number_of_frames(ds) > 1:
        raise miscore.InputError(f"{path}: a multi-frame file without geometry is not a volume")
    ds = read_dataset(path)
    raw = _raw_pixels(ds, path)[0]
    slope, intercept = _rescale(ds, path)
    frame = Frame(
        path,
        None,
        str(ds.get("SOPInstanceUID", "")),
        np.zeros(3),
        np.zeros(6),
        (1.0, 1.0),
        0,
        0,
        slope,
        intercept,
    )
    dtype = output_dtype([frame], ds, raw.dtype)
    values = raw.reshape(raw.shape[0], raw.shape[1], -1).transpose(1, 0, 2)
    if (slope, intercept) != (1.0, 0.0):
        values = values.astype(np.float64) * slope + intercept
    try:
        spacing = _pixel_spacing(ds, path)
    except miscore.InputError:
        spacing = (1.0, 1.0)
    affine = np.diag([spacing[1], spacing[0], 1.0, 1.0])
    meta = {
        "format": "dicom",
        "source": str(path),
        **_header_facts(ds),
        "multiframe": False,
        "files": [str(path)],
        "sop_instance_uids": [str(ds.get("SOPInstanceUID", ""))],
        "frame_numbers": [],
        "geometry": "none: no ImagePositionPatient, only pixel spacing",
        "dtype": str(dtype),
        "other_series": [],
    }
    return miscore.Volume(values.astype(dtype), affine, meta)
