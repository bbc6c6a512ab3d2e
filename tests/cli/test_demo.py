"""``miscore demo --quick``: every step runs and every artefact of the report is there."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tests.cli.helpers import assert_one_line_error, run_cli


def test_quick_demo_writes_the_whole_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_cli("demo", "--quick", "--out", out, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert set(figures["dice"]) == {"organ", "tumour"}
    assert 0.0 <= figures["mean_foreground_dice"] <= 1.0
    report = out / "report"
    for name in ("report.html", "metrics.tsv", "summary.tsv", "curves.png", "dice_boxplot.png"):
        assert (report / name).is_file(), name
    gifs = sorted((report / "overlays").glob("*.gif"))
    assert [g.name for g in gifs] == ["case_000.gif", "case_001.gif"]
    with Image.open(gifs[0]) as gif:
        assert gif.n_frames == 32  # one frame per slice
    html = (report / "report.html").read_text()
    assert "overlays/case_000.gif" in html and "dice_boxplot.png" in html
    rows = (report / "metrics.tsv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2  # header + 2 cases x 2 foreground classes
    assert run_cli("config", "validate", out / "config.yaml").returncode == 0


def test_demo_refuses_a_used_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    line = assert_one_line_error(run_cli("demo", "--quick", "--out", tmp_path))
    assert "not empty" in line
    assert (tmp_path / "keep.txt").read_text() == "mine"
