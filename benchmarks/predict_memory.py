"""Peak memory of predicting one large volume: miscore against MONAI, each in a fresh process.

A 512x512x400 float32 volume (1 channel) is predicted with a 1x1 convolution to 3 classes
(softmax) in windows of 128x128x64, then turned into a label map by argmax. Overlap 0.25 (the
peak does not depend on it; it keeps the run short). Reported per contender: the process's
resident memory before predicting (framework imported, model built, input in memory), its peak
during prediction (``VmHWM``), and the difference: what the prediction itself needed.

    python benchmarks/predict_memory.py            # miscore only
    python benchmarks/predict_memory.py --peers    # and MONAI

Results: benchmarks/results/predict_memory.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    DEFAULT_PEERS_PYTHON,
    machine,
    peak_rss_mb,
    reply,
    rss_mb,
    run_worker,
    versions,
    write_result,
)

SHAPE = (512, 512, 400)
ROI = (128, 128, 64)
OVERLAP = 0.25
CLASSES = 3


def volume() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)


def miscore_worker() -> dict[str, Any]:
    import keras

    from miscore.pipeline.inference import SlidingWindow, labels_from_scores

    model = keras.Sequential(
        [keras.Input((*ROI, 1)), keras.layers.Conv3D(CLASSES, 1, activation="softmax")]
    )
    warm = np.zeros((1, *ROI, 1), np.float32)
    model.predict_on_batch(warm)
    image = volume()[..., None]

    def predict_batch(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(batch))

    window = SlidingWindow(predict_batch, ROI, overlap=OVERLAP, blend="gaussian")
    before = rss_mb()
    start = time.perf_counter()
    label = labels_from_scores(window(image))
    seconds = time.perf_counter() - start
    return {
        "rss_before_mb": before,
        "peak_mb": peak_rss_mb(),
        "seconds": seconds,
        "label_dtype": str(label.dtype),
        "windows": len(window.windows(SHAPE)),
        "versions": versions("miscore", "keras", "tensorflow", "numpy"),
    }


def monai_worker() -> dict[str, Any]:
    import torch
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    conv = torch.nn.Conv3d(1, CLASSES, 1)
    calls = [0]

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return torch.softmax(conv(batch), dim=1)

    with torch.no_grad():
        predictor(torch.zeros((1, 1, *ROI)))
    calls[0] = 0
    image = torch.from_numpy(volume()[None, None])
    before = rss_mb()
    start = time.perf_counter()
    with torch.no_grad():
        scores = sliding_window_inference(
            image, ROI, 1, predictor, overlap=OVERLAP, mode="gaussian"
        )
        label = torch.argmax(scores, dim=1).to(torch.uint8)
    seconds = time.perf_counter() - start
    return {
        "rss_before_mb": before,
        "peak_mb": peak_rss_mb(),
        "seconds": seconds,
        "label_dtype": str(label.dtype),
        "windows": calls[0],
        "versions": versions("monai", "torch", "numpy"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", action="store_true", help="also measure MONAI")
    parser.add_argument("--peers-python", default=DEFAULT_PEERS_PYTHON)
    parser.add_argument("--worker", choices=["miscore", "monai"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        reply(miscore_worker() if args.worker == "miscore" else monai_worker())
        return 0
    script = Path(__file__).resolve()
    contenders = {"miscore": sys.executable}
    if args.peers:
        contenders["monai"] = args.peers_python
    found = {name: run_worker(python, script, name) for name, python in contenders.items()}
    result: dict[str, Any] = {
        "benchmark": "predict_memory",
        "volume": list(SHAPE),
        "roi": list(ROI),
        "overlap": OVERLAP,
        "classes": CLASSES,
        "input_mb": round(float(np.prod(SHAPE)) * 4 / 2**20, 1),
        "machine": machine(),
        "contenders": {},
    }
    for name, answer in found.items():
        entry = {
            "rss_before_mb": round(answer["rss_before_mb"], 1),
            "peak_mb": round(answer["peak_mb"], 1),
            "prediction_mb": round(answer["peak_mb"] - answer["rss_before_mb"], 1),
            "seconds": round(answer["seconds"], 2),
            "windows": answer["windows"],
            "versions": answer["versions"],
        }
        result["contenders"][name] = entry
        print(
            f"{name:8s} before {entry['rss_before_mb']:7.0f} MB, peak {entry['peak_mb']:7.0f} MB, "
            f"prediction itself {entry['prediction_mb']:7.0f} MB ({entry['seconds']:.1f} s, "
            f"{entry['windows']} windows)"
        )
    if "monai" in found:
        ours, theirs = result["contenders"]["miscore"], result["contenders"]["monai"]
        result["ratio_miscore_over_monai"] = {
            "peak": round(ours["peak_mb"] / theirs["peak_mb"], 3),
            "prediction": round(ours["prediction_mb"] / theirs["prediction_mb"], 3),
        }
        print(f"ratio miscore/MONAI: {result['ratio_miscore_over_monai']}")
    write_result("predict_memory", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
