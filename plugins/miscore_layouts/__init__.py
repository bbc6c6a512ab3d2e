"""Dataset layouts: how the folders of the common dataset conventions make cases.

``data.layout: auto`` asks them in this order (``detect_priority``):

- ``msd`` (40): Medical Segmentation Decathlon / nnU-Net: ``imagesTr/``, ``labelsTr/``,
  ``imagesTs/`` (optional ``labelsTs/``, ``dataset.json``); channels as
  ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``... or one multi-channel file.
- ``image2d`` (30): ``images/`` and ``masks/`` (or ``labels/``), paired by file stem.
- ``cases`` (20): MIScnn/KiTS: one folder per case holding ``imaging.*`` (a file, or a folder
  such as a DICOM series) and optionally ``segmentation.*``.
- ``dicom`` (10): one folder per case that a reader reads as an image (a DICOM series); the
  label, when present, is a file in that folder named ``segmentation.*``, ``label.*``,
  ``labels.*``, ``mask.*``, ``seg.*`` or ``rtstruct.*``.
- ``files`` (-10): one image (a file or a series folder), or a flat folder of images
  (nnU-Net channel files ``<case>_0000...`` make one case), no labels: for prediction.

They use only the public API: the ``miscore.DatasetFinder`` each method is given.
"""

from __future__ import annotations

import miscore
from miscore_layouts.files import FilesLayout
from miscore_layouts.folders import CaseFoldersLayout, DicomFoldersLayout, ImageFoldersLayout
from miscore_layouts.msd import MsdLayout

__all__ = [
    "CaseFoldersLayout",
    "DicomFoldersLayout",
    "FilesLayout",
    "ImageFoldersLayout",
    "MsdLayout",
]


@miscore.hookimpl
def miscore_register_layouts() -> list[type[miscore.DatasetLayout]]:
    return [MsdLayout, ImageFoldersLayout, CaseFoldersLayout, DicomFoldersLayout, FilesLayout]
