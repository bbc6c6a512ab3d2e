"""Accuracy on real images: Dice per class of a planned model next to trivial baselines.

For every task (see benchmarks/accuracy_data.py for the data and how each test set is made)
and every fold, the harness runs what a user runs, each as a subprocess:

    miscore plan TRAIN --out cfg.yaml [--budget B]      (timed)
    miscore train cfg.yaml --data TRAIN --out MODEL     (timed wall clock)
    miscore predict MODEL TEST --out PRED               (timed)
    miscore evaluate PRED TEST --json --metric dice

and scores two baselines on the same test cases with the same metric code
(``miscore.pipeline.evaluate``), so that a model that learned nothing is visible:

- threshold: per class, the intensity interval [lo, hi) that maximises Dice on the training
  case(s), applied to the test image. CT tasks use raw HU; other modalities are first
  rescaled per image so that the 1st and 99th percentiles of its above-mean voxels become 0
  and 1 (raw MR intensities have no fixed scale between scanners). Candidate bounds: 256
  quantiles of the training voxels plus 128 of the class's voxels.
- training mask: the training label(s) mapped onto the test grid through world coordinates
  (nearest neighbour), as if the anatomy had not moved: what a model that memorised its
  training label would score. With several training cases, the per-voxel majority vote of
  the cases whose grid covers the voxel.
  n/a when no training grid overlaps the test grid in world space; a test voxel that no
  training grid covers is background.

    python benchmarks/accuracy.py [--budget 20m | --no-budget] [--only NAME ...]
    python benchmarks/accuracy.py --no-budget --epochs 1 --steps-per-epoch 2   # a quick check
    python benchmarks/accuracy.py --baselines-only                             # no training

Data: fetched once into ``~/.cache/miscore-bench`` (``--data``, ``$MISCORE_BENCH_DATA``).

Training uses its own cache folder (``--cache`` under the work folder), so every train time
includes preprocessing the cases, and the user's cache is left alone. Results:
benchmarks/results/accuracy.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_data import TASK_BUILDER, Fold, Task, boxes_overlap, build_tasks, resample, world_box
from common import machine, versions, write_result

DEFAULT_DATA = Path(os.environ.get("MISCORE_BENCH_DATA", "~/.cache/miscore-bench")).expanduser()
MISCORE = [sys.executable, "-m", "miscore", "-q"]


# --- the user's commands ------------------------------------------------------------------


class StepFailed(RuntimeError):
    """A miscore command exited with an error; the message holds its output's tail."""


