"""The README's Python example runs as printed, on the tiny synthetic data it makes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README.md has no python block under '## Python API'"
    return match.group(1)


def test_readme_python_example_runs(tmp_path: Path) -> None:
    code = python_example() + "\nprint('LABEL', label.array.shape, label.array.dtype)\n"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LABEL (32, 32, 32, 1) uint8" in result.stdout
    written = sorted(p.name for p in (tmp_path / "predictions").iterdir())
    assert written == [f"case_00{i}.nii.gz" for i in range(6)]
    source = nib.load(tmp_path / "data" / "imagesTr" / "case_000_0000.nii.gz")
    prediction = nib.load(tmp_path / "predictions" / "case_000.nii.gz")
    assert np.array_equal(prediction.affine, source.affine)
