"""Sliding-window overhead: miscore's SlidingWindow against MONAI's sliding_window_inference.

A 128x256x256 float32 volume, windows of 64x128x128, overlap 0.5 (27 windows), one window per
model call, constant (mean) and Gaussian blending. The model is a 1x1 convolution to 3 classes
with a softmax (Keras for miscore, torch for MONAI), so the framework's own work shows: the
overhead is the total time minus the time spent inside the model calls (timed around each
call). Both produce the blended class scores and their argmax.

    python benchmarks/sliding_window.py            # miscore only
    python benchmarks/sliding_window.py --peers    # and MONAI, in the same run

Each contender runs in fresh worker processes, rounds interleaved; figures are medians.
Results: benchmarks/results/sliding_window.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    DEFAULT_PEERS_PYTHON,
    machine,
    median,
    reply,
    run_worker,
    versions,
    write_result,
)

SHAPE = (128, 256, 256)
ROI = (64, 128, 128)
OVERLAP = 0.5
CLASSES = 3
BLENDS = {"constant": ("mean", "constant"), "gaussian": ("gaussian", "gaussian")}


def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal(SHAPE, dtype=np.float32)


def miscore_runner() -> Any:
    import keras

    from miscore.pipeline.inference import SlidingWindow, labels_from_scores

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((*ROI, 1)), keras.layers.Conv3D(CLASSES, 1, activation="softmax")]
    )
    image = volume()[..., None]
    spent = [0.0]

    def predict_batch(batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = np.asarray(model.predict_on_batch(batch))
        spent[0] += time.perf_counter() - start
        return out

    def run(blend: str) -> tuple[float, float, int]:
        window = SlidingWindow(predict_batch, ROI, overlap=OVERLAP, blend=BLENDS[blend][0])
        spent[0] = 0.0
        start = time.perf_counter()
        labels_from_scores(window(image))
        return time.perf_counter() - start, spent[0], len(window.windows(SHAPE))

    return run


def monai_runner() -> Any:
    import torch
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, CLASSES, 1)
    image = torch.from_numpy(volume()[None, None])
    spent = [0.0]
    calls = [0]

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = torch.softmax(conv(batch), dim=1)
        spent[0] += time.perf_counter() - start
        calls[0] += 1
        return out

    def run(blend: str) -> tuple[float, float, int]:
        spent[0], calls[0] = 0.0, 0
        start = time.perf_counter()
        with torch.no_grad():
            scores = sliding_window_inference(
                image, ROI, 1, predictor, overlap=OVERLAP, mode=BLENDS[blend][1]
            )
            torch.argmax(scores, dim=1)
        return time.perf_counter() - start, spent[0], calls[0]

    return run


def worker(name: str, repeats: int) -> None:
    if name == "monai":
        import torch

        torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    run = miscore_runner() if name == "miscore" else monai_runner()
    out: dict[str, Any] = {}
    for blend in BLENDS:
        run(blend)  # warm-up: tracing, allocations, the Gaussian map's cache
        timings = [run(blend) for _ in range(repeats)]
        out[blend] = {
            "total": [t[0] for t in timings],
            "model": [t[1] for t in timings],
            "windows": timings[0][2],
        }
    packages = ("miscore", "keras", "tensorflow") if name == "miscore" else ("monai", "torch")
    out["versions"] = versions(*packages, "numpy")
    reply(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", action="store_true", help="also time MONAI")
    parser.add_argument("--peers-python", default=DEFAULT_PEERS_PYTHON)
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per contender")
    parser.add_argument("--repeats", type=int, default=3, help="timings per process and blend")
    parser.add_argument("--worker", choices=["miscore", "monai"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.repeats)
        return 0

    script = Path(__file__).resolve()
    contenders = {"miscore": sys.executable}
    if args.peers:
        contenders["monai"] = args.peers_python
    raw: dict[str, dict[str, dict[str, list[float]]]] = {
        c: {b: {"total": [], "model": []} for b in BLENDS} for c in contenders
    }
    found: dict[str, Any] = {}
    for _ in range(args.rounds):
        for name, python in contenders.items():
            answer = run_worker(python, script, name, "--repeats", str(args.repeats))
            found[name] = answer
            for blend in BLENDS:
                raw[name][blend]["total"] += answer[blend]["total"]
                raw[name][blend]["model"] += answer[blend]["model"]
    result: dict[str, Any] = {
        "benchmark": "sliding_window",
        "volume": list(SHAPE),
        "roi": list(ROI),
        "overlap": OVERLAP,
        "classes": CLASSES,
        "windows": {name: found[name]["constant"]["windows"] for name in contenders},
        "timings_per_contender": args.rounds * args.repeats,
        "machine": machine(),
        "versions": {name: found[name]["versions"] for name in contenders},
        "blends": {},
    }
    for blend in BLENDS:
        entry: dict[str, Any] = {}
        for name in contenders:
            total = raw[name][blend]["total"]
            model = raw[name][blend]["model"]
            overhead = [t - m for t, m in zip(total, model, strict=True)]
            entry[name] = {
                "total_s": round(median(total), 4),
                "model_s": round(median(model), 4),
                "overhead_s": round(median(overhead), 4),
            }
        if "monai" in entry:
            entry["overhead_ratio_miscore_over_monai"] = round(
                entry["miscore"]["overhead_s"] / entry["monai"]["overhead_s"], 3
            )
        result["blends"][blend] = entry
        print(f"{blend} blending:")
        for name in contenders:
            e = entry[name]
            print(
                f"  {name:8s} total {e['total_s']:.3f} s, model {e['model_s']:.3f} s, "
                f"overhead {e['overhead_s']:.3f} s"
            )
        if "monai" in entry:
            print(f"  overhead ratio miscore/MONAI: {entry['overhead_ratio_miscore_over_monai']}")
    write_result("sliding_window", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
