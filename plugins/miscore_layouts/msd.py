"""The Medical Segmentation Decathlon / nnU-Net layout: imagesTr/, labelsTr/, imagesTs/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import miscore
from miscore_layouts.channels import channel_cases, channel_files

#: entries whose presence marks an MSD/nnU-Net dataset folder
MARKERS = frozenset({"imagesTr", "imagesTs", "dataset.json"})


class MsdLayout(miscore.DatasetLayout):
    """Medical Segmentation Decathlon / nnU-Net: imagesTr/, labelsTr/, imagesTs/, dataset.json."""

    name = "msd"
    detect_priority: ClassVar[int] = 40
    looks_like: ClassVar[str] = "imagesTr/"

    def detect(self, root: Path, finder: miscore.DatasetFinder) -> bool:
        if finder.is_image(root):
            return False
        return bool({p.name for p in root.iterdir()} & MARKERS)

    def find(
        self, root: Path, finder: miscore.DatasetFinder
    ) -> tuple[list[miscore.CaseSource], dict[str, Any]]:
        """The cases ``dataset.json`` lists (MSD), else those of the image folders.

        Also ``labelsTs/`` when present; the facts returned are ``dataset.json`` itself.
        """
        info: dict[str, Any] = {}
        listed: list[miscore.CaseSource] | None = None
        json_path = root / "dataset.json"
        if json_path.is_file():
            try:
                info = json.loads(json_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise miscore.InputError(f"{json_path}: not valid JSON: {exc}") from None
            if not isinstance(info, dict):
                raise miscore.InputError(f"{json_path}: expected a JSON object")
            listed = _listed(finder, info, json_path)
        if listed:
            return listed, info
        cases = channel_cases(finder, root / "imagesTr", root / "labelsTr", test=False)
        cases += channel_cases(finder, root / "imagesTs", root / "labelsTs", test=True)
        return cases, info


def _listed(
    finder: miscore.DatasetFinder, info: dict[str, Any], json_path: Path
) -> list[miscore.CaseSource]:
    """Cases from dataset.json's ``training``/``test`` lists (MSD), when it has them."""
    cases = []
    training = info.get("training") or []
    test = info.get("test") or []
    if not isinstance(training, list) or not isinstance(test, list):
        raise miscore.InputError(f"{json_path}: 'training' and 'test' must be lists")
    entries: list[tuple[Any, bool]] = [(e, False) for e in training]
    entries += [(e, True) for e in test]
    for i, (entry, is_test) in enumerate(entries):
        where = f"{json_path}: {'test' if is_test else 'training'} entry {i}"
        if isinstance(entry, str):
            entry = {"image": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise miscore.InputError(f"{where}: expected a path or {{'image': ..., 'label': ...}}")
        image = finder.confined(entry["image"], where)
        images = channel_files(image, where)
        label = None
        if isinstance(entry.get("label"), str):
            label = finder.confined(entry["label"], where)
            if not label.exists():
                raise miscore.InputError(f"{where}: label {label} does not exist")
        io = finder.reader(images[0])
        stem = finder.file_stem(image, io) if io is not None else image.name
        cases.append(miscore.CaseSource(finder.case_id(stem, image), images, label, is_test))
    return cases
