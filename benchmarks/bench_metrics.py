"""Surface-distance metrics: what the bounding-box crop and the distance cache buy.

Run: .venv/bin/python benchmarks/bench_metrics.py [--repeat 3]
Prints a table and writes benchmarks/results/metrics.json. Figures are ratios within one run.

Cases (a 256x256x128 grid, spacing 0.8x0.8x2.0 mm, truth vs a prediction shifted 2 voxels
and 5% larger):
- small: a sphere of radius 15 voxels (a lesion);
- large: a sphere of radius 80 voxels (an organ filling much of the image).
Variants, each computing hd95 + assd + nsd for one class:
- medpy: medpy.metric.binary hd95 + assd (no nsd; medpy recomputes the EDTs per call);
- full: our distances on the full grid, recomputed for each metric (no crop, no cache);
- crop: cropped to the masks' bounding box, recomputed for each metric (no cache);
- crop+cache: what miscore.pipeline.evaluate does
  (read-only masks: the three metrics share one pass).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

import miscore
from miscore.pipeline.evaluate import evaluate_case

SHAPE = (256, 256, 128)
SPACING = (0.8, 0.8, 2.0)
METRICS = ("hd95", "assd", "nsd")


def sphere(radius: float, centre: tuple[float, float, float]) -> npt.NDArray[np.bool_]:
    grids = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    # in mm, so the sphere is round in the world despite the anisotropic grid
    squared = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, SPACING, strict=True))
    mask: npt.NDArray[np.bool_] = squared <= (radius * SPACING[0]) ** 2
    return mask


def full_grid_distances(
    pred: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    from miscore_metrics.surface import boundary
    from scipy.ndimage import distance_transform_edt

    pb, tb = boundary(pred), boundary(truth)
    to_truth = distance_transform_edt(~tb, sampling=SPACING)[pb]
    to_pred = distance_transform_edt(~pb, sampling=SPACING)[tb]
    return np.concatenate([to_truth, to_pred])


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    import miscore_metrics

    registry = miscore.PluginManager(disabled=(), trace=False).registry
    metrics = [registry.create("metric", name) for name in METRICS]
    centre = (128.0, 128.0, 64.0)
    results: dict[str, dict[str, float]] = {}
    for label, radius in (("small", 15.0), ("large", 80.0)):
        truth = sphere(radius, centre)
        pred = sphere(radius * 1.05, (centre[0] + 2, centre[1], centre[2]))
        label_truth = miscore.Volume(truth[..., None].astype(np.uint8), np.diag([*SPACING, 1]))
        label_pred = label_truth.with_array(pred[..., None].astype(np.uint8))

        def no_cache(p: npt.NDArray[np.bool_] = pred, t: npt.NDArray[np.bool_] = truth) -> None:
            for m in metrics:  # writable masks are never cached
                m.compute(p, t, SPACING)

        def full(p: npt.NDArray[np.bool_] = pred, t: npt.NDArray[np.bool_] = truth) -> None:
            for _ in METRICS:
                full_grid_distances(p, t)

        def cached(p: miscore.Volume = label_pred, t: miscore.Volume = label_truth) -> None:
            miscore_metrics.clear_cache()
            evaluate_case("x", p, t, metrics, classes=[1])

        row = {
            "full": best_of(args.repeat, full),
            "crop": best_of(args.repeat, no_cache),
            "crop+cache": best_of(args.repeat, cached),
        }
        try:
            from medpy.metric import binary

            row["medpy"] = best_of(
                args.repeat,
                lambda p=pred, t=truth: (
                    binary.hd95(p, t, voxelspacing=SPACING),
                    binary.assd(p, t, voxelspacing=SPACING),
                ),
            )
        except ImportError:
            pass
        # the answers agree whatever the path
        ours = evaluate_case("x", label_pred, label_truth, metrics, classes=[1])[0].values
        pooled = full_grid_distances(pred, truth)
        assert abs(ours["hd95"] - float(np.percentile(pooled, 95))) < 1e-9
        assert abs(ours["assd"] - float(pooled.mean())) < 1e-9
        results[label] = row

    print(f"hd95+assd+nsd of one class on a {SHAPE} grid, best of {args.repeat} (seconds)")
    print(f"{'case':8}" + "".join(f"{k:>12}" for k in ("medpy", "full", "crop", "crop+cache")))
    for label, row in results.items():
        cells = "".join(
            f"{row.get(k, float('nan')):12.3f}" for k in ("medpy", "full", "crop", "crop+cache")
        )
        print(f"{label:8}{cells}")
        print(
            f"{'':8}crop speed-up x{row['full'] / row['crop']:.1f}, "
            f"cache speed-up x{row['crop'] / row['crop+cache']:.1f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "metrics",
        "shape": SHAPE,
        "spacing": SPACING,
        "metrics": METRICS,
        "repeat": args.repeat,
        "machine": {"python": platform.python_version(), "cpu": platform.processor()},
        "seconds": results,
        "ratios": {
            label: {
                "crop_speedup": row["full"] / row["crop"],
                "cache_speedup": row["crop"] / row["crop+cache"],
            }
            for label, row in results.items()
        },
    }
    path = args.out / "metrics.json"
    miscore.core.atomic.write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
