"""Per-sample augmentation time: miscore against MONAI and batchgenerators.

One 1x64x128x128 float32 patch (ours channels last: (64, 128, 128, 1)) with a 3-class label
goes through rotation + scaling + elastic deformation + mirroring + brightness + contrast +
gamma + Gaussian noise, every probability 1, image linear and label nearest-neighbour.

    python benchmarks/augment.py            # miscore only
    python benchmarks/augment.py --peers    # and the peers, measured in the same run

Each contender runs in its own worker process (the peers in the interpreter given by
--peers-python, default /tmp/peers/bin/python, which needs torch, monai and batchgenerators;
miscore is never imported there). The rounds interleave the contenders, so that a load change
on the machine hits all of them alike; the figure is the median time per sample over every
round. Results go to benchmarks/results/augment.json.

Peers' venv: python3 -m venv /tmp/peers &&
    /tmp/peers/bin/pip install torch==2.13.0 monai batchgenerators numpy scipy
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SHAPE = (64, 128, 128)
MAX_ANGLE_DEG = 15.0
SCALE = (0.85, 1.15)


def sample(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image with a bright ellipsoid, noise, and its 3-class label: (Z, Y, X)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in SHAPE], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    image = (radius < 0.7) * 2.0 + rng.standard_normal(SHAPE, dtype=np.float32) * 0.3
    label = (radius < 0.7).astype(np.uint8) + (radius < 0.35).astype(np.uint8)
    return image.astype(np.float32), label


# --- contenders: each returns a function that augments one sample -----------------------


def miscore_pipeline(seed: int, elastic: bool = True) -> Any:
    import miscore
    from miscore.pipeline.augmenting import augment_sample

    registry = miscore.PluginManager(disabled=(), trace=False).registry
    entries = [
        {"name": "rotate", "p": 1.0, "max_angle": MAX_ANGLE_DEG},
        {"name": "scale", "p": 1.0, "min": SCALE[0], "max": SCALE[1]},
        {"name": "elastic", "p": 1.0, "magnitude": 3.0, "spacing": 24},
        {"name": "flip", "p": 1.0},
        {"name": "brightness", "p": 1.0, "min": 0.75, "max": 1.25},
        {"name": "contrast", "p": 1.0, "min": 0.75, "max": 1.25},
        {"name": "gamma", "p": 1.0, "min": 0.7, "max": 1.5},
        {"name": "gaussian_noise", "p": 1.0, "min_std": 0.0, "max_std": 0.1},
    ]
    if not elastic:
        entries = [e for e in entries if e["name"] != "elastic"]
    augmentations = [registry.create("augmentation", e) for e in entries]
    image, label = sample()
    image, label = image[..., None], label[..., None]
    rng = np.random.default_rng(seed)

    def run() -> None:
        augment_sample(augmentations, image, label, rng)

    return run


def monai_pipeline(seed: int, elastic: bool = True) -> Any:
    import torch
    from monai.transforms import (
        Compose,
        Rand3DElasticd,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
    )

    angle = np.deg2rad(MAX_ANGLE_DEG)
    keys = ["image", "label"]
    spatial = dict(
        prob=1.0,
        rotate_range=(angle, angle, angle),
        scale_range=(SCALE[1] - 1,) * 3,
        spatial_size=SHAPE,
        mode=("bilinear", "nearest"),
        padding_mode="border",
    )
    pipeline = Compose(
        [
            Rand3DElasticd(keys, sigma_range=(5, 7), magnitude_range=(50, 150), **spatial)
            if elastic
            else RandAffined(keys, **spatial),
            *[RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)],
            RandScaleIntensityd("image", factors=0.25, prob=1.0),
            RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=1.0),
            RandGaussianNoised("image", prob=1.0, mean=0.0, std=0.1),
        ]
    )
    pipeline.set_random_state(seed=seed)
    image, label = sample()
    data = {"image": torch.from_numpy(image[None]), "label": torch.from_numpy(label[None])}

    def run() -> None:
        pipeline(dict(data))

    return run


def batchgenerators_pipeline(seed: int, elastic: bool = True) -> Any:
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.color_transforms import (
        BrightnessMultiplicativeTransform,
        ContrastAugmentationTransform,
        GammaTransform,
    )
    from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform
    from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

    np.random.seed(seed)  # batchgenerators draws from numpy's global state
    angle = np.deg2rad(MAX_ANGLE_DEG)
    pipeline = Compose(
        [
            SpatialTransform(
                SHAPE,
                patch_center_dist_from_border=None,
                do_elastic_deform=elastic,
                alpha=(0.0, 900.0),
                sigma=(9.0, 13.0),
                do_rotation=True,
                angle_x=(-angle, angle),
                angle_y=(-angle, angle),
                angle_z=(-angle, angle),
                do_scale=True,
                scale=SCALE,
                border_mode_data="nearest",
                order_data=1,
                border_mode_seg="constant",
                order_seg=0,
                random_crop=False,
                p_el_per_sample=1.0,
                p_rot_per_sample=1.0,
                p_scale_per_sample=1.0,
            ),
            MirrorTransform((0, 1, 2)),
            BrightnessMultiplicativeTransform((0.75, 1.25), p_per_sample=1.0),
            ContrastAugmentationTransform((0.75, 1.25), preserve_range=True, p_per_sample=1.0),
            GammaTransform((0.7, 1.5), p_per_sample=1.0),
            GaussianNoiseTransform((0.0, 0.01), p_per_sample=1.0),
        ]
    )
    image, label = sample()

    def run() -> None:
        pipeline(data=image[None, None].copy(), seg=label[None, None].astype(np.float32))

    return run


def interpolation_comparison(repeats: int) -> dict[str, float]:
    """CPU ms to resample image (linear) + label (nearest) with one rotation+scale map.

    Ours against the scipy calls the peers build on; scipy's coordinates are precomputed
    (not timed), ours are computed inside the call.
    """
    from scipy import ndimage

    from miscore.pipeline.augmenting import SpatialTransform, apply_spatial_transforms, compose

    image, label = sample()
    angle = np.deg2rad(10.0)
    cos, sin = np.cos(angle), np.sin(angle)
    linear = np.array([[1.0, 0, 0], [0, cos, -sin], [0, sin, cos]]) @ np.diag([1.1, 0.9, 1.0])
    affine = [SpatialTransform.linear(linear, [1.5, -2.0, 0.5])]
    field = np.random.default_rng(0).normal(0, 3, (3, 4, 6, 6)).astype(np.float32)
    elastic = [*affine, SpatialTransform(np.eye(4), field)]
    matrix = compose(affine).matrix
    centre = (np.asarray(SHAPE) - 1) / 2
    offset = centre + matrix[:3, 3] - matrix[:3, :3] @ centre
    grid = np.indices(SHAPE, dtype=np.float32).reshape(3, -1) - centre[:, None]
    coords = (matrix[:3, :3] @ grid + (centre + matrix[:3, 3])[:, None]).astype(np.float32)
    coords = coords.reshape(3, *SHAPE)
    mc = dict(mode="nearest", prefilter=False)
    cases = {
        "miscore_affine": lambda: apply_spatial_transforms(
            affine, image[..., None], label[..., None]
        ),
        "miscore_affine_elastic": lambda: apply_spatial_transforms(
            elastic, image[..., None], label[..., None]
        ),
        "scipy_affine_transform": lambda: (
            ndimage.affine_transform(
                image, matrix[:3, :3], offset, order=1, output=np.float32, **mc
            ),
            ndimage.affine_transform(label, matrix[:3, :3], offset, order=0, **mc),
        ),
        "scipy_map_coordinates": lambda: (
            ndimage.map_coordinates(image, coords, order=1, output=np.float32, **mc),
            ndimage.map_coordinates(label, coords, order=0, **mc),
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            start = time.process_time()
            run()
            times[name].append(time.process_time() - start)
    return {name: round(float(np.median(t)) * 1000, 2) for name, t in times.items()}


PIPELINES = {
    "miscore": miscore_pipeline,
    "monai": monai_pipeline,
    "batchgenerators": batchgenerators_pipeline,
}


SCENARIOS = {
    "elastic": "rotate+scale+elastic+flip+brightness+contrast+gamma+noise",
    "affine": "rotate+scale+flip+brightness+contrast+gamma+noise (no elastic)",
}


def worker(name: str, seed: int) -> None:
    """Serve ``SCENARIO N`` requests on stdin: augment N samples, answer times as JSON.

    Each answer holds wall-clock and CPU seconds (all threads of the process) per sample.
    """
    runs = {s: PIPELINES[name](seed, elastic=s == "elastic") for s in SCENARIOS}
    for run in runs.values():
        run()  # warm-up: imports, caches, workspaces
    print(json.dumps({"ready": name, "versions": _versions(name)}), flush=True)
    for line in sys.stdin:
        scenario, count = line.split()
        wall, cpu = [], []
        for _ in range(int(count)):
            start, start_cpu = time.perf_counter(), time.process_time()
            runs[scenario]()
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


def _versions(name: str) -> dict[str, str]:
    import importlib.metadata as md

    packages = {"miscore": ["miscore", "numpy", "scipy"], "monai": ["monai", "torch", "numpy"]}
    out = {}
    for package in packages.get(name, ["batchgenerators", "numpy", "scipy"]):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = "?"
    if name == "monai":
        import torch

        out["torch_threads"] = str(torch.get_num_threads())
    return out


class Worker:
    def __init__(self, name: str, python: str, seed: int) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--worker", name, "--seed", str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        ready = self._read()
        if not isinstance(ready, dict) or ready.get("ready") != name:
            raise RuntimeError(f"worker {name} did not start: {ready!r}")
        self.versions: dict[str, str] = ready["versions"]

    def _read(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited (code {self.process.wait()})")
        return json.loads(line)

    def run(self, scenario: str, count: int) -> dict[str, list[float]]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{scenario} {count}\n")
        self.process.stdin.flush()
        times: dict[str, list[float]] = self._read()
        return times

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", action="store_true", help="also time MONAI, batchgenerators")
    parser.add_argument(
        "--peers-python", default=os.environ.get("MISCORE_PEERS_PYTHON", "/tmp/peers/bin/python")
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--per-round", type=int, default=4, help="samples per contender/round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=sorted(PIPELINES), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "augment.json")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.seed)
        return 0

    interpolation = interpolation_comparison(args.rounds * args.per_round)
    workers = [Worker("miscore", sys.executable, args.seed)]
    if args.peers:
        workers += [Worker(n, args.peers_python, args.seed) for n in ("monai", "batchgenerators")]
    wall: dict[str, dict[str, list[float]]] = {s: {w.name: [] for w in workers} for s in SCENARIOS}
    cpu: dict[str, dict[str, list[float]]] = {s: {w.name: [] for w in workers} for s in SCENARIOS}
    try:
        for _ in range(args.rounds):
            for scenario in SCENARIOS:
                for w in workers:
                    times = w.run(scenario, args.per_round)
                    wall[scenario][w.name] += times["wall"]
                    cpu[scenario][w.name] += times["cpu"]
    finally:
        for w in workers:
            w.close()

    def ms(values: list[float]) -> float:
        return round(float(np.median(values)) * 1000, 2)

    result: dict[str, Any] = {
        "benchmark": "augment",
        "shape": [1, *SHAPE],
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "samples_per_contender": args.rounds * args.per_round,
        "versions": {w.name: w.versions for w in workers},
        "scenarios": {},
        "interpolation_cpu_ms": interpolation,
    }
    for scenario, description in SCENARIOS.items():
        median = {name: ms(t) for name, t in wall[scenario].items()}
        entry: dict[str, Any] = {
            "pipeline": description + ", every p = 1",
            "median_wall_ms": median,
            "median_cpu_ms": {name: ms(t) for name, t in cpu[scenario].items()},
        }
        if args.peers:
            entry["speedup_vs"] = {
                peer: round(value / median["miscore"], 2)
                for peer, value in median.items()
                if peer != "miscore"
            }
        result["scenarios"][scenario] = entry
        print(f"{description}:")
        for name, value in median.items():
            cpu_ms = entry["median_cpu_ms"][name]
            ratio = f"  {value / median['miscore']:5.1f}x miscore" if name != "miscore" else ""
            print(f"  {name:16s} {value:8.1f} ms/sample wall, {cpu_ms:8.1f} ms CPU{ratio}")
    print("resampling image (linear) + label (nearest), CPU ms:")
    for name, value in interpolation.items():
        print(f"  {name:24s} {value:8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
