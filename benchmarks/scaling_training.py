"""Multi-worker training steps/s with 1 and 2 local workers (``miscore train --cluster``).

Each run is the CLI as a user starts it: one ``miscore train`` process (1 worker: the ordinary
single-process ``fit``), or one per worker with ``--cluster``/``--task`` on free local ports
(``MultiWorkerMirroredStrategy``, ring all-reduce over gRPC). The global batch is the same in
both, so a step does the same work; steps/s is measured over the epochs after the first (the
first traces the step and sets up the collectives). On one machine with few cores the workers
share the CPUs: the honest figure there is the overhead of the all-reduce, not a speed-up.

Run: .venv/bin/python benchmarks/scaling_training.py [--epochs 4] [--steps 8]
Writes benchmarks/results/scaling_training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

CONFIG = """
data: {{classes: 2}}
preprocessing: [zscore]
patching: {{mode: random, patch_shape: [{patch}, {patch}, {patch}], samples_per_case: 4}}
augmentation: []
model:
  architecture: {{name: unet, filters: {filters}, depth: 2, normalization: instance}}
  loss: categorical_crossentropy
training: {{epochs: {epochs}, steps_per_epoch: {steps}, batch_size: {batch}, optimizer: sgd,
           inference_dice: false}}
cache: {{path: cache}}
"""

_EPOCH = re.compile(r"^epoch (\d+):.*\(([\d.]+) s\)", re.MULTILINE)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _miscore(*args: str) -> list[str]:
    return [sys.executable, "-m", "miscore", *args]


def bench_training(
    workers: int,
    *,
    epochs: int = 4,
    steps: int = 8,
    batch: int = 4,
    patch: int = 32,
    filters: int = 8,
    cases: int = 4,
    timeout: float = 900,
    root: Path | None = None,
) -> dict[str, Any]:
    """Train a small 3D U-Net with ``workers`` local worker processes; return its figures.

    Returns ``{workers, global_batch, steps_per_epoch, epochs, steps_per_s, samples_per_s,
    first_epoch_s, wall_s}``: steps/s is of global steps, over the epochs after the first.
    """
    if batch % workers:
        raise ValueError(f"batch {batch} is not divisible by {workers} workers")
    with tempfile.TemporaryDirectory(prefix="miscore-bench-train-", dir=root) as folder:
        work = Path(folder)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        subprocess.run(
            _miscore("synth", "data", "--cases", str(cases), "--shape", *[str(patch * 2)] * 3,
                     "--classes", "2"),
            cwd=work, env=env, check=True, capture_output=True,
        )  # fmt: skip
        (work / "config.yaml").write_text(
            CONFIG.format(patch=patch, filters=filters, epochs=epochs, steps=steps, batch=batch)
        )
        # the cache first, so that no worker's preprocessing is timed
        subprocess.run(
            _miscore("cache", "build", "config.yaml", "--data", "data"),
            cwd=work, env=env, check=True, capture_output=True,
        )  # fmt: skip
        train = _miscore(
            "train",
            "config.yaml",
            "--data",
            "data",
            "--out",
            "model",
        )
        if workers > 1:
            cluster = ",".join(f"localhost:{p}" for p in _free_ports(workers))
            commands = [[*train, "--cluster", cluster, "--task", str(t)] for t in range(workers)]
        else:
            commands = [train]
        started = time.perf_counter()
        processes = [
            subprocess.Popen(c, cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for c in commands
        ]  # fmt: skip
        try:
            outputs = [p.communicate(timeout=timeout) for p in processes]
        finally:
            for p in processes:
                p.kill()
        wall = time.perf_counter() - started
        for p, (_, stderr) in zip(processes, outputs, strict=True):
            if p.returncode:
                raise RuntimeError(f"miscore train failed:\n{stderr[-2000:]}")
    seconds = [float(s) for _, s in _EPOCH.findall(outputs[0][1])]
    later = seconds[1:] or seconds
    rate = steps * len(later) / sum(later)
    return {
        "workers": workers,
        "global_batch": batch,
        "steps_per_epoch": steps,
        "epochs": epochs,
        "steps_per_s": round(rate, 3),
        "samples_per_s": round(rate * batch, 3),
        "first_epoch_s": seconds[0] if seconds else None,
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--filters", type=int, default=8)
    args = parser.parse_args()
    figures = {
        n: bench_training(
            n,
            epochs=args.epochs,
            steps=args.steps,
            batch=args.batch,
            patch=args.patch,
            filters=args.filters,
        )
        for n in (1, 2)
    }
    result = {
        "runs": list(figures.values()),
        "ratio_2_to_1": round(figures[2]["steps_per_s"] / figures[1]["steps_per_s"], 3),
        "cpus": len(os.sched_getaffinity(0)),
    }
    out = HERE / "results" / "scaling_training.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
