"""``miscore evaluate PRED GT``: score predictions against ground truth, per case and class."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from miscore.cli.state import CliState, print_json, state
from miscore.errors import InputError

if TYPE_CHECKING:
    from miscore.evaluate import EvaluationReport
    from miscore.registry import Registry
    from miscore.volume import Volume


def list_cases(folder: Path, registry: Registry, what: str) -> dict[str, Path]:
    """Case id -> path of every readable file (or DICOM folder) directly in ``folder``.

    A single file stands for one case. Hidden entries and files no IO plugin reads (e.g. a
    ``dataset.json``) are skipped; two files giving one case id are an error.
    """
    if not folder.exists():
        raise InputError(f"{what} {folder}: no such file or folder")
    candidates = [folder] if folder.is_file() else sorted(folder.iterdir())
    cases: dict[str, Path] = {}
    for path in candidates:
        if path.name.startswith("."):
            continue
        try:
            io = registry.io_for(path)
        except InputError:
            continue
        case_id = io.case_id(path)
        if case_id in cases:
            raise InputError(
                f"{what} {folder}: {cases[case_id].name} and {path.name} are both case "
                f"{case_id!r}; keep one file per case"
            )
        cases[case_id] = path
    if not cases:
        raise InputError(f"{what} {folder}: no readable label files found")
    return cases


def read_labels(path: Path, registry: Registry) -> Volume:
    """A label map read by the IO plugin that handles ``path``, checked to be integer classes."""
    from miscore.labels import as_label_volume

    return as_label_volume(registry.io_for(path).read(path), path)


def pair_cases(
    pred: Path, gt: Path, registry: Registry
) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """``(case_id, prediction path, truth path)`` per prediction, and the unpredicted ids.

    Every prediction needs a ground truth (else ``InputError``); ground truths without a
    prediction are returned so the caller can report them (a test fold is often a subset).
    When both arguments are single files they form one pair whatever their names.
    """
    if pred.is_file() and gt.is_file():
        predictions = list_cases(pred, registry, "PRED")
        (case_id,) = predictions
        return [(case_id, pred, gt)], []
    predictions = list_cases(pred, registry, "PRED")
    truths = list_cases(gt, registry, "GT")
    missing = sorted(set(predictions) - set(truths))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(
            f"GT {gt}: no ground truth for {len(missing)} predicted case(s): {shown}; "
            f"file names must give the same case ids"
        )
    pairs = [(c, p, truths[c]) for c, p in predictions.items()]
    return pairs, sorted(set(truths) - set(predictions))


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


def _print_summary(report: EvaluationReport, n_cases: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"miscore evaluate: {n_cases} case(s)")
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


def evaluate(
    ctx: typer.Context,
    pred: Annotated[
        Path,
        typer.Argument(help="Folder of predicted label maps (or one file).", show_default=False),
    ],
    gt: Annotated[
        Path,
        typer.Argument(help="Folder of ground-truth label maps (or one file).", show_default=False),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the per-case, per-class rows to this TSV file."),
    ] = None,
    summary_out: Annotated[
        Path | None,
        typer.Option("--summary", help="Write the summary (mean, std, median) to this TSV file."),
    ] = None,
    report_out: Annotated[
        Path | None, typer.Option("--report", help="Write the whole report to this JSON file.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole report as JSON instead of a table.")
    ] = False,
    classes: Annotated[
        list[str] | None,
        typer.Option(
            "--classes",
            "-c",
            help="Class ids to evaluate: '--classes 1,2' or '--classes 1 --classes 2'. "
            "Default: every class > 0 found.",
        ),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            "-m",
            help="Metric to compute (repeatable); default: dice iou precision recall "
            "specificity hd95 assd nsd volume_pred_ml volume_true_ml.",
        ),
    ] = None,
    nsd_tolerance: Annotated[
        float | None,
        typer.Option("--nsd-tolerance", help="Tolerance of 'nsd' in mm (default 1.0).", min=0.0),
    ] = None,
) -> None:
    """Evaluate predicted label maps against ground truth, pairing files by case id.

    Prints the summary per class and metric; --out writes every case and class as TSV.
    """
    from miscore.evaluate import DEFAULT_METRICS
    from miscore.evaluate import evaluate as run_evaluation

    cli: CliState = state(ctx)
    registry = cli.plugins.registry
    class_ids = _parse_classes(classes)
    specs: list[str | dict[str, object]] = list(metric or DEFAULT_METRICS)
    if nsd_tolerance is not None:
        if "nsd" not in specs:
            raise InputError("--nsd-tolerance: the 'nsd' metric is not asked for")
        specs = [{"name": "nsd", "tolerance_mm": nsd_tolerance} if s == "nsd" else s for s in specs]
    pairs, unpredicted = pair_cases(pred, gt, registry)
    if unpredicted:
        cli.log(f"{len(unpredicted)} ground-truth case(s) have no prediction and are skipped")

    def volumes() -> Iterator[tuple[str, Volume, Volume]]:
        for i, (case_id, pred_path, gt_path) in enumerate(pairs, start=1):
            cli.log(f"[{i}/{len(pairs)}] {case_id}")
            yield case_id, read_labels(pred_path, registry), read_labels(gt_path, registry)

    report = run_evaluation(volumes(), registry, metrics=specs, classes=class_ids)
    if out is not None:
        cli.log(f"wrote {report.write_tsv(out)}")
    if summary_out is not None:
        cli.log(f"wrote {report.write_summary_tsv(summary_out)}")
    if report_out is not None:
        cli.log(f"wrote {report.write_json(report_out)}")
    if as_json:
        print_json(report.model_dump(mode="json", by_alias=True))
    else:
        _print_summary(report, len(pairs))
