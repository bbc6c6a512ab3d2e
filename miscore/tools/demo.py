"""``miscore demo``: the whole pipeline on synthetic phantoms, end to end, with a report.

synth (training and held-out cases) -> analyze + plan a config -> validate it -> cache ->
train the planned 3D U-Net (plan --budget) -> sliding-window prediction of the held-out
cases -> evaluation -> report folder (metrics TSV, learning curves, Dice box plot, GIF
overlays, report.html). Sized to finish in under 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from miscore.core.errors import InputError
from miscore.core.plugins import PluginManager
from miscore.tools.planning import Plan

if TYPE_CHECKING:
    from miscore.core.config import Config
    from miscore.core.registry import Registry
    from miscore.core.volume import Case, Volume
    from miscore.pipeline.evaluate import EvaluationReport


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: the full run, or ``--quick`` for a smoke test."""

    train_cases: int
    test_cases: int
    shape: tuple[int, int, int]
    #: ``miscore plan --budget``: seconds of training, planned by timing this machine
    budget_s: float | None = None
    #: --quick only: a fixed tiny network (too short a run for the budget planner's timing)
    quick: tuple[int, int, int] | None = None  # filters, depth, epochs


FULL = DemoSize(12, 4, (48, 48, 48), budget_s=150.0)
QUICK = DemoSize(4, 2, (32, 32, 32), quick=(4, 2, 3))
CLASSES = 3


class DemoResult(BaseModel):
    """What the demo produced and how well it did."""

    out: str
    report: str
    dice: dict[str, float]
    mean_foreground_dice: float
    seconds: float
    epochs: int


