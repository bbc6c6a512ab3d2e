"""The dataset fingerprint: what ``miscore analyze`` reports and ``miscore plan`` builds on.

Cases are read one at a time (never more than one in memory). Means and standard deviations
are exact (running sums over every voxel); percentiles come from a seeded random sample of
up to ``samples_per_case`` voxels per case and channel (overall, and inside the foreground),
as nnU-Net does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from miscore.core.errors import InputError

if TYPE_CHECKING:
    from miscore.core.volume import Case
    from miscore.data.dataset import Dataset

__all__ = ["CaseFingerprint", "Fingerprint", "analyze_dataset", "write_report"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AxisStats(_Model):
    """Median, minimum and maximum of a per-axis quantity over the cases."""

    median: list[float]
    min: list[float]
    max: list[float]


class IntensityStats(_Model):
    """Intensity statistics of one channel over a set of voxels."""

    voxels: int = Field(description="voxels counted (mean and std are exact over them)")
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    percentile_00_5: float | None = Field(description="0.5th percentile (sampled)")
    percentile_99_5: float | None = Field(description="99.5th percentile (sampled)")


class ChannelIntensity(_Model):
    channel: int
    overall: IntensityStats
    foreground: IntensityStats = Field(description="inside the label's foreground (class > 0)")


class ClassStats(_Model):
    """One class over the labelled cases."""

    id: int
    name: str | None = None
    voxels: int
    frequency: float = Field(description="share of all labelled voxels")
    cases: int = Field(description="labelled cases that hold this class")
    volume_ml_mean: float = Field(description="mean volume per case holding it, millilitres")
    volume_ml_min: float
    volume_ml_max: float
    one_object_cases: int = Field(
        0, description="cases holding it as one connected object (face connectivity)"
    )


class CaseFingerprint(_Model):
    """The facts of one case."""

    id: str
    shape: list[int]
    spacing: list[float]
    axcodes: str = Field(description="where array axes point, e.g. 'RAS' or 'LPS'")
    channels: int
    labelled: bool
    class_voxels: dict[int, int] = Field(default_factory=dict)
    class_objects: dict[int, int] = Field(
        default_factory=dict, description="connected objects per foreground class"
    )


class Fingerprint(_Model):
    """What a dataset holds: geometry, intensities and classes."""

    dataset: str
    layout: str
    modality: list[str] = Field(default_factory=list, description="from dataset.json, if any")
    cases: int
    labelled_cases: int
    dims: int = Field(description="spatial axes: 2 or 3")
    channels: int
    shape: AxisStats
    spacing: AxisStats
    orientations: dict[str, int] = Field(description="axis codes -> number of cases")
    intensity: list[ChannelIntensity]
    classes: list[ClassStats]
    mismatches: list[str] = Field(description="cases that could not be read, and why")
    per_case: list[CaseFingerprint]
    #: the voxel samples (overall, foreground) per channel, for plots; not serialised
    _samples: Any = PrivateAttr(default=None)

    @property
    def looks_like_ct(self) -> bool:
        """CT by dataset.json, or by intensities: air near -1000 HU, values spanning > 1000."""
        if self.modality:
            return self.modality[0].upper() == "CT"
        if not self.intensity:
            return False
        overall = self.intensity[0].overall
        if overall.min is None or overall.max is None:
            return False
        return overall.min <= -900 and overall.max - overall.min > 1000


class _Accumulator:
    """Running sums and a voxel sample of one channel."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.squares = 0.0
        self.low = math.inf
        self.high = -math.inf
        self.samples: list[npt.NDArray[np.float64]] = []

    def add(self, values: npt.NDArray[Any], rng: np.random.Generator, sample_size: int) -> None:
        if values.size == 0:
            return
        values = values.astype(np.float64, copy=False)
        self.count += int(values.size)
        self.total += float(values.sum())
        self.squares += float(np.square(values).sum())
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))
        if values.size > sample_size:
            values = rng.choice(values, size=sample_size, replace=False)
        self.samples.append(values)

    def sample(self) -> npt.NDArray[np.float64]:
        return np.concatenate(self.samples) if self.samples else np.zeros(0)

    def stats(self) -> IntensityStats:
        if not self.count:
            return IntensityStats(
                voxels=0,
                mean=None,
                std=None,
                min=None,
                max=None,
                percentile_00_5=None,
                percentile_99_5=None,
            )
        mean = self.total / self.count
        variance = max(self.squares / self.count - mean**2, 0.0)
        low, high = np.percentile(self.sample(), [0.5, 99.5])
        return IntensityStats(
            voxels=self.count,
            mean=mean,
            std=math.sqrt(variance),
            min=self.low,
            max=self.high,
            percentile_00_5=float(low),
            percentile_99_5=float(high),
        )


