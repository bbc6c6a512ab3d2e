"""RTSTRUCT -> label map: closed planar contours rasterised on the image grid, slice by slice.

A contour point in world LPS mm goes to a voxel index through the image's inverse affine; the
voxels whose centres lie inside (or on) the polygon are set. Several contours of one ROI in one
slice combine by even-odd rule, so an inner contour cuts a hole. ROIs are painted in the order of
the class map: where ROIs overlap, the later one wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

import miscore
from miscore_dicom.series import LPS_TO_RAS

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: how far (in slices) a contour may lie from the nearest slice centre
SLICE_TOLERANCE = 0.3
#: voxel centres this close (in voxels) to a contour count as on it, so inside: ContourData
#: is rounded text, so a vertex meant to sit on a centre lands a little off it
BOUNDARY_TOLERANCE = 1e-3


def roi_names(ds: Dataset) -> dict[int, str]:
    """ROINumber -> ROIName, in the order of StructureSetROISequence."""
    return {
        int(item.ROINumber): str(item.get("ROIName", f"ROI {item.ROINumber}"))
        for item in ds.get("StructureSetROISequence", [])
    }


def class_map(
    path: Path, names: Mapping[int, str], roi_classes: Mapping[str, int] | None
) -> list[tuple[int, int]]:
    """(ROINumber, class id) pairs in painting order."""
    if roi_classes is None:
        return [(number, n + 1) for n, number in enumerate(names)]
    by_name = {name: number for number, name in names.items()}
    missing = [name for name in roi_classes if name not in by_name]
    if missing:
        available = ", ".join(repr(n) for n in names.values())
        raise miscore.InputError(
            f"{path}: no ROI named {', '.join(repr(m) for m in missing)}; available: {available}"
        )
    for name, class_id in roi_classes.items():
        if class_id < 0:
            raise miscore.InputError(f"{path}: class id of ROI {name!r} must be >= 0")
    return [(by_name[name], int(class_id)) for name, class_id in roi_classes.items()]


def _fill_polygon(
    mask: npt.NDArray[np.bool_], vertices: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    """The voxels of a 2D ``(ni, nj)`` grid whose centres lie inside or on the polygon."""
    from matplotlib.path import Path as PolygonPath

    ni, nj = mask.shape
    lo = np.maximum(np.floor(vertices.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(vertices.max(axis=0)).astype(int), [ni - 1, nj - 1])
    inside = np.zeros_like(mask)
    if np.any(hi < lo):
        return inside
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    centres = np.column_stack([ii.ravel(), jj.ravel()]).astype(np.float64)
    polygon = PolygonPath(vertices, closed=False)
    # contains_points excludes the boundary; a small radius of either sign includes it whatever
    # the polygon's winding
    hit = polygon.contains_points(centres, radius=BOUNDARY_TOLERANCE) | polygon.contains_points(
        centres, radius=-BOUNDARY_TOLERANCE
    )
    inside[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1] = hit.reshape(ii.shape)
    return inside


def rasterise_rtstruct(
    path: Path,
    ds: Dataset,
    image: miscore.Volume,
    roi_classes: Mapping[str, int] | None = None,
) -> miscore.Volume:
    """Rasterise the CLOSED_PLANAR contours of an RTSTRUCT onto ``image``'s grid."""
    from miscore import label_dtype

    if image.ndim != 3:
        raise miscore.InputError(f"{path}: an RTSTRUCT needs a 3D image to be drawn on")
    image_frame = str(image.meta.get("frame_of_reference_uid", "") or "")
    names = roi_names(ds)
    frames = {
        int(item.ROINumber): str(item.get("ReferencedFrameOfReferenceUID", ""))
        for item in ds.get("StructureSetROISequence", [])
    }
    order = class_map(path, names, roi_classes)
    contours: dict[int, list[Any]] = {}
    for item in ds.get("ROIContourSequence", []):
        contours.setdefault(int(item.ReferencedROINumber), []).extend(
            item.get("ContourSequence", [])
        )
    shape = image.spatial_shape
    to_voxel = np.linalg.inv(image.affine) @ LPS_TO_RAS
    top = max([c for _, c in order], default=0)
    label = np.zeros(shape, dtype=label_dtype(top))
    drawn: dict[str, int] = {}
    for roi_number, class_id in order:
        name = names.get(roi_number, str(roi_number))
        roi_frame = frames.get(roi_number, "")
        if image_frame and roi_frame and roi_frame != image_frame:
            raise miscore.InputError(
                f"{path}: ROI {name!r} is in FrameOfReferenceUID {roi_frame}, the image in "
                f"{image_frame}; the RTSTRUCT belongs to another scan"
            )
        roi_mask = np.zeros(shape, dtype=bool)
        count = 0
        for contour in contours.get(roi_number, []):
            if str(contour.get("ContourGeometricType", "")).upper() != "CLOSED_PLANAR":
                continue
            points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64)
            points = points.reshape(-1, 3)
            voxels = (to_voxel @ np.column_stack([points, np.ones(len(points))]).T).T[:, :3]
            k_float = voxels[:, 2]
            k = int(np.round(np.mean(k_float)))
            if np.max(np.abs(k_float - k)) > SLICE_TOLERANCE:
                raise miscore.InputError(
                    f"{path}: a contour of ROI {name!r} does not lie in one image slice "
                    f"(slice index {k_float.min():.2f}..{k_float.max():.2f}); the contours are "
                    f"not drawn on this image's slices"
                )
            if not 0 <= k < shape[2]:
                continue
            roi_mask[:, :, k] ^= _fill_polygon(roi_mask[:, :, k], voxels[:, :2])
            count += 1
        label[roi_mask] = class_id
        drawn[name] = count
    meta = {
        "format": "dicom-rtstruct",
        "source": str(path),
        "roi_classes": {names[number]: class_id for number, class_id in order},
        "contours_drawn": drawn,
    }
    return miscore.Volume(label[..., None], image.affine.copy(), meta)
