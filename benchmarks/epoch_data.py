"""Cold and warm epochs' data time, and the cache's size against raw float32.

A dataset from ``miscore synth`` (8 cases of 128^3, 3 classes, NIfTI), clip + z-score
preprocessing, random 64^3 patches (2 per case, a third forced onto foreground), batches of
2, the default augmentation set, one loader worker; no model, only the data a training run
consumes:

- cold: the first epoch of a run with an empty cache: every case read and preprocessed into
  the cache, then the epoch's batches read, augmented and assembled;
- warm: a later epoch (or a new run on the same cache): the cases looked up in the cache
  (hits), then the epoch's batches.

    python benchmarks/epoch_data.py [--cases 8] [--size 128] [--rounds 3] [--epochs 3]

Results: benchmarks/results/epoch_data.json. No peers: they have no cache to compare.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median, versions, write_result

CONFIG = {
    "data": {"classes": 3},
    "preprocessing": [{"name": "clip", "min": -150, "max": 250}, {"name": "zscore"}],
    "patching": {"mode": "random", "patch_shape": [64, 64, 64], "samples_per_case": 2},
    "model": {"architecture": {"name": "unet"}, "loss": "dice_ce"},
    "training": {"batch_size": 2, "workers": 1},
}


def one_run(data: Path, cache: Path, epochs: int) -> dict[str, Any]:
    """Cold epoch 0, then ``epochs`` warm epochs, each with the cache lookups a run does."""
    import miscore
    from miscore.cache import open_cache
    from miscore.core.config import check_components
    from miscore.data.dataset import Dataset
    from miscore.pipeline.augmenting import expand_default
    from miscore.pipeline.loader import PatchLoader
    from miscore.pipeline.training import prepare_cases

    config = miscore.parse_config({**CONFIG, "augmentation": expand_default("default")})
    plugins = miscore.PluginManager()
    components = check_components(config, plugins.registry)
    dataset = Dataset.discover(data, plugins.registry)
    ids = dataset.labelled_ids

    def epoch(index: int) -> tuple[float, float, int]:
        start = time.perf_counter()
        store = open_cache(config, str(cache))
        cases = prepare_cases(
            config, plugins, dataset, ids, store, components["preprocessing"], lambda m: None
        )
        prepared = time.perf_counter() - start
        loader = PatchLoader(
            cases,
            config,
            components["augmentation"],
            config.data.classes,
            cache_root=str(store.root),
            cache_settings=store.settings,
        )
        batches = sum(1 for _ in loader.epoch_batches(index))
        loader.close()
        return time.perf_counter() - start, prepared, batches

    cold, cold_prepare, batches = epoch(0)
    warm = [epoch(i) for i in range(1, epochs + 1)]
    store = open_cache(config, str(cache))
    info = store.info() if hasattr(store, "info") else None
    return {
        "cold_s": cold,
        "cold_cache_build_s": cold_prepare,
        "warm_s": median([w[0] for w in warm]),
        "warm_lookup_s": median([w[1] for w in warm]),
        "batches": batches,
        "cache_ratio_to_raw_float32": None if info is None else info.ratio,
        "cache_mb": None if info is None else info.stored_bytes / 2**20,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="voxels per axis")
    parser.add_argument("--rounds", type=int, default=3, help="runs, each with a fresh cache")
    parser.add_argument("--epochs", type=int, default=3, help="warm epochs per run")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        size = str(args.size)
        subprocess.run(
            [sys.executable, "-m", "miscore", "synth", str(data), "--cases", str(args.cases),
             "--shape", size, size, size, "--classes", "3"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        for index in range(args.rounds):
            runs.append(one_run(data, Path(tmp) / f"cache{index}", args.epochs))
    cold = median([r["cold_s"] for r in runs])
    warm = median([r["warm_s"] for r in runs])
    result: dict[str, Any] = {
        "benchmark": "epoch_data",
        "cases": args.cases,
        "shape": [args.size] * 3,
        "patch": CONFIG["patching"]["patch_shape"],
        "batches_per_epoch": runs[0]["batches"],
        "runs": args.rounds,
        "warm_epochs_per_run": args.epochs,
        "machine": machine(),
        "versions": versions("miscore", "zarr", "numpy", "nibabel"),
        "cold_epoch_s": round(cold, 3),
        "cold_cache_build_s": round(median([r["cold_cache_build_s"] for r in runs]), 3),
        "warm_epoch_s": round(warm, 3),
        "warm_cache_lookup_s": round(median([r["warm_lookup_s"] for r in runs]), 3),
        "warm_speedup": round(cold / warm, 2),
        "cache_ratio_to_raw_float32": round(runs[0]["cache_ratio_to_raw_float32"], 4),
        "cache_mb": round(runs[0]["cache_mb"], 2),
    }
    print(
        f"{args.cases} cases of {args.size}^3, {result['batches_per_epoch']} batches/epoch: "
        f"cold epoch {cold:.2f} s (cache build {result['cold_cache_build_s']:.2f} s), warm "
        f"epoch {warm:.2f} s (lookups {result['warm_cache_lookup_s']:.3f} s): "
        f"{result['warm_speedup']}x"
    )
    print(
        f"cache: {result['cache_mb']:.1f} MB, {result['cache_ratio_to_raw_float32']:.3f} "
        "of raw float32"
    )
    write_result("epoch_data", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
