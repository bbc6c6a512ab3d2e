"""``miscore evaluate PRED GT``: score predictions against ground truth, per case and class."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from miscore.cli.state import CliState, print_json, state
from miscore.core.errors import InputError
from miscore.core.progress import progress_bar

if TYPE_CHECKING:
    from miscore.core.registry import Registry
    from miscore.core.volume import Volume
    from miscore.data.dataset import Dataset
    from miscore.pipeline.evaluate import EvaluationReport


@dataclass(frozen=True)
class CasePair:
    """Where the prediction and the ground truth of one case are."""

    case_id: str
    prediction: Path
    truth: Path


def find_pairs(
    pred: Path, gt: Path, registry: Registry, layout: str = "auto"
) -> tuple[Dataset, list[CasePair], list[str]]:
    """Pair predictions with ground truth by case id.

    ``pred`` is a flat folder of label files (or one file). ``gt`` is a flat folder of label
    files, one file, or a dataset of any ``miscore.data.dataset`` layout, whose label files are
    used. Returns the ground-truth dataset, the pairs (in case id order) and the ids of
    ground-truth cases without a prediction. Two single files pair whatever their names.

    Raises ``InputError`` when a prediction has no ground truth.
    """
    from miscore.data.dataset import Dataset

    predictions = Dataset.discover(pred, registry, layout="files")
    # `miscore predict --probabilities` writes <case>_probabilities beside the label maps
    predictions.cases = [c for c in predictions.cases if not c.id.endswith("_probabilities")]
    truths = Dataset.discover(gt, registry, layout=layout)
    labels: dict[str, Path] = {}
    for case in truths.cases:
        label = case.images[0] if truths.layout == "files" else case.label
        if label is not None:
            labels[case.id] = label
    if pred.is_file() and len(labels) == 1 and truths.layout == "files":
        (truth,) = labels.values()
        (source,) = predictions.cases
        return truths, [CasePair(source.id, source.images[0], truth)], []
    if not labels:
        raise InputError(f"GT {gt}: no labelled cases in this {truths.layout!r} dataset")
    missing = [c.id for c in predictions.cases if c.id not in labels]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(
            f"GT {gt}: no ground truth for {len(missing)} predicted case(s): {shown}; "
            f"file names must give the same case ids"
        )
    pairs = [CasePair(c.id, c.images[0], labels[c.id]) for c in predictions.cases]
    predicted = set(predictions.ids)
    return truths, pairs, sorted(c for c in labels if c not in predicted)


def read_pair(
    pair: CasePair, truths: Dataset, squeezed: list[str] | None = None
) -> tuple[Volume, Volume]:
    """The prediction and ground-truth label maps of one case.

    A label format that needs its image to be read (DICOM SEG, RTSTRUCT: their IO overrides
    ``read_label``) is loaded with its case through the dataset; other label files are read
    alone, without the image.

    The prediction must have the truth's spatial shape and one channel. A file with trailing
    singleton axes beyond the truth's (a ``(X, Y, Z, 1)`` NIfTI against ``(X, Y, Z)``, as
    other tools write label maps) is that one channel: a line on it is appended to
    ``squeezed`` for the caller to mention. Any other shape raises ``InputError`` naming both
    files and both shapes.
    """
    from miscore.core.components import ImageIO
    from miscore.core.labels import as_label_volume

    truth_io = truths.io_for(pair.truth)
    if type(truth_io).read_label is ImageIO.read_label:  # no image needed
        truth = as_label_volume(truth_io.read(pair.truth), pair.truth)
    else:
        case = truths.load(pair.case_id)
        if case.label is None:
            raise InputError(f"GT {pair.truth}: case {pair.case_id} has no label")
        truth = case.label
    pred_io = truths.registry.io_for(pair.prediction)
    if type(pred_io).read_label is ImageIO.read_label:
        # read first and check the shape, so that a wrong one is not reported as a channel
        # count; then the label checks (integers, >= 0) of read_label
        raw = pred_io.read(pair.prediction)
        detail = _check_shapes(pair, raw, truth)
        if detail and squeezed is not None:
            squeezed.append(detail)
        return as_label_volume(raw, pair.prediction), truth
    # the truth lies on the image's grid, which is all read_label needs of the image
    prediction = pred_io.read_label(pair.prediction, truth)
    _check_shapes(pair, prediction, truth)
    return prediction, truth


def file_shape(volume: Volume) -> tuple[int, ...]:
    """The array shape of the file a volume was read from (readers that record it: NIfTI's
    ``meta["file_shape"]``), else the spatial shape plus channels beyond one."""
    recorded = volume.meta.get("file_shape")
    if isinstance(recorded, list | tuple) and all(isinstance(n, int) for n in recorded):
        return tuple(recorded)
    return volume.spatial_shape + ((volume.channels,) if volume.channels != 1 else ())


def _check_shapes(pair: CasePair, prediction: Volume, truth: Volume) -> str | None:
    """Refuse a prediction that is not one channel on the truth's spatial shape; when its
    file has trailing singleton axes beyond the truth's (read as the one channel), say so."""
    pred_shape, truth_shape = file_shape(prediction), file_shape(truth)
    if prediction.spatial_shape != truth.spatial_shape or prediction.channels != 1:
        raise InputError(
            f"case {pair.case_id}: prediction {pair.prediction} has shape {pred_shape}, ground "
            f"truth {pair.truth} has shape {truth_shape}; a prediction is a label map of the "
            f"ground truth's shape (a trailing axis of size 1 is allowed)"
        )
    extra = pred_shape[len(truth_shape) :]
    if pred_shape[: len(truth_shape)] != truth_shape or set(extra) != {1}:
        return None
    return f"{pair.prediction}: {pred_shape} against {truth_shape}"


