"""Soak: many small cases through ``miscore cache build`` and a 10-epoch training run.

Looks for leaks a short test cannot see: after every epoch a local plugin (``--plugin``, the
``miscore_epoch_end`` hook) records the training process's open file descriptors, threads
and resident memory (from /proc/self). Targets: RSS after the last epoch within 10% of RSS
after epoch 2, and no growth of descriptors or threads from epoch 2 on.

Run: .venv/bin/python benchmarks/soak.py [--cases 200] [--shape 24] [--epochs 10]
Writes benchmarks/results/soak.json. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "soak.json"

PROBE = '''
"""Soak probe: process resources after each epoch, one JSON line per epoch."""
import json
import os
import threading
from pathlib import Path

import miscore


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


@miscore.hookimpl
def miscore_epoch_end(epoch, logs):
    row = {
        "epoch": epoch,
        "loss": float(logs.get("loss", float("nan"))),
        "open_fds": len(os.listdir("/proc/self/fd")),
        "threads": _status("Threads"),
        "python_threads": threading.active_count(),
        "rss_mb": round(_status("VmRSS") / 1024, 1),
    }
    with open(os.environ["SOAK_LOG"], "a") as handle:
        handle.write(json.dumps(row) + "\\n")
'''

CONFIG = """
data: {{classes: 2}}
preprocessing: [{{name: clip, min: -150, max: 250}}, zscore]
patching: {{mode: random, patch_shape: [16, 16, 16], samples_per_case: 1}}
augmentation: [{{name: flip, p: 0.5}}]
model:
  architecture: {{name: unet, filters: 4, depth: 2}}
  loss: dice_ce
training: {{epochs: {epochs}, batch_size: 8, workers: {workers}}}
cache: {{path: {cache}}}
"""


def miscore(*args: str | Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``python -m miscore ARGS``; return (seconds, stderr); raise on failure."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "miscore", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
        check=False,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"miscore {' '.join(map(str, args))} failed:\n{result.stderr}")
    return seconds, result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--shape", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--build-workers", type=int, default=4)
    parser.add_argument("--train-workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="miscore-soak-") as tmp:
        root = Path(tmp)
        shape = [str(args.shape)] * 3
        synth_s, _ = miscore(
            "synth",
            root / "data",
            "--cases",
            str(args.cases),
            "--shape",
            *shape,
            "--classes",
            "2",
            "--seed",
            "5",
        )
        (root / "soak_probe.py").write_text(PROBE)
        (root / "config.yaml").write_text(
            CONFIG.format(epochs=args.epochs, workers=args.train_workers, cache=root / "cache")
        )
        build = ["cache", "build", root / "config.yaml", "--data", root / "data"]
        build_s, _ = miscore(*build, "--workers", str(args.build_workers))
        rebuild_s, rebuild_log = miscore(*build, "--workers", str(args.build_workers))
        log = root / "soak.jsonl"
        train_s, _ = miscore(
            "--plugin", root / "soak_probe.py", "train", root / "config.yaml",
            "--data", root / "data", "--out", root / "model",
            env={"SOAK_LOG": str(log)},
        )  # fmt: skip
        epochs = [json.loads(line) for line in log.read_text().splitlines()]
        entries = len(list((root / "cache" / "entries").iterdir()))
        temp_left = len(list((root / "cache" / "tmp").iterdir()))

    second, last = epochs[1], epochs[-1]
    summary: dict[str, Any] = {
        "rss_growth_epoch2_to_last": round(last["rss_mb"] / second["rss_mb"] - 1, 4),
        "fd_growth_epoch2_to_last": last["open_fds"] - second["open_fds"],
        "thread_growth_epoch2_to_last": last["threads"] - second["threads"],
    }
    summary["rss_within_10_percent"] = abs(summary["rss_growth_epoch2_to_last"]) <= 0.10
    summary["no_fd_growth"] = max(e["open_fds"] for e in epochs[1:]) <= second["open_fds"]
    summary["no_thread_growth"] = max(e["threads"] for e in epochs[1:]) <= second["threads"]
    report = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "settings": vars(args) | {"out": str(args.out)},
        "seconds": {
            "synth": round(synth_s, 1),
            "cache_build": round(build_s, 1),
            "cache_rebuild_all_hits": round(rebuild_s, 1),
            "train": round(train_s, 1),
        },
        "cache": {
            "entries": entries,
            "temp_folders_left": temp_left,
            "rebuild_summary": rebuild_log.strip().splitlines()[-1],
        },
        "epochs": epochs,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in epochs:
        print(
            f"epoch {row['epoch']:>2}: loss {row['loss']:.4f}  fds {row['open_fds']}  "
            f"threads {row['threads']}  rss {row['rss_mb']} MB"
        )
    print(json.dumps(report["seconds"]), json.dumps(report["cache"]))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
