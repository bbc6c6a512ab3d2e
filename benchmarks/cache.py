"""Cache size against raw float32, and the time to read a random patch: cache vs NIfTI.

Each cache is read two ways: zarr's own indexing, and ``miscore.cache.chunkread.window_reader``
(the training loader's path: the chunk files decoded directly).

Synthetic CT-like phantoms (integer HU, organs as ellipsoids, noise), written as NIfTI
(int16, as scanners store them), then cached after two stand-in preprocessings:
``none`` (HU as float32) and ``zscore`` (full-mantissa floats, the hard case for compression).

Run: .venv/bin/python benchmarks/cache.py [--size 256 256 128] [--cases 3] [--patches 30]
Writes benchmarks/results/cache.json. Figures are ratios within one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

import miscore
from miscore.cache import CacheSettings, CaseCache
from miscore.cache.chunkread import window_reader

RESULTS = Path(__file__).parent / "results" / "cache.json"
READ_CACHES = (
    "zscore/lz4/f32/c32",
    "zscore/zstd/f32/c64",
    "zscore/lz4/f32/c64",
    "zscore/zstd/f16/c64",
    "zscore/none/f32/c64",
    "none/zstd/f32/c64",
)


def phantom(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 image (HU) and a 3-class label."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    body = sum(g**2 for g in grids) < 0.8
    image = np.where(body, 40.0, -1000.0).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    for k in (1, 2):
        center = rng.uniform(-0.4, 0.4, size=3)
        radius = rng.uniform(0.15, 0.3)
        organ = sum((g - c) ** 2 for g, c in zip(grids, center, strict=True)) < radius**2
        image[organ] = 80.0 + 60 * k
        label[organ] = k
    image += rng.normal(0, 12, size=shape).astype(np.float32)
    return np.round(image).astype(np.int16), label


def stand_in(image: np.ndarray, mode: str) -> np.ndarray:
    data = image.astype(np.float32)
    if mode == "zscore":
        data = (data - data.mean()) / data.std()
    return data


def bench(args: argparse.Namespace) -> dict[str, Any]:
    shape = tuple(args.size)
    patch = (64, 64, 64)
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {
        "shape": list(shape),
        "cases": args.cases,
        "patch": list(patch),
        "machine": platform.processor() or platform.machine(),
        "sizes": {},
        "patch_read_ms": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        niftis: dict[str, list[Path]] = {"nii": [], "nii.gz": []}
        cases: list[tuple[str, np.ndarray, np.ndarray]] = []
        for i in range(args.cases):
            image, label = phantom(shape, seed=i)
            for suffix in niftis:
                path = root / f"case_{i}.{suffix}"
                nib.save(nib.Nifti1Image(image, np.eye(4)), path)
                niftis[suffix].append(path)
            cases.append((f"case_{i}", image, label))

        caches: dict[str, tuple[CaseCache, list[Any]]] = {}
        for pre in ("none", "zscore"):
            for compression in ("zstd", "lz4", "none"):
                for float16 in (False, True):
                    for chunk in (32, 64) if (compression, float16) == ("lz4", False) else (64,):
                        settings = CacheSettings(
                            compression=compression,  # type: ignore[arg-type]
                            float16=float16,
                            chunks=(chunk,) * 3,
                        )
                        name = f"{pre}/{compression}/{'f16' if float16 else 'f32'}/c{chunk}"
                        cache = CaseCache(root / "cache" / name.replace("/", "_"), settings)
                        start = time.perf_counter()
                        entries = []
                        for case_id, image, label in cases:
                            volume = miscore.Volume(stand_in(image, pre)[..., None])
                            case = miscore.Case(
                                case_id, volume, volume.with_array(label[..., None])
                            )
                            entries.append(cache.put(cache.key(case_id, [], {"pre": pre}), case))
                        seconds = time.perf_counter() - start
                        info = cache.info()
                        results["sizes"][name] = {
                            "ratio_to_raw_float32": round(info.ratio or 0.0, 4),
                            "stored_mb": round(info.stored_bytes / 1e6, 2),
                            "write_s_per_case": round(seconds / len(cases), 3),
                        }
                        caches[name] = (cache, entries)

        corners = [
            (
                int(rng.integers(len(cases))),
                [int(rng.integers(0, n - p + 1)) for n, p in zip(shape, patch, strict=True)],
            )
            for _ in range(args.patches)
        ]

        readers: dict[str, Any] = {}
        for suffix, paths in niftis.items():

            def from_nifti(index: int, box: tuple[slice, ...], paths: list[Path] = paths) -> Any:
                # What a loader without a cache does: open the file, take the patch.
                return np.asarray(nib.load(paths[index]).dataobj[box], dtype=np.float32)

            readers[f"nifti {suffix}"] = from_nifti
        for name in READ_CACHES:
            entries = caches[name][1]

            def from_cache(index: int, box: tuple[slice, ...], entries: list[Any] = entries) -> Any:
                return entries[index].image[box]

            # what the training loader reads through: chunk files decoded directly
            direct = [window_reader(e.image) for e in entries]

            def from_chunks(index: int, box: tuple[slice, ...], direct: list[Any] = direct) -> Any:
                return direct[index][box]

            readers[f"cache {name} (zarr)"] = from_cache
            readers[f"cache {name} (chunkread)"] = from_chunks
        # Interleaved (every reader on each patch in turn) and medians: robust to machine load.
        times: dict[str, list[float]] = {name: [] for name in readers}
        for index, lo in corners:
            box = tuple(slice(a, a + p) for a, p in zip(lo, patch, strict=True))
            for name, read in readers.items():
                start = time.perf_counter()
                out = read(index, box)
                times[name].append(time.perf_counter() - start)
                assert out.shape[:3] == patch
        reference = float(np.median(times["nifti nii.gz"]))
        for name, values in times.items():
            median = float(np.median(values))
            results["patch_read_ms"][name] = {
                "median_ms": round(median * 1000, 2),
                "speedup_vs_nii_gz": round(reference / median, 2),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[256, 256, 128])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--patches", type=int, default=30)
    results = bench(parser.parse_args())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    miscore.core.atomic.write_text_atomic(RESULTS, json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
