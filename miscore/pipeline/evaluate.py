"""Evaluate predictions against ground truth with registered metrics; TSV and JSON reports.

Every (case, class) pair gets one row: the metrics of the prediction's mask of that class
against the truth's, computed with the truth's voxel spacing, and an ``empty`` flag ("both",
"pred", "truth" or "") saying which masks were empty. The summary holds NaN-aware mean, std
and median per class and metric. Fold files (``write_folds``/``read_folds``) record the
splits of an evaluator so that a run can be repeated.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
)

from miscore.core.atomic import write_text_atomic
from miscore.core.components import Fold, Metric
from miscore.core.errors import InputError
from miscore.core.labels import as_label_volume
from miscore.core.registry import Registry
from miscore.core.volume import Volume, check_case_id


def default_metrics(registry: Registry) -> list[Any]:
    """The metrics of a report when none are asked for: the plugins' ``metrics`` default
    (``miscore_defaults``; bundled: dice, iou, ..., hd95, nsd, volumes), else every one."""
    chosen = registry.defaults.get("metrics")
    return list(chosen) if chosen else registry.names("metric")


EmptyFlag = Literal["", "both", "pred", "truth"]

#: a prediction and its truth are on one grid when their affines agree to this (mm), as
#: images and labels must in ``miscore.data.dataset``
GRID_ATOL_MM = 1e-3


def _nan_from_none(value: Any) -> Any:
    return math.nan if value is None else value


def _none_from_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


#: a metric value: NaN in Python, ``null`` in JSON (strict JSON has no NaN)
MetricValue = Annotated[
    float,
    BeforeValidator(_nan_from_none),
    PlainSerializer(_none_from_nan, return_type=float | None, when_used="json"),
]


class EvaluationRow(BaseModel):
    """The metrics of one class of one case."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    case: str
    class_id: int = Field(alias="class", description="the class (label value) evaluated")
    empty: EmptyFlag = Field(
        "", description="which masks were empty: both, pred (prediction only), truth, or ''"
    )
    values: dict[str, MetricValue] = Field(description="metric name -> value")


