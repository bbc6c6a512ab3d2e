"""nnU-Net channel files: ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``... make one case."""

from __future__ import annotations

import re
from pathlib import Path

import miscore

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def channel_cases(
    finder: miscore.DatasetFinder, folder: Path, labels: Path | None, test: bool
) -> list[miscore.CaseSource]:
    """The cases of a folder of images, channel files grouped, labels paired by case id.

    Args:
        folder: the images (``imagesTr/``, or a flat folder).
        labels: the folder of label files named ``<case>.<suffix>``, or None.
        test: mark the cases as a test set (``imagesTs/``).
    """
    if not folder.is_dir():
        return []
    channels: dict[str, dict[int, Path]] = {}
    single: dict[str, Path] = {}
    for path, io in finder.images_in(folder):
        stem = finder.file_stem(path, io)
        match = _CHANNEL.match(stem)
        if match:
            channels.setdefault(match["case"], {})[int(match["channel"])] = path
        elif stem in single:
            raise miscore.InputError(
                f"case id {stem!r} appears twice: {single[stem]} and {path}; rename or remove one"
            )
        else:
            single[stem] = path
    # `subject_0001`, `subject_0002` without a `subject_0000` are cases, not channels
    for case_id in [c for c, found in channels.items() if 0 not in found]:
        for number, path in channels.pop(case_id).items():
            stem = f"{case_id}_{number:04d}"
            if stem in single:
                raise miscore.InputError(
                    f"case id {stem!r} appears twice: {single[stem]} and {path}; "
                    "rename or remove one"
                )
            single[stem] = path
    label_files = {}
    if labels is not None and labels.is_dir():
        label_files = {finder.file_stem(p, io): p for p, io in finder.images_in(labels)}
    cases = []
    counts = set()
    for case_id in sorted(set(channels) | set(single)):
        if case_id in channels and case_id in single:
            raise miscore.InputError(
                f"case {case_id}: both {single[case_id]} and channel files "
                f"{case_id}_0000... exist in {folder}; keep one naming"
            )
        if case_id in channels:
            found = channels[case_id]
            expected = list(range(len(found)))
            if sorted(found) != expected:
                raise miscore.InputError(
                    f"case {case_id}: channel files {sorted(found)} in {folder} are not "
                    f"numbered 0000, 0001, ... without gaps"
                )
            paths = tuple(found[i] for i in expected)
        else:
            paths = (single[case_id],)
        counts.add(len(paths))
        label = label_files.pop(case_id, None)
        cases.append(miscore.CaseSource(finder.case_id(case_id, paths[0]), paths, label, test))
    if len(counts) > 1:
        raise miscore.InputError(
            f"{folder}: cases have different numbers of channel files {counts}"
        )
    if label_files:
        orphan = next(iter(label_files.values()))
        raise miscore.InputError(f"{orphan}: a label without an image in {folder}")
    return cases


def channel_files(image: Path, where: str) -> tuple[Path, ...]:
    """``x.nii.gz`` itself, or ``x_0000.nii.gz, x_0001.nii.gz...`` (nnU-Net renamed it)."""
    if image.exists():
        return (image,)
    name = image.name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else image.suffix
    base = name[: len(name) - len(suffix)]
    found: list[Path] = []
    while (image.parent / f"{base}_{len(found):04d}{suffix}").exists():
        found.append(image.parent / f"{base}_{len(found):04d}{suffix}")
    if found:
        return tuple(found)
    raise miscore.InputError(f"{where}: image {image} does not exist")
