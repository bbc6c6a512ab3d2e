"""What the benchmark scripts share: the machine, the peers' interpreter, workers, medians.

Peers (MONAI, batchgenerators, torch) are never imported in miscore's interpreter: their code
runs in worker processes started with the peers' Python (``--peers-python``, default
``$MISCORE_PEERS_PYTHON`` or /tmp/peers/bin/python; ``nox -s bench-peers`` passes its own).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_PEERS_PYTHON = os.environ.get("MISCORE_PEERS_PYTHON", "/tmp/peers/bin/python")


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and load: what the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)),
        "memory_gb": round(memory, 1),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``), MB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_mb() -> float:
    """This process's resident memory now (``VmRSS``), MB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def median(values: list[float]) -> float:
    return float(np.median(values))


def versions(*packages: str) -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for package in packages:
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = "?"
    return out


def run_worker(python: str, script: Path, *args: str, timeout: float = 900) -> Any:
    """Run ``python script --worker ...`` in a fresh process; its last stdout line is JSON."""
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        # the machine's cores, not more: torch and TF would otherwise oversubscribe
        "OMP_NUM_THREADS": str(len(os.sched_getaffinity(0))),
    }
    result = subprocess.run(
        [python, str(script), "--worker", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"{script.name} worker {' '.join(args)} failed (exit {result.returncode}):\n"
            f"{result.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def reply(data: Any) -> None:
    """A worker's answer: one JSON line on stdout."""
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")
    return path
