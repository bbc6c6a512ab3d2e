"""Reading a 512x512x300 int16 .nii.gz: miscore's nifti IO against nibabel, SimpleITK, MONAI.

The file is a CT-like phantom (HU body and organs, noise), written once with nibabel. Each
contender reads the whole volume into memory as its users get it:

- miscore: ``registry.get_io("nifti")().read(path)`` -> Volume (int16 kept, channels last);
- nibabel: ``np.asanyarray(nib.load(path).dataobj)`` (int16);
- SimpleITK: ``sitk.GetArrayFromImage(sitk.ReadImage(path))`` (int16);
- MONAI: ``LoadImage(image_only=True)(path)`` (its default: float32 MetaTensor, nibabel inside).

    python benchmarks/nifti_read.py            # miscore, nibabel, SimpleITK
    python benchmarks/nifti_read.py --peers    # and MONAI (in the peers' interpreter)

Fresh worker processes per round, rounds interleaved; medians. Results:
benchmarks/results/nifti_read.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
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

SHAPE = (512, 512, 300)


def write_phantom(path: Path) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    x, y = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in SHAPE[:2]], indexing="ij")
    body = (x / 0.8) ** 2 + (y / 0.6) ** 2 < 1
    organ = ((x - 0.2) / 0.25) ** 2 + (y / 0.2) ** 2 < 1
    plane = np.where(body, 40.0, -1000.0) + np.where(organ, 60.0, 0.0)
    image = np.empty(SHAPE, np.int16)
    for z in range(SHAPE[2]):
        noise = rng.normal(0.0, 15.0, SHAPE[:2]).astype(np.float32)
        image[:, :, z] = np.round(plane + noise * body).astype(np.int16)
    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    nib.save(nib.Nifti1Image(image, affine), path)


def reader(name: str) -> Any:
    if name == "miscore":
        import miscore

        io = miscore.PluginManager().registry.get_io("nifti")()
        return lambda path: io.read(path).array
    if name == "nibabel":
        import nibabel as nib

        return lambda path: np.asanyarray(nib.load(path).dataobj)
    if name == "sitk":
        import SimpleITK as sitk

        return lambda path: sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    return lambda path: load(str(path))


PACKAGES = {
    "miscore": ("miscore", "nibabel"),
    "nibabel": ("nibabel",),
    "sitk": ("SimpleITK",),
    "monai": ("monai", "nibabel", "torch"),
}


def worker(name: str, path: Path, repeats: int) -> None:
    read = reader(name)
    times, shape, dtype = [], None, None
    for _ in range(repeats):
        start = time.perf_counter()
        array = read(path)
        times.append(time.perf_counter() - start)
        shape, dtype = [int(n) for n in array.shape], str(array.dtype)
        del array
    reply({"times": times, "shape": shape, "dtype": dtype, "versions": versions(*PACKAGES[name])})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", action="store_true", help="also time MONAI LoadImage")
    parser.add_argument("--peers-python", default=DEFAULT_PEERS_PYTHON)
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per contender")
    parser.add_argument("--repeats", type=int, default=2, help="reads per process")
    parser.add_argument("--worker", choices=sorted(PACKAGES), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.path, args.repeats)
        return 0
    script = Path(__file__).resolve()
    contenders = {"miscore": sys.executable, "nibabel": sys.executable, "sitk": sys.executable}
    if args.peers:
        contenders["monai"] = args.peers_python
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ct.nii.gz"
        write_phantom(path)
        size_mb = path.stat().st_size / 2**20
        times: dict[str, list[float]] = {name: [] for name in contenders}
        found: dict[str, Any] = {}
        for _ in range(args.rounds):
            for name, python in contenders.items():
                answer = run_worker(
                    python, script, name, "--path", str(path), "--repeats", str(args.repeats)
                )
                times[name] += answer["times"]
                found[name] = answer
    medians = {name: median(t) for name, t in times.items()}
    result: dict[str, Any] = {
        "benchmark": "nifti_read",
        "shape": list(SHAPE),
        "dtype": "int16",
        "file_mb": round(size_mb, 1),
        "reads_per_contender": args.rounds * args.repeats,
        "machine": machine(),
        "contenders": {
            name: {
                "median_s": round(medians[name], 3),
                "ratio_miscore_over_this": round(medians["miscore"] / medians[name], 3),
                "returns": f"{found[name]['dtype']} {found[name]['shape']}",
                "versions": found[name]["versions"],
            }
            for name in contenders
        },
    }
    print(f"{'x'.join(map(str, SHAPE))} int16 .nii.gz ({size_mb:.0f} MB):")
    for name, entry in result["contenders"].items():
        print(
            f"  {name:8s} {entry['median_s']:.3f} s  (miscore/{name} "
            f"{entry['ratio_miscore_over_this']:.2f})  {entry['returns']}"
        )
    write_result("nifti_read", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