def _axcodes(affine: npt.NDArray[np.float64]) -> str:
    import nibabel.orientations

    orientations: Any = nibabel.orientations  # its functions carry no type hints
    codes = orientations.aff2axcodes(affine)
    return "".join(str(c) for c in codes)


def _axis_stats(rows: Sequence[Sequence[float]]) -> AxisStats:
    array = np.asarray(rows, float)
    return AxisStats(
        median=[float(v) for v in np.median(array, axis=0)],
        min=[float(v) for v in array.min(axis=0)],
        max=[float(v) for v in array.max(axis=0)],
    )


def analyze_dataset(
    dataset: Dataset,
    seed: int = 0,
    samples_per_case: int = 10_000,
    progress: Callable[[str], None] | None = None,
) -> Fingerprint:
    """Read every case of ``dataset`` once and return its fingerprint.

    Args:
        dataset: from ``miscore.data.dataset.Dataset.discover``.
        seed: seeds the voxel samples percentiles are taken from.
        samples_per_case: voxels sampled per case and channel for percentiles and histograms.
        progress: called with a line per case read.
    """
    reading = _Reading(np.random.default_rng(seed), samples_per_case)
    for case_id in dataset.ids:
        try:
            case: Case = dataset.load(case_id)
        except InputError as exc:
            reading.mismatches.append(str(exc))
            continue
        if progress is not None:
            progress(f"analyze: {case_id}")
        reading.add(case)
    per_case, mismatches = reading.per_case, reading.mismatches
    if not per_case:
        raise InputError(f"{dataset.root}: no case could be read: " + "; ".join(mismatches[:3]))
    dims = len(per_case[0].shape)
    if any(len(c.shape) != dims for c in per_case):
        mismatches.append("cases mix 2D and 3D images")
    channels = {c.channels for c in per_case}
    if len(channels) > 1:
        mismatches.append(f"cases have different channel counts: {sorted(channels)}")
    same_dims = [c for c in per_case if len(c.shape) == dims]
    labelled = [c for c in per_case if c.labelled]
    overall, foreground = reading.overall, reading.foreground
    fingerprint = Fingerprint(
        dataset=str(dataset.root),
        layout=dataset.layout,
        modality=_modality(dataset.info),
        cases=len(per_case),
        labelled_cases=len(labelled),
        dims=dims,
        channels=max(channels),
        shape=_axis_stats([c.shape for c in same_dims]),
        spacing=_axis_stats([c.spacing for c in same_dims]),
        orientations={
            code: sum(1 for c in per_case if c.axcodes == code)
            for code in sorted({c.axcodes for c in per_case})
        },
        intensity=[
            ChannelIntensity(
                channel=c, overall=overall[c].stats(), foreground=foreground[c].stats()
            )
            for c in range(len(overall))
        ],
        classes=_class_stats(labelled, reading.class_volumes, _class_names(dataset.info)),
        mismatches=mismatches,
        per_case=per_case,
    )
    fingerprint._samples = (overall, foreground)
    return fingerprint


class _Reading:
    """What reading the cases collects: per-case facts, per-channel intensities (all voxels
    and the foreground's), and each class's volume per case."""

    def __init__(self, rng: np.random.Generator, samples_per_case: int) -> None:
        self.rng = rng
        self.samples_per_case = samples_per_case
        self.per_case: list[CaseFingerprint] = []
        self.mismatches: list[str] = []
        self.overall: list[_Accumulator] = []
        self.foreground: list[_Accumulator] = []
        self.class_volumes: dict[int, list[float]] = {}

    def add(self, case: Case) -> None:
        image = case.image
        while len(self.overall) < image.channels:
            self.overall.append(_Accumulator())
            self.foreground.append(_Accumulator())
        mask = None if case.label is None else case.label.array[..., 0] > 0
        for c in range(image.channels):
            channel = image.array[..., c]
            self.overall[c].add(channel.reshape(-1), self.rng, self.samples_per_case)
            if mask is not None:
                self.foreground[c].add(channel[mask], self.rng, self.samples_per_case)
        counts: dict[int, int] = {}
        objects: dict[int, int] = {}
        if case.label is not None:
            ids, n = np.unique(case.label.array, return_counts=True)
            counts = {int(i): int(k) for i, k in zip(ids, n, strict=True)}
            objects = _objects(case.label.array[..., 0], [c for c in counts if c > 0])
            voxel_ml = float(np.prod(np.linalg.norm(image.affine[:3, :3], axis=0))) / 1000.0
            for cls, k in counts.items():
                self.class_volumes.setdefault(cls, []).append(k * voxel_ml)
        self.per_case.append(
            CaseFingerprint(
                id=case.id,
                shape=list(image.spatial_shape),
                spacing=list(image.spacing),
                axcodes=_axcodes(image.affine),
                channels=image.channels,
                labelled=case.label is not None,
                class_voxels=counts,
                class_objects=objects,
            )
        )


