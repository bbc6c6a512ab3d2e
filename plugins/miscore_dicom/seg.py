"""DICOM SEG: read segments onto an image grid as class ids; write a prediction as a SEG.

Reading places every frame by its PlanePositionSequence through the image's inverse affine (and
by ReferencedSOPInstanceUID when a frame has no position); frames that are not on the image
grid are refused rather than resampled. Writing uses highdicom and references the source series
whose files the image's ``meta["files"]`` lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

import miscore
from miscore_dicom.series import LPS_TO_RAS, _functional_item, read_dataset

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: how far (in voxels) a SEG frame may sit from the image grid
GRID_TOLERANCE = 0.05


def segment_labels(ds: Dataset) -> dict[int, str]:
    """SegmentNumber -> SegmentLabel."""
    return {
        int(item.SegmentNumber): str(item.get("SegmentLabel", f"segment {item.SegmentNumber}"))
        for item in ds.get("SegmentSequence", [])
    }


def _segment_classes(
    path: Path, labels: Mapping[int, str], segment_classes: Mapping[str, int] | None
) -> dict[int, int]:
    if segment_classes is None:
        return {number: number for number in labels}
    by_label = {label: number for number, label in labels.items()}
    missing = [name for name in segment_classes if name not in by_label]
    if missing:
        available = ", ".join(repr(n) for n in labels.values())
        raise miscore.InputError(
            f"{path}: no segment labelled {', '.join(repr(m) for m in missing)}; "
            f"available: {available}"
        )
    return {by_label[name]: int(class_id) for name, class_id in segment_classes.items()}


def read_seg(
    path: Path,
    ds: Dataset,
    image: miscore.Volume,
    segment_classes: Mapping[str, int] | None = None,
) -> miscore.Volume:
    """The segments of a SEG object as a label map on ``image``'s grid."""
    from miscore import label_dtype

    if image.ndim != 3:
        raise miscore.InputError(f"{path}: a DICOM SEG needs a 3D image to be placed on")
    image_frame = str(image.meta.get("frame_of_reference_uid", "") or "")
    seg_frame = str(ds.get("FrameOfReferenceUID", "") or "")
    if image_frame and seg_frame and image_frame != seg_frame:
        raise miscore.InputError(
            f"{path}: the SEG is in FrameOfReferenceUID {seg_frame}, the image in {image_frame}; "
            f"it belongs to another scan"
        )
    ni, nj, nk = image.spatial_shape
    if (int(ds.Rows), int(ds.Columns)) != (nj, ni):
        raise miscore.InputError(
            f"{path}: SEG frames are {ds.Rows}x{ds.Columns}, the image slices {nj}x{ni}; "
            f"the SEG is not on this image's grid"
        )
    labels = segment_labels(ds)
    classes = _segment_classes(path, labels, segment_classes)
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    pixels = np.asarray(ds.pixel_array)
    if pixels.ndim == 2:
        pixels = pixels[None]
    if seg_type == "FRACTIONAL":
        pixels = pixels > float(ds.get("MaximumFractionalValue", 255)) / 2
    to_voxel = np.linalg.inv(image.affine) @ LPS_TO_RAS
    sop_uids = [str(u) for u in image.meta.get("sop_instance_uids", [])]
    frame_numbers = [int(n) for n in image.meta.get("frame_numbers", [])]
    top = max(classes.values(), default=0)
    label = np.zeros((ni, nj, nk), dtype=label_dtype(top))
    # paint in segment number order, so a higher segment wins where segments overlap
    placed: list[tuple[int, int, int]] = []  # (segment number, frame, k)
    for f in range(pixels.shape[0]):
        k = _frame_slice(path, ds, f, to_voxel, sop_uids, frame_numbers, nk)
        if k is None:
            continue
        identification = _functional_item(ds, f, "SegmentIdentificationSequence")
        number = int(identification.ReferencedSegmentNumber) if identification else 0
        placed.append((number, f, k))
    for number, f, k in sorted(placed):
        plane = pixels[f].T  # (rows, cols) -> (i, j)
        if seg_type == "LABELMAP":
            for value in np.unique(plane):
                if int(value) in classes:
                    label[:, :, k][plane == value] = classes[int(value)]
        elif number in classes:
            label[:, :, k][plane.astype(bool)] = classes[number]
    meta = {
        "format": "dicom-seg",
        "source": str(path),
        "segments": {labels.get(n, str(n)): c for n, c in classes.items()},
    }
    return miscore.Volume(label[..., None], image.affine.copy(), meta)