def run_step(name: str, args: list[str], log_dir: Path, timeout: float | None) -> tuple[str, float]:
    """Run ``miscore ARGS``; returns its stdout and wall-clock seconds; logs kept per step."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    try:
        result = subprocess.run(
            [*MISCORE, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StepFailed(f"miscore {name}: still running after {timeout} s; stopped") from exc
    seconds = time.perf_counter() - start
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"{name}.log").write_text(
        f"$ miscore {' '.join(args)}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-6:])
        raise StepFailed(f"miscore {name} failed (exit {result.returncode}): {tail}")
    return result.stdout, seconds


def set_steps_per_epoch(config: Path, steps: int) -> None:
    """Edit ``training.steps_per_epoch`` in a planned YAML, keeping its comments."""
    lines = config.read_text().splitlines()
    section = ""
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#")):
            section = line.split(":", 1)[0]
        elif section == "training" and line.strip().startswith("steps_per_epoch:"):
            indent = line[: len(line) - len(line.lstrip())]
            lines[i] = f"{indent}steps_per_epoch: {steps}  # set by benchmarks/accuracy.py"
            config.write_text("\n".join(lines) + "\n")
            return
    raise StepFailed(f"{config}: no training.steps_per_epoch to override")


def planned_facts(config: Path) -> dict[str, Any]:
    """What the plan decided that matters here: training length, patch, preprocessing."""
    import yaml

    planned = yaml.safe_load(config.read_text())
    return {
        "training": planned.get("training", {}),
        "patch_shape": planned.get("patching", {}).get("patch_shape"),
        "preprocessing": [step.get("name") for step in planned.get("preprocessing", [])],
        "architecture": planned.get("model", {}).get("architecture"),
    }


def run_model(
    task: Task, fold: Fold, work: Path, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, dict[int, float]] | None]:
    """Plan, train, predict, evaluate one fold; returns the run's facts and Dice per case."""
    run: dict[str, Any] = {"budget": None if args.no_budget else args.budget}
    logs = work / "logs"
    config = work / "cfg.yaml"
    timeout = args.step_timeout
    classes = ",".join(str(c) for c in task.classes if c > 0)
    try:
        plan = ["plan", str(fold.train), "--out", str(config)]
        if not args.no_budget:
            # the planner preprocesses into the cache that training then reads
            plan += ["--budget", args.budget, "--cache", str(work / "cache")]
        _, run["plan_s"] = run_step("plan", plan, logs, timeout)
        if args.steps_per_epoch is not None:
            set_steps_per_epoch(config, args.steps_per_epoch)
        run["planned"] = planned_facts(config)
        train = ["train", str(config), "--data", str(fold.train), "--out", str(work / "model")]
        train += ["--cache", str(work / "cache")]
        if args.epochs is not None:
            train += ["--epochs", str(args.epochs)]
        out, run["train_s"] = run_step("train", train, logs, timeout)
        found = re.search(r"\((\d+) epochs?", out)
        run["epochs_run"] = int(found.group(1)) if found else None
        predict = ["predict", str(work / "model"), str(fold.test), "--out", str(work / "pred")]
        _, run["predict_s"] = run_step("predict", predict, logs, timeout)
        evaluate = ["evaluate", str(work / "pred"), str(fold.test), "--json", "--metric", "dice"]
        out, _ = run_step("evaluate", [*evaluate, "--classes", classes], logs, timeout)
    except StepFailed as exc:
        run["error"] = str(exc)
        print(f"  {exc}", file=sys.stderr)
        return run, None
    report = json.loads(out)
    dice: dict[str, dict[int, float]] = {}
    for row in report["rows"]:
        value = row["values"]["dice"]
        dice.setdefault(row["case"], {})[int(row["class"])] = as_float(value)
    return run, dice


def as_float(value: float | None) -> float:
    return float("nan") if value is None else float(value)


# --- baselines ----------------------------------------------------------------------------


def threshold_space(image: npt.NDArray[Any], modality: str) -> npt.NDArray[np.float32]:
    """Intensities the threshold baseline works on: raw HU for CT, else rescaled per image."""
    values = image.astype(np.float32)
    if modality.upper() == "CT":
        return values
    above = values[values > values.mean()]
    low, high = np.percentile(above if above.size else values, [1, 99])
    scaled: npt.NDArray[np.float32] = (values - low) / max(float(high - low), 1e-6)
    return scaled


def best_interval(
    values: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_]
) -> tuple[float, float, float]:
    """The interval [lo, hi) of ``values`` whose voxels best match ``mask`` (Dice).

    Returns lo, hi (may be -inf/inf) and the training Dice.
    """
    if not mask.any():
        return np.inf, np.inf, float("nan")  # nothing to find: predict nothing
    quantiles = np.quantile(values, np.linspace(0, 1, 257))
    inside = np.quantile(values[mask], np.linspace(0, 1, 129))
    edges = np.unique(np.concatenate([[-np.inf], quantiles, inside, [np.inf]]))
    # voxels with values in [edges[k], edges[k + 1]) fall in bin k
    bins = np.searchsorted(edges, values, side="right") - 1
    total = np.concatenate([[0], np.cumsum(np.bincount(bins.ravel(), minlength=edges.size))])
    hits = np.concatenate([[0], np.cumsum(np.bincount(bins[mask], minlength=edges.size))])
    # interval [edges[i], edges[j]) holds bins i..j-1: counts total[j] - total[i]
    predicted = total[None, :] - total[:, None]
    overlap = hits[None, :] - hits[:, None]
    # j <= i: nothing predicted (-1)
    dice = np.where(predicted > 0, 2 * overlap / np.maximum(predicted + int(mask.sum()), 1), -1.0)
    i, j = np.unravel_index(int(np.argmax(dice)), dice.shape)
    high = edges[j] if j < edges.size else np.inf
    return float(edges[i]), float(high), float(dice[i, j])


