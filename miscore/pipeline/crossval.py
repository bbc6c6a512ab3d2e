"""Cross-validation: split the cases, train each fold, predict and score its test cases.

::

    report = cross_validate(config, "data", "cv", scheme="kfold", folds=5)
    report.stats(1, "dice").mean

The cases are split by a registered evaluator (``kfold``, ``loo``, ``split``, ``explicit``)
seeded with ``training.seed``, or read back from a ``splits.json``. The output folder::

    splits.json              the folds (feed back with --splits / splits_file=)
    fold_<i>/model/          the fold's model folder (model.keras, history.tsv, curves.png...)
    fold_<i>/train.log       the fold's training log
    fold_<i>/predictions/    the fold's test cases predicted, written by their input's IO
    fold_<i>/overlays/       per test case: image | truth | prediction (GIF; PNG in 2D)
    metrics.tsv              every test case and class of every fold, ``fold`` column first
    summary.tsv              mean, std, median per class and metric over all test cases
    report.json              the ``CrossValidationReport``, with the postprocessing decision
    plots/curves_<m>.png     every logged training metric, a line per fold
    plots/box_<m>.png        Dice (and HD95) per class over the test cases
    crossval.json            written last: marks the folder as a finished ensemble, so
                             ``miscore predict CV_DIR ...`` averages the fold models

After the folds, the test cases' predictions decide per class whether keeping only the
largest connected component raises the mean Dice (``miscore.pipeline.postprocessing``); the decision
is in the report and, unless ``apply_postprocessing=False``, in every fold model's
``inference.keep_largest``, so predicting with the models (or the folder) applies it.

Training and prediction import TensorFlow inside the functions that need it.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from miscore.core.atomic import write_text_atomic
from miscore.core.components import Evaluator, Fold
from miscore.core.config import Config
from miscore.core.errors import ConfigError, InputError
from miscore.pipeline.evaluate import (
    EvaluationReport,
    EvaluationRow,
    FoldsFile,
    MetricSummary,
    default_metrics,
    read_folds_file,
    read_report,
    summarize,
    write_folds,
)
from miscore.pipeline.modeldir import CROSSVAL_FILE, EnsembleManifest, ensemble_members
from miscore.pipeline.postprocessing import LargestComponentTrial, PostprocessingDecision

if TYPE_CHECKING:
    from miscore.core.plugins import PluginManager
    from miscore.core.registry import Registry
    from miscore.core.volume import Volume
    from miscore.data.dataset import Dataset
    from miscore.pipeline.inference import Predictor

#: the options of a scheme (keyword, CLI flag) and the evaluator parameter each one sets
SCHEME_OPTIONS: dict[str, tuple[str, str]] = {
    "folds": ("--folds", "folds"),
    "split": ("--split", "test_fraction"),
    "train_list": ("--train-list", "train"),
    "test_list": ("--test-list", "test"),
}

FORMAT = 1
SPLITS_FILE = "splits.json"
REPORT_FILE = "report.json"
METRICS_FILE = "metrics.tsv"
SUMMARY_FILE = "summary.tsv"
PLOTS = "plots"
#: metrics drawn as box plots per class, when evaluated
BOX_METRICS: tuple[str, ...] = ("dice", "hd95")


# --- the report ------------------------------------------------------------------------------


class FoldResult(BaseModel):
    """One fold: its cases, where its model and outputs are, its training and its scores."""

    model_config = ConfigDict(extra="forbid")

    index: int
    name: str = Field(description="the evaluator's name of the fold")
    train: list[str]
    test: list[str]
    model_dir: str = Field(description="the fold's model folder, relative to the CV folder")
    predictions: dict[str, str] = Field(
        default_factory=dict, description="test case -> prediction file (relative)"
    )
    overlays: dict[str, str] = Field(
        default_factory=dict, description="test case -> overlay GIF/PNG (relative)"
    )
    epochs: int = 0
    monitor: str = "loss"
    best: float | None = Field(None, description="best value of the monitored loss")
    history: list[dict[str, float]] = Field(default_factory=list, description="per epoch")
    rows: list[EvaluationRow] = Field(default_factory=list, description="test case x class")


class CrossValidationReport(BaseModel):
    """Every fold of a cross-validation and the summary over all test cases."""

    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT
    evaluator: dict[str, Any] | None = Field(
        None, description="the evaluator config entry that made the folds ({name, **params})"
    )
    seed: int
    case_ids: list[str] = Field(description="every labelled case that was split")
    metrics: list[str]
    classes: list[int]
    folds: list[FoldResult]
    summary: list[MetricSummary] = Field(
        default_factory=list, description="per class and metric over every fold's test cases"
    )
    postprocessing: PostprocessingDecision | None = Field(
        None, description="which classes keep only their largest component, decided by Dice"
    )

    @property
    def rows(self) -> list[EvaluationRow]:
        """Every fold's rows, fold by fold."""
        return [row for fold in self.folds for row in fold.rows]

    def evaluation(self) -> EvaluationReport:
        """All test cases as one ``EvaluationReport`` (for its TSV writers and columns)."""
        return EvaluationReport(
            metrics=self.metrics, classes=self.classes, rows=self.rows, summary=self.summary
        )

    def stats(self, class_id: int, metric: str) -> MetricSummary:
        """The summary of one metric for one class over all test cases."""
        return self.evaluation().stats(class_id, metric)

    def to_tsv(self) -> str:
        """Rows as TSV: ``fold case class <metrics...> empty``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
        writer.writerow(["fold", "case", "class", *self.metrics, "empty"])
        for fold in self.folds:
            part = EvaluationReport(metrics=self.metrics, classes=self.classes, rows=fold.rows)
            for line in list(csv.reader(io.StringIO(part.to_tsv()), delimiter="\t"))[1:]:
                writer.writerow([f"fold_{fold.index}", *line])
        return buffer.getvalue()

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True) + "\n"

    def write_json(self, path: Path | str) -> Path:
        return write_text_atomic(path, self.to_json())

    @classmethod
    def read_json(cls, path: Path | str) -> CrossValidationReport:
        """Read a ``report.json`` written by ``cross_validate``."""
        return read_report(cls, path, "a cross-validation report")


# --- splitting -------------------------------------------------------------------------------


def read_case_list(path: Path | str) -> list[str]:
    """Case ids from a text file: one per line; blank lines and ``#`` comments are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such case list") from None
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [i for i in ids if i]


