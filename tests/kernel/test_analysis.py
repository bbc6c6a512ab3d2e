"""The dataset fingerprint on real files: synthetic phantoms and hand-made NIfTI datasets."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import miscore
from miscore.data.dataset import Dataset
from miscore.tools.analysis import analyze_dataset, write_report
from miscore.tools.synth import write_dataset


@pytest.fixture
def registry(installed_plugins: miscore.PluginManager) -> miscore.Registry:
    return installed_plugins.registry


def write_mr_dataset(root: Path, spacings: list[tuple[float, float, float]]) -> list[np.ndarray]:
    """An MSD-style dataset without dataset.json: positive intensities, one class."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    labels = []
    for i, spacing in enumerate(spacings):
        label = np.zeros((20, 18, 10), np.uint8)
        label[5 : 10 + i, 4:12, 2:7] = 1
        image = 200 + 300.0 * label + rng.normal(0, 10, label.shape)
        affine = np.diag([*spacing, 1.0])
        nib.save(
            nib.Nifti1Image(image.astype(np.float32), affine),
            root / "imagesTr" / f"mr_{i}_0000.nii.gz",
        )
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"mr_{i}.nii.gz")
        labels.append(label)
    return labels


def test_fingerprint_of_phantoms(tmp_path: Path, registry: miscore.Registry) -> None:
    cases = write_dataset(
        tmp_path / "data", registry, n_cases=4, shape=(32, 28, 16), seed=3, oblique=True
    )
    fingerprint = analyze_dataset(Dataset.discover(tmp_path / "data", registry))
    assert fingerprint.cases == fingerprint.labelled_cases == 4
    assert fingerprint.dims == 3 and fingerprint.channels == 1
    assert fingerprint.looks_like_ct  # dataset.json says CT
    spacings = np.array([c.image.spacing for c in cases])
    assert np.allclose(fingerprint.spacing.median, np.median(spacings, axis=0), atol=1e-4)
    assert np.allclose(fingerprint.spacing.max, spacings.max(axis=0), atol=1e-4)
    assert fingerprint.shape.median == [32, 28, 16]
    assert sum(fingerprint.orientations.values()) == 4
    # intensity statistics: exact means, sampled percentiles
    images = [c.image.array[..., 0] for c in cases]
    labels = [c.label.array[..., 0] > 0 for c in cases if c.label is not None]
    fg_values = np.concatenate([im[m] for im, m in zip(images, labels, strict=True)])
    all_values = np.concatenate([im.ravel() for im in images])
    stats = fingerprint.intensity[0]
    assert stats.foreground.voxels == fg_values.size
    assert stats.foreground.mean == pytest.approx(fg_values.mean(), rel=1e-6)
    assert stats.foreground.std == pytest.approx(fg_values.std(), rel=1e-5)
    assert stats.overall.mean == pytest.approx(all_values.mean(), rel=1e-6)
    assert stats.foreground.percentile_99_5 == pytest.approx(
        np.percentile(fg_values, 99.5), abs=0.05 * fg_values.std()
    )
    # classes: frequencies over labelled voxels, volumes in ml
    assert [c.name for c in fingerprint.classes] == ["background", "organ", "tumour"]
    assert sum(c.frequency for c in fingerprint.classes) == pytest.approx(1.0)
    organ_ml = [
        (c.label.array == 1).sum() * np.prod(c.image.spacing) / 1000 for c in cases if c.label
    ]
    assert fingerprint.classes[1].volume_ml_mean == pytest.approx(np.mean(organ_ml), rel=1e-6)
    assert fingerprint.mismatches == []


def test_mr_dataset_is_not_ct_and_mismatches_are_reported(
    tmp_path: Path, registry: miscore.Registry
) -> None:
    root = tmp_path / "mr"
    write_mr_dataset(root, [(1.0, 1.0, 3.0), (0.9, 0.9, 3.3), (1.1, 1.1, 2.7)])
    # a case whose label grid differs from its image
    nib.save(
        nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), root / "labelsTr" / "mr_2.nii.gz"
    )
    fingerprint = analyze_dataset(Dataset.discover(root, registry))
    assert not fingerprint.looks_like_ct
    assert fingerprint.cases == 2
    assert len(fingerprint.mismatches) == 1 and "mr_2" in fingerprint.mismatches[0]
    assert fingerprint.spacing.median == pytest.approx([0.95, 0.95, 3.15])
    assert fingerprint.orientations == {"RAS": 2}


def test_report_files(tmp_path: Path, registry: miscore.Registry) -> None:
    write_dataset(tmp_path / "data", registry, n_cases=2, shape=(24, 24, 12), seed=0)
    fingerprint = analyze_dataset(Dataset.discover(tmp_path / "data", registry))
    written = write_report(fingerprint, tmp_path / "report")
    names = sorted(p.name for p in written)
    assert names == ["class_frequencies.png", "fingerprint.json", "histogram_channel0.png"]
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = type(fingerprint).model_validate_json(
        (tmp_path / "report/fingerprint.json").read_text()
    )
    assert again.model_dump() == fingerprint.model_dump()