def majority_label(
    labels: list[tuple[npt.NDArray[Any], npt.NDArray[np.float64]]],
    shape: tuple[int, ...],
    affine: npt.NDArray[np.float64],
    classes: list[int],
) -> npt.NDArray[np.uint8] | None:
    """The training labels on the test grid through world coordinates; None if none overlap."""
    target = world_box(shape, affine)
    seen = [(a, m) for a, m in labels if boxes_overlap(world_box(a.shape, m), target)]
    if not seen:
        return None
    votes = np.zeros((len(classes), *shape), np.uint16)
    for array, source_affine in seen:
        # shifted by one so that 0 is "outside this training grid": no vote there
        moved = resample(array.astype(np.uint8) + 1, source_affine, shape, affine, 0)
        for k, class_id in enumerate(classes):
            votes[k] += moved == class_id + 1
    majority: npt.NDArray[np.uint8] = np.asarray(classes, np.uint8)[votes.argmax(axis=0)]
    return majority


def baselines(task: Task, fold: Fold) -> dict[str, Any]:
    """Threshold and training-mask Dice per test case and class, scored by miscore's evaluate."""
    import miscore
    from miscore.core.volume import Volume
    from miscore.data.dataset import Dataset
    from miscore.pipeline.evaluate import evaluate

    registry = miscore.PluginManager().registry
    train = Dataset.discover(fold.train, registry)
    test = Dataset.discover(fold.test, registry)
    class_ids = sorted(task.classes)
    foreground = [c for c in class_ids if c > 0]

    values, labels, grids = [], [], []
    for case_id in train.labelled_ids:
        case = train.load(case_id)
        assert case.label is not None
        values.append(threshold_space(case.image.array[..., 0], task.modality).ravel())
        labels.append(case.label.array[..., 0])
        grids.append((case.label.array[..., 0], case.label.affine))
    pooled = np.concatenate(values)
    pooled_labels = np.concatenate([label.ravel() for label in labels])
    intervals = {c: best_interval(pooled, pooled_labels == c) for c in foreground}
    del pooled, pooled_labels, values, labels

    threshold: dict[str, dict[int, float]] = {}
    memorised: dict[str, dict[int, float] | None] = {}
    for case_id in test.labelled_ids:
        case = test.load(case_id)
        assert case.label is not None
        truth = case.label
        image = threshold_space(case.image.array[..., 0], task.modality)
        threshold[case_id] = {}
        for c in foreground:
            low, high, _ = intervals[c]
            guess = (((image >= low) & (image < high)) * c).astype(np.uint8)
            report = evaluate(
                [(case_id, Volume(guess[..., None], truth.affine), truth)],
                registry,
                metrics=["dice"],
                classes=[c],
            )
            threshold[case_id][c] = report.rows[0].values["dice"]
        mapped = majority_label(grids, truth.spatial_shape, truth.affine, class_ids)
        if mapped is None:
            memorised[case_id] = None
            continue
        report = evaluate(
            [(case_id, Volume(mapped[..., None], truth.affine), truth)],
            registry,
            metrics=["dice"],
            classes=foreground,
        )
        memorised[case_id] = {r.class_id: r.values["dice"] for r in report.rows}
    return {
        "threshold": threshold,
        "threshold_intervals": {
            c: {"low": lo, "high": hi, "train_dice": d} for c, (lo, hi, d) in intervals.items()
        },
        "training_mask": memorised,
    }


# --- the whole benchmark ------------------------------------------------------------------


def mean_over_cases(per_case: Mapping[str, dict[int, float] | None], class_id: int) -> float | None:
    """Mean Dice of one class over the test cases; None when any case has no value (n/a)."""
    if not per_case or any(v is None for v in per_case.values()):
        return None
    values = [v[class_id] for v in per_case.values() if v is not None]
    return float(np.mean(values))