def default_scheme(registry: Registry) -> str:
    """The scheme when none is given: the plugins' ``evaluator`` default (bundled: kfold)."""
    chosen = registry.defaults.get("evaluator")
    name = chosen.get("name") if isinstance(chosen, dict) else chosen
    if not isinstance(name, str):
        raise InputError(
            "scheme: none given, and no installed plugin supplies a default evaluator; "
            f"give one of: {', '.join(registry.names('evaluator')) or 'none installed'}"
        )
    return name


def evaluator_spec(
    scheme: str,
    registry: Registry,
    *,
    folds: int = 3,
    split: float | None = None,
    train_list: Sequence[str] | None = None,
    test_list: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The evaluator config entry ``{name, **params}`` of a scheme and its options.

    The scheme is the name of a registered evaluator. Each option sets the evaluator
    parameter ``SCHEME_OPTIONS`` names: ``folds`` when the evaluator takes one, the others
    only when given, and refused (naming the schemes that take them) when it does not.
    The entry is checked by creating the evaluator.
    """
    names = registry.names("evaluator")
    if scheme not in names:
        raise InputError(
            f"scheme: unknown scheme {scheme!r}; installed evaluators: {', '.join(names)}"
        )
    fields = registry.get_evaluator(scheme).Params.model_fields
    given = {"folds": folds, "split": split, "train_list": train_list, "test_list": test_list}
    spec: dict[str, Any] = {"name": scheme}
    for option, value in given.items():
        flag, param = SCHEME_OPTIONS[option]
        if param in fields and value is not None:
            spec[param] = list(value) if isinstance(value, (list, tuple)) else value
        elif value is not None and option != "folds":
            takers = [n for n in names if param in registry.get_evaluator(n).Params.model_fields]
            raise InputError(
                f"{flag} sets {param!r}, which the {scheme!r} scheme does not take; "
                f"add --scheme {' or '.join(takers) or '(none installed takes it)'}"
            )
    try:
        registry.create("evaluator", spec, "scheme")
    except ConfigError as exc:
        flags = [flag for flag, param in SCHEME_OPTIONS.values() if param in fields]
        hint = (
            f"; options for them: {', '.join(flags)} (or --splits to reuse folds)" if flags else ""
        )
        raise ConfigError(f"{exc}{hint}") from None
    return spec


def make_folds(
    case_ids: Sequence[str],
    plugins: PluginManager,
    spec: Mapping[str, Any] | None,
    seed: int,
    splits_file: Path | str | None = None,
) -> tuple[list[Fold], dict[str, Any] | None]:
    """Folds of ``case_ids`` by the evaluator ``spec``, or those of ``splits_file``.

    Returns the folds and the evaluator entry to record. A splits file is checked against
    the case ids by the ``explicit`` evaluator; the entry recorded is the one it holds.
    """
    if splits_file is not None:
        recorded = read_folds_file(splits_file).evaluator
        spec = {"name": "explicit", "file": str(splits_file)}
        evaluator = plugins.registry.create("evaluator", spec, "--splits")
        assert isinstance(evaluator, Evaluator)
        return evaluator.split(case_ids, seed), recorded
    if spec is None:
        raise InputError("no validation scheme: give a scheme or a splits file")
    evaluator = plugins.registry.create("evaluator", dict(spec), "scheme")
    assert isinstance(evaluator, Evaluator)
    return evaluator.split(case_ids, seed), evaluator.config()


def plan_splits(
    config: Config,
    data: Path | str,
    out: Path | str,
    *,
    scheme: str | None = None,
    folds: int = 3,
    split: float | None = None,
    train_list: Sequence[str] | None = None,
    test_list: Sequence[str] | None = None,
    splits_file: Path | str | None = None,
    plugins: PluginManager | None = None,
) -> tuple[list[Fold], Path]:
    """Split the labelled cases of ``data`` and write ``out/splits.json`` (no training)."""
    from miscore.core.plugins import PluginManager
    from miscore.data.dataset import Dataset

    plugins = plugins or PluginManager()
    scheme = scheme or default_scheme(plugins.registry)
    dataset = Dataset.discover(data, plugins.registry, config.data.layout, config.data.io)
    return _split(config, dataset, Path(out), plugins, scheme, folds, split, train_list,
                  test_list, splits_file)  # fmt: skip


def _split(
    config: Config,
    dataset: Dataset,
    out: Path,
    plugins: PluginManager,
    scheme: str,
    folds: int,
    split: float | None,
    train_list: Sequence[str] | None,
    test_list: Sequence[str] | None,
    splits_file: Path | str | None,
) -> tuple[list[Fold], Path]:
    ids = dataset.labelled_ids
    if not ids:
        raise InputError(f"{dataset.root}: no labelled cases to cross-validate")
    spec = None if splits_file is not None else evaluator_spec(
        scheme, plugins.registry, folds=folds, split=split, train_list=train_list,
        test_list=test_list,
    )  # fmt: skip
    made, recorded = make_folds(ids, plugins, spec, config.training.seed, splits_file)
    path = write_folds(
        made, out / SPLITS_FILE, evaluator=recorded, seed=config.training.seed, case_ids=ids
    )
    return made, path


# --- the run ---------------------------------------------------------------------------------


class _FoldLog:
    """Passes log lines on and keeps them in ``train.log`` (rewritten atomically; a resumed
    run adds to the lines already there)."""

    def __init__(self, path: Path, prefix: str, log: Callable[[str], None]) -> None:
        self.path = path
        self.prefix = prefix
        self.log = log
        self.lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []

    def __call__(self, message: str) -> None:
        self.lines.append(message)
        write_text_atomic(self.path, "\n".join(self.lines) + "\n")
        self.log(f"{self.prefix}{message}")


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _predict_fold(
    predictor: Predictor,
    dataset: Dataset,
    fold: FoldResult,
    root: Path,
    overlays: bool,
    log: Callable[[str], None],
    trial: LargestComponentTrial,
    keep_largest: list[int],
) -> Iterator[tuple[str, Volume, Volume]]:
    """Predict, write and picture each test case; yield ``(id, prediction, truth)``.

    Each case is predicted once without postprocessing and scored into ``trial``; then the
    largest component of the ``keep_largest`` classes (the config's) is kept and the
    configured postprocessors run, in the order ``miscore predict`` uses.
    """
    from miscore.pipeline.visualize import overlay_suffix, save_overlay

    folder = root / f"fold_{fold.index}"
    plugins = predictor.plugins
    for n, case_id in enumerate(fold.test, 1):
        case = dataset.load(case_id)
        if case.label is None:
            raise InputError(f"case {case_id}: has no label; test cases need one to be scored")
        raw, _ = predictor.predict_case(case, postprocess=False)
        trial.add(case_id, raw.array, case.label.array)
        # as `miscore predict` would: the config's keep_largest, then inference.postprocessing
        label = predictor.postprocess(raw, keep_largest=list(keep_largest))
        source = dataset.source(case_id)
        writer = dataset.io_for(source.images[0])
        target = folder / "predictions" / f"{case_id}{writer.write_suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        path = writer.write(label, target, reference=case.image)
        plugins.prediction_written(case_id=case_id, path=path, prediction=label)
        fold.predictions[case_id] = _relative(path, root)
        if overlays and case.image.ndim in (2, 3):
            picture = folder / "overlays" / f"{case_id}{overlay_suffix(case.image)}"
            save_overlay(case.image, case.label, label, picture)
            fold.overlays[case_id] = _relative(picture, root)
        log(f"fold_{fold.index}: [{n}/{len(fold.test)}] {case_id} -> {path}")
        yield case_id, label, case.label


def cross_validate(
    config: Config,
    data: Path | str,
    out: Path | str,
    *,
    scheme: str | None = None,
    folds: int = 3,
    split: float | None = None,
    train_list: Sequence[str] | None = None,
    test_list: Sequence[str] | None = None,
    splits_file: Path | str | None = None,
    plugins: PluginManager | None = None,
    epochs: int | None = None,
    cache: str | None = None,
    metrics: Sequence[str | Mapping[str, Any]] | None = None,
    overlays: bool = True,
    resume: bool = False,
    apply_postprocessing: bool = True,
    local_plugins: Sequence[str] = (),
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> CrossValidationReport:
    """Split the labelled cases of ``data``, train each fold, predict and score its test cases.

    Args:
        config: a validated config (the same for every fold).
        data: the dataset folder (any supported layout).
        out: the cross-validation folder to write (see the module docstring).
        scheme: a registered evaluator's name (bundled: ``kfold``, ``loo``, ``split``,
            ``explicit``); seeded by ``training.seed``. The next four options set the
            evaluator's ``folds``, ``test_fraction``, ``train`` and ``test`` (``evaluator_spec``).
        folds: the number of folds (of ``kfold``).
        split: the test fraction (of ``split``; default the evaluator's, 0.2).
        train_list: training case ids (of ``explicit``; default: every case not tested).
        test_list: test case ids (of ``explicit``; default: every case not trained on).
        splits_file: reuse the folds of a ``splits.json``; ``scheme`` and its options are
            then ignored.
        plugins: the plugin manager; a new one (installed plugins) when None.
        epochs: overrides ``training.epochs``.
        cache: the cache location; every fold shares the preprocessed cases.
        metrics: the metrics of the report (names or ``{name, **params}``); None: the
            config's ``evaluation.metrics``, else the plugins' default (``default_metrics``).
        overlays: write a GIF (PNG in 2D) per test case.
        resume: keep the folds already trained in ``out`` and continue an interrupted one;
            the folds of ``out/splits.json`` are reused when no ``splits_file`` is given.
        apply_postprocessing: write the decided ``inference.keep_largest`` into every fold
            model; False keeps the config's. The decision is computed and reported either
            way; the predictions and metrics of the folds follow the config's setting.
        local_plugins: ``--plugin`` modules, handed to worker processes.
        log: where progress lines go.
    Returns:
        The report, also written to ``out/report.json``.
    """
    from miscore.core.plugins import PluginManager
    from miscore.data.dataset import Dataset

    root = Path(out)
    plugins = plugins or PluginManager(local_plugins=local_plugins)
    scheme = scheme or default_scheme(plugins.registry)
    splits_file = _check_output(root, resume, splits_file, log)
    dataset = Dataset.discover(data, plugins.registry, config.data.layout, config.data.io)
    made, splits_path = _split(config, dataset, root, plugins, scheme, folds, split, train_list,
                               test_list, splits_file)  # fmt: skip
    recorded = read_folds_file(splits_path)
    log(f"{len(made)} fold(s) of {len(recorded.case_ids)} cases; folds in {splits_path}")
    if metrics is None:
        metrics = config.evaluation.metric_entries() or default_metrics(plugins.registry)
    run = _FoldRun(config=config, data=data, root=root, plugins=plugins, dataset=dataset,
                   epochs=epochs, cache=cache, metrics=metrics, overlays=overlays, resume=resume,
                   local_plugins=local_plugins, log=log,
                   used=[] if splits_file is not None else [("evaluator", scheme)])  # fmt: skip
    results = [run.fold(index, fold) for index, fold in enumerate(made)]
    report = run.report(recorded, results, apply_postprocessing)
    _write_report(report, root, config)
    log(f"cross-validation written to {root}")
    return report


def _check_output(
    root: Path, resume: bool, splits_file: Path | str | None, log: Callable[[str], None]
) -> Path | str | None:
    """Refuse to overwrite a finished cross-validation; on ``resume``, the splits file to
    reuse (the given one, else the folder's own)."""
    if not resume and (root / CROSSVAL_FILE).exists():
        raise InputError(
            f"{root}: already holds a cross-validation; use --resume to continue it or "
            "choose another output folder"
        )
    if resume and splits_file is None and (root / SPLITS_FILE).is_file():
        splits_file = root / SPLITS_FILE
        log(f"resuming: folds from {splits_file}")
    return splits_file


@dataclass
class _FoldRun:
    """What every fold of one cross-validation shares; ``fold`` trains, predicts and scores
    one, and collects the test cases for the postprocessing decision in ``trial``."""

    config: Config
    data: Path | str
    root: Path
    plugins: PluginManager
    dataset: Dataset
    epochs: int | None
    cache: str | None
    metrics: Sequence[str | Mapping[str, Any]]
    overlays: bool
    resume: bool
    local_plugins: Sequence[str]
    log: Callable[[str], None]
    #: components to record in each fold model's miscore.json besides the training ones
    used: list[tuple[str, str]] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.classes = list(range(1, self.config.data.classes))
        #: the config's own keep_largest classes, applied to the fold's predictions
        self.configured = self.config.inference.largest_component_classes(self.config.data.classes)
        self.trial = LargestComponentTrial(self.classes)

    def fold(self, index: int, fold: Fold) -> FoldResult:
        """Train fold ``index`` on its training cases, then predict and score its test cases."""
        from miscore.pipeline.evaluate import evaluate
        from miscore.pipeline.inference import load_model
        from miscore.pipeline.training import train

        folder = self.root / f"fold_{index}"
        model_dir = folder / "model"
        result = FoldResult(
            index=index,
            name=fold.name,
            train=fold.train,
            test=fold.test,
            model_dir=_relative(model_dir, self.root),
        )
        fold_log = _FoldLog(folder / "train.log", f"fold_{index}: ", self.log)
        fold_log(f"training on {len(fold.train)} cases, testing on {len(fold.test)}")
        trained = train(
            self.config,
            self.data,
            model_dir,
            plugins=self.plugins,
            epochs=self.epochs,
            resume=self.resume,
            cache=self.cache,
            local_plugins=self.local_plugins,
            case_ids=fold.train,
            log=fold_log,
            also_used=self.used,
        )
        result.epochs, result.monitor, result.best = trained.epochs, trained.monitor, trained.best
        result.history = trained.history
        predictor = load_model(model_dir, self.plugins)
        cases = _predict_fold(predictor, self.dataset, result, self.root, self.overlays,
                              self.log, self.trial, self.configured)  # fmt: skip
        scored = evaluate(cases, self.plugins.registry, metrics=self.metrics, classes=self.classes)
        result.rows, self.metric_names = scored.rows, scored.metrics
        _release_models()
        return result

    def report(
        self, recorded: FoldsFile, results: list[FoldResult], apply_postprocessing: bool
    ) -> CrossValidationReport:
        """The report of the folds run, with the summary and the postprocessing decision
        (logged, and stored in the fold models when ``apply_postprocessing``)."""
        requested = [str(m if isinstance(m, str) else m["name"]) for m in self.metrics]
        report = CrossValidationReport(
            evaluator=recorded.evaluator,
            seed=self.config.training.seed,
            case_ids=recorded.case_ids,
            metrics=self.metric_names or requested,
            classes=self.classes,
            folds=results,
        )
        report.summary = summarize(report.rows, report.metrics, self.classes)
        model_dirs = [self.root / r.model_dir for r in results]
        decision = _settle_postprocessing(self.trial, self.config, model_dirs, apply_postprocessing)
        self.log(decision.describe())
        report.postprocessing = decision
        return report


def _write_report(report: CrossValidationReport, root: Path, config: Config) -> None:
    """The tables, report.json and plots; crossval.json last (it marks the folder done)."""
    from miscore.pipeline.visualize import plot_fold_curves, plot_metric_boxes

    write_text_atomic(root / METRICS_FILE, report.to_tsv())
    report.evaluation().write_summary_tsv(root / SUMMARY_FILE)
    report.write_json(root / REPORT_FILE)
    plots = root / PLOTS
    plot_fold_curves({f"fold_{r.index}": r.history for r in report.folds}, plots)
    class_names = config.data.class_names
    for metric in BOX_METRICS:
        if metric in report.metrics and report.rows:
            plot_metric_boxes(report.evaluation(), metric, plots / f"box_{metric}.png", class_names)
    manifest = EnsembleManifest(models=[r.model_dir for r in report.folds])
    write_text_atomic(root / CROSSVAL_FILE, manifest.model_dump_json(indent=2) + "\n")


def _settle_postprocessing(
    trial: LargestComponentTrial, config: Config, model_dirs: Sequence[Path], apply: bool
) -> PostprocessingDecision:
    """Decide ``inference.keep_largest`` from the test cases and store it in every fold model
    (or, when not ``apply``, the config's own setting, which a resumed run may need back)."""
    from miscore.pipeline.modeldir import (
        ModelDir,
    )

    decision = trial.decide()
    decision.applied = apply
    setting = decision.keep_largest if apply else config.inference.keep_largest
    for model_dir in model_dirs:
        folder = ModelDir(model_dir)
        stored = folder.config()
        if stored.inference.keep_largest != setting:
            stored.inference.keep_largest = setting
            folder.write_config(stored)
    return decision


def _release_models() -> None:
    """Free the fold's Keras graphs before the next fold builds its own."""
    import keras

    keras.backend.clear_session()


def fold_histories(folder: Path | str) -> dict[str, list[dict[str, float]]]:
    """Each fold's ``history.tsv`` of a finished cross-validation folder, by fold folder."""
    from miscore.pipeline.training import read_history

    members = ensemble_members(folder)
    if members is None:
        raise InputError(f"{folder}: not a finished cross-validation folder ({CROSSVAL_FILE})")
    return {m.parent.name: read_history(m / "history.tsv") for m in members}