def _class_stats(
    labelled: Sequence[CaseFingerprint],
    class_volumes: dict[int, list[float]],
    names: dict[int, str],
) -> list[ClassStats]:
    """Per class of the labelled cases: voxels, frequency, cases, volumes, one-object cases."""
    total = sum(sum(c.class_voxels.values()) for c in labelled)
    classes = []
    for cls in sorted({k for c in labelled for k in c.class_voxels}):
        voxels = sum(c.class_voxels.get(cls, 0) for c in labelled)
        volumes = class_volumes.get(cls, [0.0])
        classes.append(
            ClassStats(
                id=cls,
                name=names.get(cls),
                voxels=voxels,
                frequency=voxels / max(total, 1),
                cases=sum(1 for c in labelled if c.class_voxels.get(cls, 0) > 0),
                volume_ml_mean=float(np.mean(volumes)),
                volume_ml_min=float(np.min(volumes)),
                volume_ml_max=float(np.max(volumes)),
                one_object_cases=sum(1 for c in labelled if c.class_objects.get(cls) == 1),
            )
        )
    return classes


def _objects(label: np.ndarray, classes: list[int]) -> dict[int, int]:
    """Connected objects (face connectivity) of each class in a label map."""
    from scipy import ndimage

    return {c: int(ndimage.label(label == c)[1]) for c in classes}


def _modality(info: dict[str, Any]) -> list[str]:
    """Channel modalities from dataset.json (MSD ``modality`` or nnU-Net v2 ``channel_names``)."""
    table = info.get("modality") or info.get("channel_names") or {}
    if not isinstance(table, dict):
        return []
    return [str(table[k]) for k in sorted(table, key=lambda k: int(k) if str(k).isdigit() else 0)]


def _class_names(info: dict[str, Any]) -> dict[int, str]:
    """Class names from dataset.json: MSD ``{"1": "liver"}`` or nnU-Net v2 ``{"liver": 1}``."""
    labels = info.get("labels") or {}
    out: dict[int, str] = {}
    if isinstance(labels, dict):
        for key, value in labels.items():
            if str(key).isdigit():
                out[int(key)] = str(value)
            elif isinstance(value, int):
                out[value] = str(key)
    return out


def write_report(fingerprint: Fingerprint, directory: Path | str) -> list[Path]:
    """Write ``fingerprint.json``, intensity histograms and a class-frequency plot (PNG).

    Each file is written atomically. Returns the paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from miscore.core.atomic import atomic_output, write_text_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [
        write_text_atomic(directory / "fingerprint.json", fingerprint.model_dump_json(indent=2))
    ]
    samples: tuple[list[_Accumulator], list[_Accumulator]] | None = fingerprint._samples
    if samples is not None:
        for c, (every, inside) in enumerate(zip(*samples, strict=True)):
            figure, axis = plt.subplots(figsize=(6, 4))
            axis.hist(every.sample(), bins=100, alpha=0.6, label="all voxels", density=True)
            if inside.count:
                axis.hist(inside.sample(), bins=100, alpha=0.6, label="foreground", density=True)
            axis.set_xlabel("intensity")
            axis.set_ylabel("density")
            axis.set_title(f"channel {c} (sampled voxels)")
            axis.legend()
            target = directory / f"histogram_channel{c}.png"
            with atomic_output(target) as temp:
                figure.savefig(temp, format="png", dpi=80)
            plt.close(figure)
            written.append(target)
    if fingerprint.classes:
        figure, axis = plt.subplots(figsize=(6, 4))
        labels = [c.name or str(c.id) for c in fingerprint.classes]
        axis.bar(labels, [c.frequency for c in fingerprint.classes])
        axis.set_yscale("log")
        axis.set_ylabel("share of labelled voxels")
        axis.set_title("class frequencies")
        target = directory / "class_frequencies.png"
        with atomic_output(target) as temp:
            figure.savefig(temp, format="png", dpi=80)
        plt.close(figure)
        written.append(target)
    return written
