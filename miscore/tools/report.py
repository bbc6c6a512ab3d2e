"""A static HTML report of a run: figures, metrics and the config, no server needed."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from miscore.core.atomic import write_text_atomic
from miscore.pipeline.evaluate import EvaluationReport

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 4px 0; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.cases { display: grid; grid-template-columns: 1fr; gap: 1em; }
"""


def _summary_table(report: EvaluationReport, metrics: Sequence[str], names: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(m)} (mean ± std)</th>" for m in metrics)
    rows = []
    for class_id in report.classes:
        label = names[class_id] if class_id < len(names) else str(class_id)
        cells = []
        for metric in metrics:
            s = report.stats(class_id, metric)
            cells.append(f"<td>{s.mean:.3f} ± {s.std:.3f}</td>")
        rows.append(f"<tr><td>{class_id} {html.escape(label)}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>class</th>{head}</tr>{''.join(rows)}</table>"


def _case_table(report: EvaluationReport, metrics: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    rows = []
    for row in report.rows:
        cells = "".join(f"<td>{row.values.get(m, float('nan')):.3f}</td>" for m in metrics)
        rows.append(f"<tr><td>{html.escape(row.case)}</td><td>{row.class_id}</td>{cells}</tr>")
    return f"<table><tr><th>case</th><th>class</th>{head}</tr>{''.join(rows)}</table>"


def write_html_report(
    path: Path,
    *,
    title: str,
    report: EvaluationReport,
    config_yaml: str,
    curves: Path | None,
    boxplot: Path | None,
    overlays: Sequence[Path],
    class_names: Sequence[str],
    facts: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write ``report.html`` beside its figures (linked by relative paths)."""
    base = path.parent
    metrics = [m for m in ("dice", "iou", "hd95", "assd", "nsd") if m in report.metrics]

    def rel(p: Path) -> str:
        return html.escape(str(p.relative_to(base)) if p.is_relative_to(base) else str(p))

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    if facts:
        items = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in facts
        )
        parts.append(f"<table>{items}</table>")
    parts.append("<h2>Metrics on the held-out cases</h2>")
    parts.append(_summary_table(report, metrics, class_names))
    if boxplot is not None:
        parts.append(f"<p><img src='{rel(boxplot)}' alt='Dice per class'></p>")
    if curves is not None:
        parts.append("<h2>Learning curves</h2>")
        parts.append(f"<p><img src='{rel(curves)}' alt='learning curves'></p>")
    if overlays:
        parts.append("<h2>Cases: image | ground truth | prediction</h2><div class='cases'>")
        for overlay in overlays:
            parts.append(f"<div><b>{html.escape(overlay.stem)}</b><br>")
            parts.append(f"<img src='{rel(overlay)}' alt='{html.escape(overlay.stem)}'></div>")
        parts.append("</div>")
    parts.append("<h2>Per case</h2>")
    parts.append(_case_table(report, metrics))
    parts.append("<h2>Configuration</h2>")
    parts.append(f"<pre>{html.escape(config_yaml)}</pre></body></html>")
    return write_text_atomic(path, "\n".join(parts) + "\n")