def squeezed_note(squeezed: list[str]) -> str:
    """One line for every prediction whose trailing singleton axes were read as its channel."""
    return (
        f"miscore: note: {len(squeezed)} prediction(s) have a trailing axis of size 1 that "
        f"the ground truth lacks, read as the label map's one channel (e.g. {squeezed[0]})"
    )


def _parse_classes(values: list[str] | None) -> list[int] | None:
    if not values:
        return None
    classes = []
    for value in values:
        for item in value.replace(",", " ").split():
            if not item.isdigit():
                raise InputError(f"--classes: {item!r} is not a class id (0, 1, 2, ...)")
            classes.append(int(item))
    return sorted(set(classes))


def print_summary(report: EvaluationReport, title: str) -> None:
    """The summary as a table: a row per class and metric, every metric of the report in
    its order (what ``--metric`` asked for), a section per class."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("class", "metric", "mean", "std", "median", "n", "NaN"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    previous = None
    for s in report.summary:
        shown = str(s.class_id) if s.class_id != previous else ""
        if previous is not None and s.class_id != previous:
            table.add_section()
        previous = s.class_id
        table.add_row(
            shown,
            s.metric,
            *(f"{v:.4f}" for v in (s.mean, s.std, s.median)),
            str(s.n),
            str(s.n_nan) if s.n_nan else "",
        )
    Console().print(table)


PredArg = Annotated[
    Path,
    typer.Argument(help="Folder of predicted label maps (or one file).", show_default=False),
]
GtArg = Annotated[
    Path,
    typer.Argument(help="Folder of ground-truth label maps (or one file).", show_default=False),
]
OutOption = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Write the per-case, per-class rows to this TSV file."),
]
SummaryOption = Annotated[
    Path | None,
    typer.Option("--summary", help="Write the summary (mean, std, median) to this TSV file."),
]
ReportOption = Annotated[
    Path | None, typer.Option("--report", help="Write the whole report to this JSON file.")
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the whole report as JSON instead of a table.")
]
ClassesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--classes",
        "-c",
        help="Class ids to evaluate: '--classes 1,2' or '--classes 1 --classes 2'. "
        "Default: every class > 0 found.",
    ),
]
MetricOption = Annotated[
    list[str] | None,
    typer.Option(
        "--metric",
        "-m",
        help="Metric to compute (repeatable); default: dice iou precision recall "
        "specificity hd95 assd nsd volume_pred_ml volume_true_ml.",
    ),
]
LayoutOption = Annotated[
    str,
    typer.Option(
        "--layout",
        help="Layout of GT: auto or a registered layout (bundled: msd, cases, dicom, image2d, "
        "files: a flat folder).",
    ),
]
NsdToleranceOption = Annotated[
    float | None,
    typer.Option("--nsd-tolerance", help="Tolerance of 'nsd' in mm (default 1.0).", min=0.0),
]


def evaluate(
    ctx: typer.Context,
    pred: PredArg,
    gt: GtArg,
    out: OutOption = None,
    summary_out: SummaryOption = None,
    report_out: ReportOption = None,
    as_json: JsonOption = False,
    classes: ClassesOption = None,
    metric: MetricOption = None,
    layout: LayoutOption = "auto",
    nsd_tolerance: NsdToleranceOption = None,
) -> None:
    """Evaluate predicted label maps against ground truth, pairing files by case id.

    Prints the summary per class and metric; --out writes every case and class as TSV.
    """
    from miscore.pipeline.evaluate import evaluate as run_evaluation

    cli: CliState = state(ctx)
    registry = cli.plugins.registry
    class_ids = _parse_classes(classes)
    specs = _metric_specs(metric, nsd_tolerance, registry)
    truths, pairs, unpredicted = find_pairs(pred, gt, registry, layout)
    if unpredicted:
        cli.log(f"{len(unpredicted)} ground-truth case(s) have no prediction and are skipped")

    squeezed: list[str] = []

    def volumes(advance: Callable[[], None]) -> Iterator[tuple[str, Volume, Volume]]:
        for i, pair in enumerate(pairs, start=1):
            cli.log(f"[{i}/{len(pairs)}] {pair.case_id}")
            yield (pair.case_id, *read_pair(pair, truths, squeezed))
            advance()

    with progress_bar(len(pairs), "evaluating", cli.interactive) as advance:
        report = run_evaluation(volumes(advance), registry, metrics=specs, classes=class_ids)
    if squeezed:  # not progress: shown with --quiet too
        print(squeezed_note(squeezed), file=sys.stderr)
    for path, write in (
        (out, report.write_tsv),
        (summary_out, report.write_summary_tsv),
        (report_out, report.write_json),
    ):
        if path is not None:
            cli.log(f"wrote {write(path)}")
    if as_json:
        print_json(report.model_dump(mode="json", by_alias=True))
    else:
        print_summary(report, f"miscore evaluate: {len(pairs)} case(s)")


def _metric_specs(
    metric: list[str] | None, nsd_tolerance: float | None, registry: Registry
) -> list[str | dict[str, object]]:
    """The metrics asked for (default: the plugins' set), with the NSD tolerance if given."""
    from miscore.pipeline.evaluate import default_metrics

    specs: list[str | dict[str, object]] = list(metric or default_metrics(registry))
    if nsd_tolerance is None:
        return specs
    if "nsd" not in specs:
        raise InputError("--nsd-tolerance: the 'nsd' metric is not asked for")
    return [{"name": "nsd", "tolerance_mm": nsd_tolerance} if s == "nsd" else s for s in specs]
