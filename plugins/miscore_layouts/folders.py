"""Layouts of one folder per case (cases, dicom) and of paired image folders (image2d)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import miscore

#: names (before the first dot) of label files in a case folder
LABEL_STEMS = ("segmentation", "label", "labels", "mask", "seg", "rtstruct")


class CaseFoldersLayout(miscore.DatasetLayout):
    """MIScnn/KiTS: one folder per case holding imaging.* and optionally segmentation.*."""

    name = "cases"
    detect_priority: ClassVar[int] = 20
    looks_like: ClassVar[str] = "case folders with imaging.*"

    def detect(self, root: Path, finder: miscore.DatasetFinder) -> bool:
        if finder.is_image(root):
            return False
        folders = [p for p in finder.entries(root) if p.is_dir()]
        return any(finder.named(folder, ("imaging",)) for folder in folders)

    def find(
        self, root: Path, finder: miscore.DatasetFinder
    ) -> tuple[list[miscore.CaseSource], dict[str, Any]]:
        cases = []
        for folder in finder.entries(root):
            if not folder.is_dir():
                continue
            image = finder.named(folder, ("imaging",))
            if image is None:
                continue
            label = finder.named(folder, ("segmentation",))
            cases.append(miscore.CaseSource(finder.case_id(folder.name, folder), (image,), label))
        return cases, {}


class DicomFoldersLayout(miscore.DatasetLayout):
    """One folder per case that a reader reads as an image (a DICOM series), label beside."""

    name = "dicom"
    detect_priority: ClassVar[int] = 10
    looks_like: ClassVar[str] = "image folders"

    def detect(self, root: Path, finder: miscore.DatasetFinder) -> bool:
        if finder.is_image(root):
            return False
        folders = [p for p in finder.entries(root) if p.is_dir()]
        return any(finder.reader(folder) is not None for folder in folders)

    def find(
        self, root: Path, finder: miscore.DatasetFinder
    ) -> tuple[list[miscore.CaseSource], dict[str, Any]]:
        cases = []
        for folder in finder.entries(root):
            if not folder.is_dir() or finder.reader(folder) is None:
                continue
            label = finder.named(folder, LABEL_STEMS)
            cases.append(miscore.CaseSource(finder.case_id(folder.name, folder), (folder,), label))
        return cases, {}


class ImageFoldersLayout(miscore.DatasetLayout):
    """2D datasets: images/ and masks/ (or labels/), paired by file stem."""

    name = "image2d"
    detect_priority: ClassVar[int] = 30
    looks_like: ClassVar[str] = "images/ + masks/"

    def detect(self, root: Path, finder: miscore.DatasetFinder) -> bool:
        if finder.is_image(root):
            return False
        names = {p.name for p in root.iterdir()}
        return "images" in names and bool(names & {"masks", "labels"})

    def find(
        self, root: Path, finder: miscore.DatasetFinder
    ) -> tuple[list[miscore.CaseSource], dict[str, Any]]:
        images = root / "images"
        if not images.is_dir():
            raise miscore.InputError(f"{root}: the image2d layout needs an images/ folder")
        masks = next((root / n for n in ("masks", "labels") if (root / n).is_dir()), None)
        mask_files = {}
        if masks is not None:
            mask_files = {finder.file_stem(p, io): p for p, io in finder.images_in(masks)}
        cases = []
        for path, io in finder.images_in(images):
            stem = finder.file_stem(path, io)
            label = mask_files.pop(stem, None)
            cases.append(miscore.CaseSource(finder.case_id(stem, path), (path,), label))
        if mask_files:
            orphan = next(iter(mask_files.values()))
            raise miscore.InputError(
                f"{orphan}: a mask without an image of the same name in {images}"
            )
        return cases, {}