def run_fold(task: Task, fold: Fold, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    print(f"{task.name} [{fold.name}]", file=sys.stderr)
    start = time.perf_counter()
    base = baselines(task, fold)
    baseline_s = time.perf_counter() - start
    run: dict[str, Any] = {"budget": None}  # no plan, no model
    model = None
    if not args.baselines_only:
        run, model = run_model(task, fold, work, args)
    rows = []
    for class_id, class_name in task.classes.items():
        if class_id == 0:
            continue
        rows.append(
            {
                "class": class_id,
                "class_name": class_name,
                "model_dice": None if model is None else mean_over_cases(model, class_id),
                "threshold_dice": mean_over_cases(base["threshold"], class_id),
                "training_mask_dice": mean_over_cases(base["training_mask"], class_id),
            }
        )
    return {
        "fold": fold.name,
        "test_cases": sorted(base["threshold"]),
        **run,
        "baseline_s": round(baseline_s, 2),
        "classes": rows,
        "per_case": {
            "model": model,
            "threshold": base["threshold"],
            "training_mask": base["training_mask"],
        },
        "threshold_intervals": base["threshold_intervals"],
    }


def finite_or_none(data: Any) -> Any:
    """``data`` with NaN and infinities as None (strict JSON has neither); an interval
    bound of None is unbounded."""
    if isinstance(data, dict):
        return {k: finite_or_none(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite_or_none(v) for v in data]
    if isinstance(data, float) and not np.isfinite(data):
        return None
    return data


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def markdown(results: list[dict[str, Any]]) -> str:
    head = "| dataset | test case(s) | class | model Dice | threshold | training mask |"
    head += " budget | plan s | train s | epochs |"
    lines = [head, "|" + " --- |" * 10]
    for task in results:
        for fold in task["folds"]:
            note = " (failed)" if "error" in fold else ""
            budget = (fold["budget"] or "none") if "plan_s" in fold else "n/a"
            for row in fold["classes"]:
                lines.append(
                    f"| {task['name']} | {', '.join(fold['test_cases'])} | "
                    f"{row['class']} {row['class_name']} | {fmt(row['model_dice'])}{note} | "
                    f"{fmt(row['threshold_dice'])} | {fmt(row['training_mask_dice'])} | "
                    f"{budget} | {fmt(fold.get('plan_s'), 1)} | "
                    f"{fmt(fold.get('train_s'), 1)} | {fold.get('epochs_run') or 'n/a'} |"
                )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="20m", help="passed to `miscore plan --budget`")
    parser.add_argument(
        "--no-budget", action="store_true", help="plan without --budget (also: --budget none)"
    )
    parser.add_argument("--epochs", type=int, help="`miscore train --epochs N` (quick checks)")
    parser.add_argument(
        "--steps-per-epoch", type=int, help="override the planned training.steps_per_epoch"
    )
    parser.add_argument("--only", nargs="+", choices=list(TASK_BUILDER), help="these datasets")
    parser.add_argument(
        "--baselines-only", action="store_true", help="score the baselines only (no training)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="data cache folder")
    parser.add_argument("--work", type=Path, help="keep models, predictions, logs here")
    parser.add_argument("--step-timeout", type=float, help="seconds allowed per miscore command")
    parser.add_argument("--name", default="accuracy", help="results file name (no .json)")
    args = parser.parse_args()
    if args.budget.lower() == "none":
        args.no_budget = True

    tasks = build_tasks(args.data, args.only)
    temporary = None
    if args.work is None:
        temporary = tempfile.mkdtemp(prefix="miscore-accuracy-")
        work = Path(temporary)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for task in tasks:
            folds = []
            for index, fold in enumerate(task.folds):
                fold_work = work / task.name / f"fold{index}"
                shutil.rmtree(fold_work, ignore_errors=True)
                folds.append(run_fold(task, fold, fold_work, args))
            results.append({**task.describe(), "folds": folds})
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    result = {
        "benchmark": "accuracy",
        "budget": None if args.no_budget else args.budget,
        "epochs_override": args.epochs,
        "steps_per_epoch_override": args.steps_per_epoch,
        "machine": machine(),
        "versions": versions(
            "miscore", "tensorflow", "keras", "numpy", "scipy", "nibabel", "SimpleITK"
        ),
        "tasks": results,
    }
    table = markdown(results)
    result["table"] = table
    write_result(args.name, finite_or_none(result))
    print(table)
    return 1 if any("error" in f for t in results for f in t["folds"]) else 0


if __name__ == "__main__":
    sys.exit(main())