def run_demo(
    out: Path | str = "demo-out",
    *,
    quick: bool = False,
    plugins: PluginManager | None = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> DemoResult:
    """Run the demo into ``out`` (which must not exist or be empty) and return the figures."""
    from miscore.pipeline.inference import predict
    from miscore.pipeline.training import train

    started = time.perf_counter()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not empty; give a new --out folder")
    size = QUICK if quick else FULL
    plugins = plugins or PluginManager()

    log(f"1/6 synthetic phantoms: {size.train_cases} training, {size.test_cases} held-out cases")
    _write_phantoms(out, size, plugins.registry)

    log("2/6 fingerprint and plan (miscore analyze + miscore plan)")
    config_path = _plan(out, size, plugins, log)
    config = _load_checked(config_path, plugins.registry)

    log(
        f"3/6 training a 3D U-Net: {config.training.epochs} epochs of "
        f"{config.training.steps_per_epoch} steps"
    )
    result = train(config, out / "data", out / "model", plugins=plugins, log=log)

    log("4/6 sliding-window prediction of the held-out cases")
    predict(out / "model", [out / "test"], out / "predictions", plugins=plugins, log=log)

    log("5/6 evaluation")
    held_out = _HeldOut.read(out, plugins.registry)
    report = held_out.evaluate(plugins.registry)

    log("6/6 report")
    return _write_report(out, size, held_out, report, config_path, result.epochs, started)


def _write_phantoms(out: Path, size: DemoSize, registry: Registry) -> None:
    """The training phantoms in ``out/data``, the held-out ones (oblique) in ``out/test``."""
    from miscore.tools.synth import write_dataset

    write_dataset(out / "data", registry, size.train_cases, size.shape, CLASSES, seed=0)
    write_dataset(
        out / "test", registry, size.test_cases, size.shape, CLASSES, seed=1000, oblique=True
    )


def _plan(out: Path, size: DemoSize, plugins: PluginManager, log: Callable[[str], None]) -> Path:
    """Analyze and plan as ``miscore plan`` does (with ``--budget`` unless quick); write the
    config, with the demo's inference choices, to ``out/config.yaml``."""
    from miscore.core.atomic import write_text_atomic
    from miscore.data.dataset import Dataset
    from miscore.tools.analysis import analyze_dataset
    from miscore.tools.budget import plan_for_budget
    from miscore.tools.planning import plan_config

    data = Dataset.discover(out / "data", plugins.registry)
    plan = plan_config(analyze_dataset(data), plugins, memory_gb=2.0, data_path=str(out / "data"))
    plan.config.cache.path = str(out / "cache")
    if size.budget_s is not None:
        log(f"   planning for {size.budget_s / 60:.3g} min of training on this machine")
        plan = plan_for_budget(plan, data, plugins, size.budget_s, log=log)
    elif size.quick is not None:
        _quick_overrides(plan, *size.quick)
    config = plan.config
    config.inference.tta = True
    config.inference.keep_largest = True
    plan.reasons["inference.tta"] = "mirroring at test time: cheap at this size"
    plan.reasons["inference.keep_largest"] = "one organ and one tumour per phantom"
    config_path = out / "config.yaml"
    write_text_atomic(config_path, plan.to_yaml())
    return config_path


def _load_checked(config_path: Path, registry: Registry) -> Config:
    """The config as a user would run it: validated from the file, defaults applied."""
    from miscore.core.config import apply_defaults, check_components, load_config

    config = apply_defaults(load_config(config_path), registry)
    check_components(config, registry)
    return config


@dataclass(frozen=True)
class _HeldOut:
    """The held-out cases, each with its prediction read back on the image's grid."""

    ids: list[str]
    cases: dict[str, Case]
    predictions: dict[str, Volume]

    @classmethod
    def read(cls, out: Path, registry: Registry) -> _HeldOut:
        from miscore.data.dataset import Dataset

        test = Dataset.discover(out / "test", registry)
        folder = out / "predictions"
        io = registry.io_for(next(folder.iterdir()))
        cases = {case_id: test.load(case_id) for case_id in test.ids}
        predictions = {
            case_id: io.read_label(folder / f"{case_id}.nii.gz", case.image)
            for case_id, case in cases.items()
        }
        return cls(list(test.ids), cases, predictions)

    def evaluate(self, registry: Registry) -> EvaluationReport:
        from miscore.pipeline.evaluate import evaluate

        labelled = (
            (case_id, self.predictions[case_id], case.label)
            for case_id, case in self.cases.items()
            if case.label is not None
        )
        return evaluate(labelled, registry, classes=range(1, CLASSES))


def _write_report(
    out: Path,
    size: DemoSize,
    held_out: _HeldOut,
    report: EvaluationReport,
    config_path: Path,
    epochs: int,
    started: float,
) -> DemoResult:
    """Metrics tables, curves, the Dice box plot, GIF overlays, report.html and demo.json."""
    from miscore.core.atomic import write_text_atomic
    from miscore.pipeline.visualize import plot_metric_boxes, save_overlay
    from miscore.tools.report import write_html_report
    from miscore.tools.synth import class_names

    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    report.write_tsv(folder / "metrics.tsv")
    report.write_summary_tsv(folder / "summary.tsv")
    report.write_json(folder / "metrics.json")
    names = class_names(CLASSES)
    boxplot = plot_metric_boxes(report, "dice", folder / "dice_boxplot.png", names)
    curves = folder / "curves.png"
    shutil.copyfile(out / "model" / "curves.png", curves)
    overlays = [
        save_overlay(
            held_out.cases[case_id].image,
            held_out.cases[case_id].label,
            held_out.predictions[case_id],
            folder / "overlays" / f"{case_id}.gif",
        )
        for case_id in held_out.ids
    ]
    dice = {names[c]: report.stats(c, "dice").mean for c in report.classes}
    mean_dice = sum(dice.values()) / len(dice)
    seconds = time.perf_counter() - started
    html = write_html_report(
        folder / "report.html",
        title="miscore demo: synthetic phantoms",
        report=report,
        config_yaml=config_path.read_text(encoding="utf-8"),
        curves=curves,
        boxplot=boxplot,
        overlays=overlays,
        class_names=names,
        facts=[
            ("training cases", str(size.train_cases)),
            ("held-out cases", f"{size.test_cases} (oblique, LPS-stored)"),
            ("epochs", str(epochs)),
            ("mean foreground Dice", f"{mean_dice:.3f}"),
            ("run time", f"{seconds / 60:.1f} min"),
        ],
    )
    demo = DemoResult(
        out=str(out),
        report=str(html),
        dice=dice,
        mean_foreground_dice=mean_dice,
        seconds=seconds,
        epochs=epochs,
    )
    write_text_atomic(folder / "demo.json", json.dumps(demo.model_dump(), indent=2) + "\n")
    return demo


def _quick_overrides(plan: Plan, filters: int, depth: int, epochs: int) -> None:
    """``--quick``: a fixed tiny network and a few epochs, to check an installation."""
    from miscore.core.config import ComponentSpec

    config = plan.config
    config.patching.patch_shape = [32, 32, 32]
    architecture = {
        **config.model.architecture_entry.model_dump(),
        "filters": filters,
        "depth": depth,
    }
    config.model.architecture = ComponentSpec.model_validate(architecture)
    config.training.epochs = epochs
    config.training.steps_per_epoch = 4
    config.training.batch_size = 2
    why = "--quick: a smoke test of the installation, not a model"
    for field in ("patching.patch_shape", "model.architecture", "training.epochs",
                  "training.steps_per_epoch", "training.batch_size"):  # fmt: skip
        plan.reasons[field] = why