class MetricSummary(BaseModel):
    """NaN-aware statistics of one metric over the cases of one class."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_id: int = Field(alias="class")
    metric: str
    mean: MetricValue
    std: MetricValue = Field(description="population standard deviation (ddof=0)")
    median: MetricValue
    n: int = Field(description="cases with a value (not NaN)")
    n_nan: int = Field(description="cases whose value is NaN (one mask empty)")


ReportT = TypeVar("ReportT", bound=BaseModel)


def read_report(model: type[ReportT], path: Path | str, what: str) -> ReportT:
    """Read a JSON report into ``model``; ``InputError`` naming the file when it is missing
    or is not ``what``."""
    path = Path(path)
    try:
        return model.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except ValidationError as exc:
        message = exc.errors()[0]["msg"]
        raise InputError(f"{path}: not {what}: {message}") from None


class EvaluationReport(BaseModel):
    """Every row of an evaluation, its summary, and what produced it."""

    model_config = ConfigDict(extra="forbid")

    metrics: list[str] = Field(description="metric columns, in order")
    metric_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="the parameters of each metric (e.g. nsd tolerance)"
    )
    classes: list[int]
    rows: list[EvaluationRow]
    summary: list[MetricSummary] = Field(default_factory=list)

    # --- output -------------------------------------------------------------------------

    def to_tsv(self) -> str:
        """Per-case rows as TSV: ``case class <metrics...> empty``; NaN written as ``nan``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
        writer.writerow(["case", "class", *self.metrics, "empty"])
        for row in self.rows:
            writer.writerow(
                [
                    row.case,
                    row.class_id,
                    *(_format(row.values.get(m, math.nan)) for m in self.metrics),
                    row.empty,
                ]
            )
        return buffer.getvalue()

    def summary_tsv(self) -> str:
        """The summary as TSV: ``class metric mean std median n n_nan``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
        writer.writerow(["class", "metric", "mean", "std", "median", "n", "n_nan"])
        for s in self.summary:
            writer.writerow(
                [s.class_id, s.metric, *map(_format, (s.mean, s.std, s.median)), s.n, s.n_nan]
            )
        return buffer.getvalue()

    def write_tsv(self, path: Path | str) -> Path:
        """Write the per-case TSV atomically."""
        return write_text_atomic(path, self.to_tsv())

    def write_summary_tsv(self, path: Path | str) -> Path:
        return write_text_atomic(path, self.summary_tsv())

    def to_json(self) -> str:
        """The whole report as strict JSON (NaN as ``null``, classes under ``class``)."""
        return self.model_dump_json(indent=2, by_alias=True) + "\n"

    def write_json(self, path: Path | str) -> Path:
        return write_text_atomic(path, self.to_json())

    @classmethod
    def read_json(cls, path: Path | str) -> EvaluationReport:
        """Read a report written by ``write_json``."""
        return read_report(cls, path, "an evaluation report")

    def stats(self, class_id: int, metric: str) -> MetricSummary:
        """The summary of one metric for one class."""
        for s in self.summary:
            if s.class_id == class_id and s.metric == metric:
                return s
        raise KeyError((class_id, metric))

    def column(self, metric: str, class_id: int) -> npt.NDArray[np.float64]:
        """The values of ``metric`` for ``class_id``, one per case, in row order."""
        return np.array(
            [r.values[metric] for r in self.rows if r.class_id == class_id], dtype=np.float64
        )


def _format(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.6g}"


# --- computing ------------------------------------------------------------------------------


def empty_flag(prediction: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> EmptyFlag:
    """Which of the two masks are empty: "both", "pred", "truth" or ""."""
    has_pred, has_truth = bool(prediction.any()), bool(truth.any())
    if has_pred and has_truth:
        return ""
    if not (has_pred or has_truth):
        return "both"
    return "pred" if has_truth else "truth"


def _frozen_mask(labels: npt.NDArray[Any], class_id: int) -> npt.NDArray[np.bool_]:
    # A fresh read-only array: metrics may cache work keyed on it (miscore_metrics does).
    mask: npt.NDArray[np.bool_] = np.equal(labels, class_id)
    mask.flags.writeable = False
    return mask


def create_metrics(
    registry: Registry, metrics: Sequence[str | Mapping[str, Any] | Metric]
) -> list[Metric]:
    """Metric components from names, ``{name, **params}`` mappings or instances."""
    created: list[Metric] = []
    for i, spec in enumerate(metrics):
        metric = registry.create("metric", spec, where=f"metrics[{i}]")
        if not isinstance(metric, Metric):
            raise InputError(f"metrics[{i}]: {metric!r} is not a metric component")
        created.append(metric)
    names = [m.name for m in created]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"metrics: {', '.join(duplicates)} asked for twice; give each once")
    return created


def _label_array(volume: Volume, what: str) -> npt.NDArray[Any]:
    return as_label_volume(volume, what).array[..., 0]


def evaluate_case(
    case_id: str,
    prediction: Volume,
    truth: Volume,
    metrics: Sequence[Metric],
    classes: Sequence[int] | None = None,
) -> list[EvaluationRow]:
    """Rows for one case: every class in ``classes`` (default: the classes > 0 present in
    either volume), metrics computed with the truth's spacing.

    Raises ``InputError`` naming the case when the two volumes are not on the same grid.
    """
    check_case_id(case_id)
    if not prediction.same_grid(truth, atol=GRID_ATOL_MM):
        raise InputError(
            f"case {case_id}: the prediction's grid (shape {prediction.spatial_shape}, spacing "
            f"{_mm(prediction.spacing)}) differs from the ground truth's (shape "
            f"{truth.spatial_shape}, spacing {_mm(truth.spacing)}); predictions must be written "
            f"on the ground truth's grid"
        )
    pred = _label_array(prediction, f"case {case_id} prediction")
    true = _label_array(truth, f"case {case_id} ground truth")
    if classes is None:
        present = np.union1d(np.unique(pred), np.unique(true))
        classes = [int(c) for c in present if c > 0]
    spacing = truth.spacing
    rows = []
    for class_id in classes:
        pred_mask = _frozen_mask(pred, class_id)
        true_mask = _frozen_mask(true, class_id)
        values = {m.name: float(m.compute(pred_mask, true_mask, spacing)) for m in metrics}
        rows.append(
            EvaluationRow(
                case=case_id,
                class_id=int(class_id),
                empty=empty_flag(pred_mask, true_mask),
                values=values,
            )
        )
    return rows


def _mm(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:.4g}" for s in spacing) + " mm"


def _absent_rows(
    case_id: str, class_ids: Iterable[int], metrics: Sequence[Metric], ndim: int
) -> list[EvaluationRow]:
    # A class absent from both volumes of a case: both masks empty. Every metric gives the
    # same value for two empty masks whatever their size, so a one-voxel grid stands in.
    empty = np.zeros((1,) * ndim, dtype=bool)
    empty.flags.writeable = False
    spacing = (1.0,) * ndim
    return [
        EvaluationRow(
            case=case_id,
            class_id=c,
            empty="both",
            values={m.name: float(m.compute(empty, empty, spacing)) for m in metrics},
        )
        for c in class_ids
    ]


def summarize(
    rows: Sequence[EvaluationRow], metrics: Sequence[str], classes: Sequence[int]
) -> list[MetricSummary]:
    """NaN-aware mean, std (ddof=0) and median per class and metric."""
    out = []
    for class_id in classes:
        class_rows = [r for r in rows if r.class_id == class_id]
        for name in metrics:
            values = np.array([r.values[name] for r in class_rows], dtype=np.float64)
            finite = values[~np.isnan(values)]
            n = int(finite.size)
            out.append(
                MetricSummary(
                    class_id=class_id,
                    metric=name,
                    mean=float(finite.mean()) if n else math.nan,
                    std=float(finite.std()) if n else math.nan,
                    median=float(np.median(finite)) if n else math.nan,
                    n=n,
                    n_nan=int(values.size - n),
                )
            )
    return out


def evaluate(
    pairs: Iterable[tuple[str, Volume, Volume]],
    registry: Registry,
    metrics: Sequence[str | Mapping[str, Any] | Metric] | None = None,
    classes: Sequence[int] | None = None,
) -> EvaluationReport:
    """Evaluate ``(case_id, prediction, truth)`` label volumes with registered metrics.

    Args:
        pairs: consumed one at a time, so a generator that reads files keeps memory flat.
        registry: where the metric names are looked up (``PluginManager().registry``).
        metrics: names, ``{name, **params}`` mappings (``{"name": "nsd", "tolerance_mm": 2}``)
            or Metric instances; the report's columns, in order. None: ``default_metrics``.
        classes: class ids to evaluate; default every class > 0 found in any prediction or
            truth. A class missing from both volumes of a case is a "both empty" row.

    Raises:
        InputError: a case is given twice, or a pair is not on one grid.
    """
    created = create_metrics(registry, default_metrics(registry) if metrics is None else metrics)
    names = [m.name for m in created]
    if classes is not None:
        classes = [int(c) for c in classes]
        if any(c < 0 for c in classes):
            raise InputError(f"classes {classes}: class ids are >= 0")
    rows: list[EvaluationRow] = []
    seen: dict[str, int] = {}
    for case_id, prediction, truth in pairs:
        if case_id in seen:
            raise InputError(f"case {case_id} is given twice; each case is evaluated once")
        seen[case_id] = truth.ndim
        rows.extend(evaluate_case(case_id, prediction, truth, created, classes))
    if classes is None:
        found = sorted({r.class_id for r in rows})
        for case_id, ndim in seen.items():
            have = {r.class_id for r in rows if r.case == case_id}
            rows.extend(_absent_rows(case_id, [c for c in found if c not in have], created, ndim))
        order = {case_id: i for i, case_id in enumerate(seen)}
        rows.sort(key=lambda r: (order[r.case], r.class_id))
        classes = found
    return EvaluationReport(
        metrics=names,
        metric_params={m.name: m.params.model_dump(mode="json") for m in created},
        classes=list(classes),
        rows=rows,
        summary=summarize(rows, names, classes),
    )


# --- fold files -----------------------------------------------------------------------------


class FoldsFile(BaseModel):
    """The folds of a validation scheme, as written to JSON by ``write_folds``."""

    model_config = ConfigDict(extra="forbid")

    evaluator: dict[str, Any] | None = Field(
        None, description="the evaluator config entry that made the folds ({name, **params})"
    )
    seed: int | None = None
    case_ids: list[str] = Field(default_factory=list, description="every case that was split")
    folds: list[Fold]


def write_folds(
    folds: Sequence[Fold],
    path: Path | str,
    *,
    evaluator: Mapping[str, Any] | None = None,
    seed: int | None = None,
    case_ids: Sequence[str] | None = None,
) -> Path:
    """Write folds (and what made them) to a JSON file, atomically; ``read_folds`` reads it."""
    if case_ids is None:
        case_ids = sorted({c for f in folds for c in (*f.train, *f.test)})
    record = FoldsFile(
        evaluator=dict(evaluator) if evaluator is not None else None,
        seed=seed,
        case_ids=list(case_ids),
        folds=list(folds),
    )
    return write_text_atomic(path, record.model_dump_json(indent=2) + "\n")


def read_folds_file(path: Path | str) -> FoldsFile:
    """Read and validate a fold file written by ``write_folds``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such fold file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        return FoldsFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(
            f"{path}: not a fold file: {where}: {first['msg']} (write one with write_folds)"
        ) from None


def read_folds(path: Path | str) -> list[Fold]:
    """The folds of a fold file written by ``write_folds``."""
    return read_folds_file(path).folds