def _frame_slice(
    path: Path,
    ds: Dataset,
    f: int,
    to_voxel: npt.NDArray[Any],
    sop_uids: list[str],
    frame_numbers: list[int],
    nk: int,
) -> int | None:
    """The image slice index of SEG frame ``f``, or None when it lies outside the image."""
    position = _functional_item(ds, f, "PlanePositionSequence")
    if position is not None and "ImagePositionPatient" in position:
        point = np.array([float(v) for v in position.ImagePositionPatient] + [1.0])
        i, j, k = (to_voxel @ point)[:3]
        nearest = round(float(k))
        if max(abs(i), abs(j), abs(k - nearest)) > GRID_TOLERANCE:
            raise miscore.InputError(
                f"{path}: SEG frame {f + 1} starts at voxel ({i:.2f}, {j:.2f}, {k:.2f}) of the "
                f"image, not on its grid; readers never resample: resample the SEG first"
            )
        return nearest if 0 <= nearest < nk else None
    derivation = _functional_item(ds, f, "DerivationImageSequence")
    if derivation is not None:
        for source in derivation.get("SourceImageSequence", []):
            uid = str(source.get("ReferencedSOPInstanceUID", ""))
            if frame_numbers and "ReferencedFrameNumber" in source:
                number = int(source.ReferencedFrameNumber)
                if number in frame_numbers:
                    return frame_numbers.index(number)
            elif uid in sop_uids:
                return sop_uids.index(uid)
    raise miscore.InputError(
        f"{path}: SEG frame {f + 1} has neither a position nor a reference to a slice of the image"
    )


#: patient/study attributes a SEG copies from its source; anonymised series often drop them
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
)


def _with_type2_attributes(ds: Dataset) -> Dataset:
    """``ds`` with the attributes highdicom copies set (empty when absent), in memory only."""
    for keyword in TYPE2_COPIED:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def write_seg(
    volume: miscore.Volume,
    path: Path,
    reference: miscore.Volume,
    segment_labels: Mapping[int, str] | None = None,
) -> Path:
    """Write a label Volume as a DICOM SEG referencing the series ``reference`` was read from."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    files, values = _seg_inputs(volume, path, reference)
    top = int(values.max()) if values.size else 0
    n_segments = max(top, 1)
    dtype = np.uint8 if n_segments < 256 else np.uint16
    frames = values.astype(dtype).transpose(2, 1, 0)  # (k, j, i) = (frames, rows, cols)
    sources = [_with_type2_attributes(read_dataset(p)) for p in files]
    if reference.meta.get("multiframe"):
        # highdicom wants the frames of a multi-frame source in the file's own frame order
        order = [int(n) - 1 for n in reference.meta.get("frame_numbers", [])]
        in_file_order = np.zeros_like(frames)
        in_file_order[order] = frames
        frames = in_file_order
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(n_segments, segment_labels),
            series_instance_uid=generate_uid(),
            series_number=900,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="miscore",
            manufacturer_model_name="miscore",
            software_versions=miscore.__version__,
            device_serial_number="0",
            series_description="miscore prediction",
            omit_empty_frames=top > 0,
        )
    except (ValueError, TypeError) as exc:
        raise miscore.PipelineError(f"{path}: could not build the DICOM SEG: {exc}") from exc
    with miscore.atomic_output(path) as temp:
        seg.save_as(temp)
    return path


def _seg_inputs(
    volume: miscore.Volume, path: Path, reference: miscore.Volume
) -> tuple[list[Path], npt.NDArray[Any]]:
    """The source DICOM files of ``reference`` and the class ids of ``volume``, checked: a
    one-channel map of integers >= 0 on the source grid, whose source files still exist."""
    files = [Path(p) for p in reference.meta.get("files", [])]
    if reference.meta.get("format") != "dicom" or not files:
        raise miscore.InputError(
            f"{path}: a DICOM SEG needs the DICOM series the image was read from; the reference "
            f"volume has no DICOM source files in its meta"
        )
    if volume.channels != 1 or volume.spatial_shape != reference.spatial_shape:
        raise miscore.InputError(
            f"{path}: the prediction {volume.array.shape} is not a one-channel label map on the "
            f"source image grid {reference.spatial_shape}"
        )
    values = np.asarray(volume.array[..., 0])
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise miscore.InputError(f"{path}: a DICOM SEG needs integer class ids")
    if values.size and values.min() < 0:
        raise miscore.InputError(f"{path}: a DICOM SEG needs class ids >= 0")
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise miscore.InputError(
            f"{missing[0]}: source DICOM file of the prediction is gone; the SEG must reference "
            f"the series it was predicted from"
        )
    return files, values


def _segment_descriptions(n_segments: int, segment_labels: Mapping[int, str] | None) -> list[Any]:
    """One highdicom ``SegmentDescription`` per class 1..n, labelled by ``segment_labels``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="miscore",
        family=codes.cid7162.ArtificialIntelligence,
        version=miscore.__version__,
    )
    names = dict(segment_labels or {})
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=names.get(number, f"class {number}"),
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number in range(1, n_segments + 1)
    ]
