"""The ``dicom`` ImageIO: series folders and DICOM files in, NIfTI / DICOM SEG / series out."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

import miscore
from miscore_dicom.series import (
    DICOM_SUFFIXES,
    RTSTRUCT_SOP_CLASS,
    SEG_SOP_CLASS,
    element_decode_errors,
    folder_entries,
    is_dicom_file,
    looks_like_dicom_folder,
    read_header,
    read_series,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class DicomIO(miscore.ImageIO):
    """DICOM series folders and files (CT, MR, enhanced multi-frame); RTSTRUCT and SEG labels."""

    name = "dicom"
    suffixes: ClassVar[tuple[str, ...]] = DICOM_SUFFIXES
    write_suffix: ClassVar[str] = ".nii.gz"

    class Params(miscore.Params):
        series_uid: str | None = Field(
            None, description="SeriesInstanceUID to read when a folder holds several series"
        )
        series_description: str | None = Field(
            None,
            description="SeriesDescription to read (case-insensitive) when series_uid is unset; "
            "default: the series with the most slices",
        )
        spacing_tolerance: float = Field(
            0.01,
            gt=0.0,
            le=0.5,
            description="allowed deviation of a slice step from the median step, as a fraction",
        )
        roi_classes: dict[str, int] | None = Field(
            None,
            description="RTSTRUCT ROI name -> class id (later entries win where ROIs overlap); "
            "default: every ROI, numbered 1, 2, ... in file order",
        )
        segment_classes: dict[str, int] | None = Field(
            None,
            description="DICOM SEG segment label -> class id; default: class id = segment number",
        )
        output: Literal["nifti", "dicom-seg"] = Field(
            "nifti",
            description="how predictions are written: NIfTI with the DICOM geometry, or a "
            "DICOM SEG referencing the source series",
        )
        segment_labels: dict[int, str] | None = Field(
            None, description="class id -> segment label written into a DICOM SEG"
        )

    params: Params

    # --- reading ------------------------------------------------------------------------

    def can_read(self, path: Path) -> bool:
        """A folder whose first files include a DICOM file, or a single DICOM file (the
        preamble, a ``.dcm``/``.dicom`` suffix, or a data set written without the preamble)."""
        if path.is_dir():
            return looks_like_dicom_folder(path)
        if path.is_file():
            return is_dicom_file(path)
        return False

    def read(self, path: Path) -> miscore.Volume:
        """Read the chosen series of a folder, or one (multi-frame) DICOM file."""
        try:
            return read_series(
                Path(path),
                series_uid=self.params.series_uid,
                series_description=self.params.series_description,
                tolerance=self.params.spacing_tolerance,
            )
        except element_decode_errors() as exc:  # pydicom decodes elements when first used
            raise _damaged(path, exc) from exc

    def read_label(
        self,
        path: Path,
        image: miscore.Volume,
        roi_classes: Mapping[str, int] | None = None,
        segment_classes: Mapping[str, int] | None = None,
    ) -> miscore.Volume:
        """A label map on ``image``'s grid from an RTSTRUCT, a SEG, or a DICOM label series.

        Args:
            path: an RTSTRUCT or SEG file, a folder holding one, or a series of class ids.
            image: the image the label belongs to (its grid and FrameOfReferenceUID).
            roi_classes: RTSTRUCT ROI name -> class id; overrides the params.
            segment_classes: SEG segment label -> class id; overrides the params.
        """
        from miscore_dicom.rtstruct import rasterise_rtstruct
        from miscore_dicom.seg import read_seg
        from miscore_dicom.series import read_dataset

        path = Path(path)
        try:
            target = _label_object(path)
            if target is not None:
                ds = read_dataset(target)
                if str(ds.get("SOPClassUID", "")) == RTSTRUCT_SOP_CLASS:
                    mapping = roi_classes if roi_classes is not None else self.params.roi_classes
                    return rasterise_rtstruct(target, ds, image, mapping)
                mapping = (
                    segment_classes if segment_classes is not None else self.params.segment_classes
                )
                return read_seg(target, ds, image, mapping)
        except element_decode_errors() as exc:  # pydicom decodes elements when first used
            raise _damaged(path, exc) from exc
        label = miscore.as_label_volume(self.read(path), path)
        if not label.same_grid(image):
            raise miscore.InputError(
                f"{path}: label grid {label.spatial_shape} does not match the image grid "
                f"{image.spatial_shape} (or its affine differs)"
            )
        return label

    # --- writing ------------------------------------------------------------------------

    def write(
        self, volume: miscore.Volume, path: Path, reference: miscore.Volume | None = None
    ) -> Path:
        """Write a prediction (NIfTI or DICOM SEG) or an image as a DICOM CT series folder.

        - ``output="dicom-seg"``: a SEG file referencing ``reference``'s source series (a
          ``.nii``/``.nii.gz`` name is changed to ``.dcm``);
        - a name ending ``.nii.gz``/``.nii``: NIfTI with the volume's (DICOM) geometry;
        - a name without a suffix: a folder holding a CT series, one file per slice.
        """
        from miscore_dicom.seg import write_seg
        from miscore_dicom.writing import write_ct_series, write_nifti

        path = Path(path)
        name = path.name.lower()
        if self.params.output == "dicom-seg":
            for suffix in NIFTI_SUFFIXES:
                if name.endswith(suffix):
                    path = path.with_name(path.name[: -len(suffix)] + ".dcm")
                    break
            if reference is None:
                raise miscore.InputError(
                    f"{path}: writing a DICOM SEG needs the reference image read from DICOM"
                )
            return write_seg(volume, path, reference, self.params.segment_labels)
        if name.endswith(NIFTI_SUFFIXES):
            return write_nifti(volume, path)
        if not path.suffix or path.is_dir():
            return write_ct_series(volume, path)
        raise miscore.InputError(
            f"{path}: the dicom writer writes NIfTI (.nii.gz, .nii), a DICOM SEG "
            f"(output: dicom-seg) or a series into a folder (a name without suffix)"
        )

    def case_id(self, path: Path) -> str:
        """A folder's name, or a file's name without .dcm/.dicom."""
        if Path(path).is_dir():
            return Path(path).name
        return super().case_id(path)


def _damaged(path: Path, exc: Exception) -> miscore.InputError:
    return miscore.InputError(
        f"{path}: damaged DICOM data ({type(exc).__name__}: {exc}); check the files"
    )


def _label_object(path: Path) -> Path | None:
    """The RTSTRUCT or SEG file at ``path`` (or alone in the folder ``path``), else None."""
    candidates = [path] if path.is_file() else []
    if path.is_dir():
        candidates = [p for p in folder_entries(path) if is_dicom_file(p)]
    found = []
    for candidate in candidates:
        header = read_header(candidate)
        if str(header.get("SOPClassUID", "")) in (RTSTRUCT_SOP_CLASS, SEG_SOP_CLASS):
            found.append(candidate)
    if len(found) > 1:
        raise miscore.InputError(
            f"{path}: several RTSTRUCT/SEG objects ({', '.join(p.name for p in found)}); "
            f"give the file to read"
        )
    return found[0] if found else None
