"""DICOM series, RTSTRUCT and SEG reader; NIfTI, DICOM SEG or CT series writer.

Registers the ``dicom`` ImageIO. Its modules: ``series`` (reading a folder or a multi-frame
file: series choice, slice order, rescale, geometry checks), ``rtstruct`` (contours -> label
map), ``seg`` (DICOM SEG in and out, with highdicom) and ``writing`` (CT series, NIfTI).
Heavy imports (pydicom, highdicom, SimpleITK, nibabel) happen inside functions.
"""

from __future__ import annotations

from typing import Any

import miscore
from miscore_dicom.io import DicomIO

__all__ = ["DicomIO"]


@miscore.hookimpl
def miscore_register_io() -> list[type[miscore.ImageIO]]:
    return [DicomIO]


@miscore.hookimpl(trylast=True)
def miscore_register_output_formats() -> dict[str, dict[str, Any]]:
    return {"dicom-seg": {"name": "dicom", "output": "dicom-seg"}}
