"""``miscore cv CONFIG --data DATA --out DIR``: cross-validate a config on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from miscore.cli.state import import_tensorflow_quietly, state

if TYPE_CHECKING:
    from miscore.pipeline.crossval import CrossValidationReport


def _print_summary(report: CrossValidationReport) -> None:
    """Every metric of the report, in the order asked for, per class."""
    from miscore.cli.evaluate_cmd import print_summary

    n_cases = len({r.case for r in report.rows})
    title = f"miscore cv: {len(report.folds)} fold(s), {n_cases} test case(s)"
    print_summary(report.evaluation(), title)


ConfigArg = Annotated[Path, typer.Argument(help="The YAML config file.")]
DataOption = Annotated[
    Path | None, typer.Option("--data", help="Dataset folder (else config data.path).")
]
OutOption = Annotated[Path, typer.Option("--out", help="Cross-validation folder to write.")]
SchemeOption = Annotated[
    str | None,
    typer.Option(
        "--scheme",
        help="Validation scheme, seeded by training.seed: kfold (the default), loo, split, "
        "explicit or another registered evaluator (`miscore plugins` lists them).",
        show_default=False,
    ),
]
FoldsOption = Annotated[int, typer.Option("--folds", min=2, help="Folds of kfold.")]
SplitOption = Annotated[
    float | None,
    typer.Option("--split", min=0.0, max=1.0, help="Test fraction of 'split' (default 0.2)."),
]
TrainListOption = Annotated[
    Path | None,
    typer.Option("--train-list", help="'explicit': file of training case ids, one a line."),
]
TestListOption = Annotated[
    Path | None,
    typer.Option("--test-list", help="'explicit': file of test case ids, one a line."),
]
SplitsOption = Annotated[
    Path | None,
    typer.Option("--splits", help="Reuse the folds of a splits.json (--scheme is ignored)."),
]
OnlySplitsOption = Annotated[
    bool, typer.Option("--only-splits", help="Write splits.json and stop (no training).")
]
EpochsOption = Annotated[
    int | None, typer.Option("--epochs", min=1, help="Override training.epochs.")
]
CacheOption = Annotated[
    str | None, typer.Option("--cache", help="Cache location (above MISCORE_CACHE_DIR).")
]
MetricOption = Annotated[
    list[str] | None,
    typer.Option(
        "--metric",
        "-m",
        help="Metric of the report (repeatable; default: evaluation.metrics of the config, "
        "else the plugins' default set).",
    ),
]
OverlaysOption = Annotated[
    bool,
    typer.Option("--overlays/--no-overlays", help="Write a GIF (PNG in 2D) per test case."),
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Keep finished folds in --out, continue the rest.")
]
DecisionOption = Annotated[
    bool,
    typer.Option(
        "--postprocessing-decision/--no-postprocessing-decision",
        help="Write the decided inference.keep_largest into the fold models; the --no "
        "form keeps the config's (the decision is still reported).",
    ),
]


def cv(
    ctx: typer.Context,
    config: ConfigArg,
    data: DataOption = None,
    out: OutOption = Path("crossval"),
    scheme: SchemeOption = None,
    folds: FoldsOption = 3,
    split: SplitOption = None,
    train_list: TrainListOption = None,
    test_list: TestListOption = None,
    splits: SplitsOption = None,
    only_splits: OnlySplitsOption = False,
    epochs: EpochsOption = None,
    cache: CacheOption = None,
    metric: MetricOption = None,
    overlays: OverlaysOption = True,
    resume: ResumeOption = False,
    postprocessing_decision: DecisionOption = True,
) -> None:
    """Cross-validate: split the labelled cases, train each fold, predict and score its
    test cases; write models, predictions, metrics, plots and overlays to --out.

    The folder then works as an ensemble: miscore predict OUT INPUT averages the folds.
    Afterwards, each class keeps only its largest connected component where that raised the
    test cases' mean Dice (nnU-Net's rule); the fold models predict with that decision.
    """
    from miscore.core.config import load_config
    from miscore.core.errors import InputError
    from miscore.pipeline.crossval import cross_validate, plan_splits, read_case_list

    cli = state(ctx)
    settings = load_config(config)
    dataset = data or (Path(settings.data.path) if settings.data.path else None)
    if dataset is None:
        raise InputError("no dataset: give --data DATA or set data.path in the config")
    split_options: dict[str, Any] = {
        "scheme": scheme,
        "folds": folds,
        "split": split,
        "train_list": read_case_list(train_list) if train_list is not None else None,
        "test_list": read_case_list(test_list) if test_list is not None else None,
        "splits_file": splits,
        "plugins": cli.plugins,
    }
    if only_splits:
        made, path = plan_splits(settings, dataset, out, **split_options)
        for fold in made:
            print(f"{fold.name}: {len(fold.train)} train, {len(fold.test)} test")
        print(f"folds: {path}")
        return
    import_tensorflow_quietly(cli.debug)
    report = cross_validate(
        settings, dataset, out, **split_options, epochs=epochs, cache=cache,
        metrics=list(metric) if metric else None, overlays=overlays, resume=resume,
        apply_postprocessing=postprocessing_decision, local_plugins=cli.local_plugins,
        log=cli.log,
    )  # fmt: skip
    if not cli.quiet:
        _print_summary(report)
    print(_finished_line(report, out))


def _finished_line(report: CrossValidationReport, out: Path) -> str:
    """The last line: where the folder is, and the postprocessing decision."""
    decided = ""
    if report.postprocessing is not None:  # the per-class Dice went to the log
        setting = report.postprocessing.keep_largest
        written = "" if report.postprocessing.applied else ", not written"
        decided = f"; inference.keep_largest {str(setting).lower()}{written}"
    return (
        f"cross-validation: {out} ({len(report.folds)} folds; report {out / 'report.json'}"
        f"{decided})"
    )
