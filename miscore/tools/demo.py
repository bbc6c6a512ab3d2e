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

from pydantic import BaseModel

from miscore.core.errors import InputError
from miscore.core.plugins import PluginManager
from miscore.tools.planning import Plan


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
    from miscore.core.atomic import write_text_atomic
    from miscore.core.config import apply_defaults, check_components, load_config
    from miscore.data.dataset import Dataset
    from miscore.pipeline.evaluate import evaluate
    from miscore.pipeline.inference import predict
    from miscore.pipeline.training import train
    from miscore.pipeline.visualize import plot_metric_boxes, save_overlay
    from miscore.tools.analysis import analyze_dataset
    from miscore.tools.budget import plan_for_budget
    from miscore.tools.planning import plan_config
    from miscore.tools.report import write_html_report
    from miscore.tools.synth import class_names, write_dataset

    started = time.perf_counter()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not empty; give a new --out folder")
    size = QUICK if quick else FULL
    plugins = plugins or PluginManager()
    registry = plugins.registry

    log(f"1/6 synthetic phantoms: {size.train_cases} training, {size.test_cases} held-out cases")
    write_dataset(out / "data", registry, size.train_cases, size.shape, CLASSES, seed=0)
    write_dataset(
        out / "test", registry, size.test_cases, size.shape, CLASSES, seed=1000, oblique=True
    )

    log("2/6 fingerprint and plan (miscore analyze + miscore plan)")
    data = Dataset.discover(out / "data", registry)
    plan = plan_config(analyze_dataset(data), memory_gb=2.0, data_path=str(out / "data"))
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
    config = load_config(config_path)  # what a user would run: validated from the file
    config = apply_defaults(config, registry)
    check_components(config, registry)

    log(
        f"3/6 training a 3D U-Net: {config.training.epochs} epochs of "
        f"{config.training.steps_per_epoch} steps"
    )
    result = train(config, out / "data", out / "model", plugins=plugins, log=log)

    log("4/6 sliding-window prediction of the held-out cases")
    predictions = out / "predictions"
    predict(out / "model", [out / "test"], predictions, plugins=plugins, log=log)

    log("5/6 evaluation")
    test = Dataset.discover(out / "test", registry)
    io = registry.io_for(next(predictions.iterdir()))
    pairs = (
        (case_id, io.read_label(predictions / f"{case_id}.nii.gz", test.load(case_id).image),
         test.load(case_id).label)
        for case_id in test.ids
    )  # fmt: skip
    report = evaluate(
        ((c, p, t) for c, p, t in pairs if t is not None), registry, classes=range(1, CLASSES)
    )

    log("6/6 report")
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    report.write_tsv(folder / "metrics.tsv")
    report.write_summary_tsv(folder / "summary.tsv")
    report.write_json(folder / "metrics.json")
    names = class_names(CLASSES)
    boxplot = plot_metric_boxes(report, "dice", folder / "dice_boxplot.png", names)
    curves = folder / "curves.png"
    shutil.copyfile(out / "model" / "curves.png", curves)
    overlays = []
    for case_id in test.ids:
        case = test.load(case_id)
        prediction = io.read_label(predictions / f"{case_id}.nii.gz", case.image)
        overlays.append(
            save_overlay(case.image, case.label, prediction, folder / "overlays" / f"{case_id}.gif")
        )
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
            ("epochs", str(result.epochs)),
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
        epochs=result.epochs,
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
