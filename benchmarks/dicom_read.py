"""Reading a DICOM CT series: the dicom plugin against SimpleITK's ImageSeriesReader.

A synthetic CT series (int16 HU, shuffled file names) is written once with the plugin's writer;
then each reader loads it ``--repeats`` times and the best time counts. Also times the plugin's
writer and reading a DICOM SEG onto the image grid.

Run: .venv/bin/python benchmarks/dicom_read.py [--size 256 256 96] [--repeats 3]
Writes benchmarks/results/dicom_read.json. Figures are ratios within one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from miscore_dicom import DicomIO

import miscore

RESULTS = Path(__file__).parent / "results" / "dicom_read.json"


def best_of(repeats: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def read_sitk(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def bench(args: argparse.Namespace) -> dict[str, Any]:
    shape = tuple(args.size)
    rng = np.random.default_rng(0)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    body = sum(g**2 for g in grids) < 0.8
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 12, size=shape)
    volume = miscore.Volume(np.round(hu).astype(np.int16)[..., None], np.diag([0.8, 0.8, 2.0, 1]))
    label = (body & (grids[0] > 0)).astype(np.uint8)[..., None]
    io = DicomIO()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ct"
        write_s = best_of(1, lambda: io.write(volume, folder))
        image = io.read(folder)
        assert np.array_equal(image.array, volume.array)
        assert np.array_equal(read_sitk(folder).transpose(2, 1, 0), volume.array[..., 0])
        ours = best_of(args.repeats, lambda: io.read(folder))
        theirs = best_of(args.repeats, lambda: read_sitk(folder))
        seg = DicomIO(output="dicom-seg").write(
            image.with_array(label), Path(tmp) / "seg.dcm", reference=image
        )
        seg_read = best_of(args.repeats, lambda: io.read_label(seg, image))
    return {
        "shape": list(shape),
        "files": shape[2],
        "machine": platform.processor() or platform.machine(),
        "read_miscore_s": round(ours, 4),
        "read_simpleitk_s": round(theirs, 4),
        "miscore_over_simpleitk": round(ours / theirs, 2),
        "write_series_s": round(write_s, 4),
        "read_seg_s": round(seg_read, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[256, 256, 96])
    parser.add_argument("--repeats", type=int, default=3)
    results = bench(parser.parse_args())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
