"""Scaling on this machine: cache build and prediction of N cases with 1 and 2 workers.

Every figure is the wall time of a fresh ``miscore`` command, as a user runs it (start-up,
TensorFlow import, the Dask cluster's start included):

- cache build: ``miscore cache build`` of N phantom cases into an empty cache, in this
  process (``serial``), then on Dask with ``--scheduler local:1`` and ``local:2``;
- prediction: ``miscore predict`` of the same N cases with a tiny trained 3D U-Net, serial,
  then ``local:1`` and ``local:2`` (each worker process imports TensorFlow and loads the
  model once).

- training: multi-worker training steps/s of a small 3D U-Net with 1 and 2 local
  ``miscore train`` workers at the same global batch (``scaling_training.bench_training``).

The ratios: ``local:2`` over ``local:1`` (what a second worker buys), ``local:1`` over
serial (what Dask costs), and 2 training workers' steps/s over 1's. Two workers only speed
up when the machine has two cores to spare: on 2 shared CPU cores (this project's CI and dev
machine) the honest figure is the overhead, and the output says so.

    python benchmarks/scaling.py [--cases 8] [--size 48] [--rounds 1] [--no-training]

Results: benchmarks/results/scaling.json. Needs ``miscore[dask]``. No peers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median, versions, write_result
from scaling_training import bench_training

CONFIG = """
data: {classes: 2}
preprocessing: [{name: clip, min: -150, max: 250}, zscore]
patching: {mode: random, patch_shape: [32, 32, 32], samples_per_case: 1}
model:
  architecture: {name: unet, filters: 8, depth: 2}
  loss: dice_ce
training: {epochs: 1, batch_size: 2, steps_per_epoch: 2, validation_split: 0.0}
cache: {path: cache}
"""

#: how the work is run: the extra arguments of the command
RUNS: dict[str, list[str]] = {
    "serial": [],
    "local:1": ["--scheduler", "local:1"],
    "local:2": ["--scheduler", "local:2"],
}


def miscore(*args: str | Path, cwd: Path) -> float:
    """Run ``miscore -q ARGS``; its wall time in seconds."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "miscore", "-q", *map(str, args)],
        cwd=cwd,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def prepare(root: Path, cases: int, size: int) -> None:
    """``data/``: N phantoms; ``config.yaml``; ``model/``: a tiny U-Net, one short epoch."""
    shape = [str(size)] * 3
    miscore("synth", "data", "--cases", str(cases), "--shape", *shape, "--classes", "2", cwd=root)
    (root / "config.yaml").write_text(CONFIG)
    miscore("train", "config.yaml", "--data", "data", "--out", "model", "--cache", "c", cwd=root)


def bench_cache_build(root: Path, run: str) -> float:
    """Seconds of one ``cache build`` of every case into an empty cache."""
    cache = root / "bench-cache"
    shutil.rmtree(cache, ignore_errors=True)
    args = ["cache", "build", "config.yaml", "--data", "data", "--cache", cache]
    return miscore(*args, *RUNS[run], cwd=root)


def bench_predict(root: Path, run: str) -> float:
    """Seconds of one ``predict`` of every case into an empty folder."""
    out = root / "bench-out"
    shutil.rmtree(out, ignore_errors=True)
    return miscore("predict", "model", "data", "--out", out, *RUNS[run], cwd=root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-training", action="store_true", help="skip multi-worker training")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result: dict[str, Any] = {
        "machine": machine(),
        "versions": versions("tensorflow", "dask", "distributed"),
        "cases": args.cases,
        "shape": [args.size] * 3,
        "cores": cores,
    }
    with tempfile.TemporaryDirectory(prefix="miscore-scaling-") as folder:
        root = Path(folder)
        prepare(root, args.cases, args.size)
        for name, bench in (("cache_build", bench_cache_build), ("predict", bench_predict)):
            seconds = {
                run: round(median([bench(root, run) for _ in range(args.rounds)]), 2)
                for run in RUNS
            }
            result[name] = {
                "seconds": seconds,
                "speedup_2_over_1_workers": round(seconds["local:1"] / seconds["local:2"], 2),
                "dask_over_serial": round(seconds["local:1"] / seconds["serial"], 2),
            }
    if not args.no_training:
        runs = {
            n: bench_training(n, epochs=3, steps=6, batch=4, patch=16, filters=4) for n in (1, 2)
        }
        result["training"] = {
            "runs": list(runs.values()),
            "steps_per_s_2_over_1_workers": round(
                runs[2]["steps_per_s"] / runs[1]["steps_per_s"], 2
            ),
        }
    note = (
        f"{cores} CPU cores: two workers share them with each other (and with anything else "
        "running), so the figures measure Dask's overhead (cluster start, one plugin load and, "
        "for prediction, one TensorFlow start and model load per worker), not a speed-up; "
        "on a cluster each worker brings its own cores"
        if (cores or 1) <= 2
        else f"{cores} CPU cores"
    )
    result["note"] = note
    write_result("scaling", result)
    print(f"{args.cases} cases of {args.size}^3; {note}")
    print("| work | serial s | local:1 s | local:2 s | 2 over 1 workers | dask over serial |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("cache_build", "predict"):
        entry = result[name]
        s = entry["seconds"]
        print(
            f"| {name} | {s['serial']} | {s['local:1']} | {s['local:2']} | "
            f"{entry['speedup_2_over_1_workers']}x | {entry['dask_over_serial']}x |"
        )
    if "training" in result:
        t = result["training"]
        speeds = ", ".join(
            f"{r['workers']} worker(s) {r['steps_per_s']} steps/s" for r in t["runs"]
        )
        print(f"training: {speeds}; 2 over 1: {t['steps_per_s_2_over_1_workers']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
