"""Run every benchmark, check the targets, write benchmarks/results/summary.json.

    python benchmarks/run_all.py                       # ours only (nox -s bench)
    python benchmarks/run_all.py --peers               # and MONAI, batchgenerators
                                                       # (nox -s bench-peers)
    python benchmarks/run_all.py --only sliding_window nifti_read

Sized to finish within ~10 minutes on 2 CPU cores with the peers. Every figure is a ratio
measured within one run (the contenders interleaved where they run in separate processes).
Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_PEERS_PYTHON, HERE, RESULTS, machine, write_result

#: script -> (arguments, whether it compares with peers)
BENCHMARKS: dict[str, tuple[list[str], bool]] = {
    "augment": (["--rounds", "5", "--per-round", "4"], True),
    "sliding_window": (["--rounds", "2", "--repeats", "3"], True),
    "predict_memory": ([], True),
    "nifti_read": (["--rounds", "2", "--repeats", "2"], True),
    "epoch_data": (["--rounds", "3", "--epochs", "3"], False),
    "scaling": (["--cases", "8", "--size", "48"], False),
}


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def targets(peers: bool) -> list[dict[str, Any]]:
    """Each target with its figure and whether it is met (None: not measured)."""
    rows: list[dict[str, Any]] = []

    def row(what: str, figure: float | None, goal: str, met: bool | None) -> None:
        rows.append({"target": what, "figure": figure, "goal": goal, "met": met})

    augment = load("augment")
    if augment and peers:
        for scenario, entry in augment["scenarios"].items():
            for peer, speedup in entry.get("speedup_vs", {}).items():
                row(f"augmentation ({scenario}) speedup vs {peer}", speedup, ">= 4", speedup >= 4)
    sliding = load("sliding_window")
    if sliding and peers:
        for blend, entry in sliding["blends"].items():
            ratio = entry.get("overhead_ratio_miscore_over_monai")
            if ratio is not None:
                row(f"sliding-window overhead ({blend}) miscore/MONAI", ratio, "<= 1", ratio <= 1)
    memory = load("predict_memory")
    if memory and peers and "ratio_miscore_over_monai" in memory:
        for kind, ratio in memory["ratio_miscore_over_monai"].items():
            row(f"predict memory ({kind}) miscore/MONAI", ratio, "<= 1", ratio <= 1)
    epoch = load("epoch_data")
    if epoch:
        speedup = epoch["warm_speedup"]
        row("warm epoch data speedup over cold", speedup, ">= 5", speedup >= 5)
    row("GPU: real training step over the fixed-batch limit (demo config)", None, "<= 1.1", None)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", action="store_true", help="also run MONAI, batchgenerators")
    parser.add_argument("--peers-python", default=DEFAULT_PEERS_PYTHON)
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="a subset")
    args = parser.parse_args()
    seconds: dict[str, float] = {}
    for name, (extra, has_peers) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        command = [sys.executable, str(HERE / f"{name}.py"), *extra]
        if args.peers and has_peers:
            command += ["--peers", "--peers-python", args.peers_python]
        print(f"$ {' '.join(command)}", flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        seconds[name] = round(time.perf_counter() - start, 1)
    rows = targets(args.peers)
    summary = {"machine": machine(), "peers": args.peers, "seconds": seconds, "targets": rows}
    write_result("summary", summary)
    print("\n| target | figure | goal | met |\n| --- | --- | --- | --- |")
    for r in rows:
        met = {True: "yes", False: "**no**", None: "not measured yet"}[r["met"]]
        figure = "-" if r["figure"] is None else f"{r['figure']:g}"
        print(f"| {r['target']} | {figure} | {r['goal']} | {met} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
