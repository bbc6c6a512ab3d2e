"""``miscore analyze DATA``: the dataset fingerprint, as a summary, JSON, or a report folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from miscore.cli.state import print_json, state


def analyze(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="The dataset folder (any layout miscore reads).")],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the fingerprint as JSON on stdout.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write fingerprint.json, histograms and class plots here."),
    ] = None,
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            help="auto or a registered layout (bundled: msd, cases, dicom, image2d, files).",
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampled voxels.")] = 0,
) -> None:
    """Describe a dataset: shapes, spacings, orientations, intensities, classes, mismatches."""
    from miscore.data.dataset import Dataset
    from miscore.tools.analysis import analyze_dataset, write_report

    cli = state(ctx)
    dataset = Dataset.discover(data, cli.plugins.registry, layout=layout)
    fingerprint = analyze_dataset(dataset, seed=seed, progress=cli.log)
    if out is not None:
        for path in write_report(fingerprint, out):
            cli.log(f"wrote {path}")
    if json_output:
        print_json(fingerprint.model_dump(mode="json"))
        return
    print(summary(fingerprint))


def summary(fingerprint: object) -> str:
    """The fingerprint as a few lines for people."""
    from miscore.tools.analysis import Fingerprint

    assert isinstance(fingerprint, Fingerprint)
    f = fingerprint

    def axes(values: list[float], digits: int = 3) -> str:
        return " x ".join(f"{v:.{digits}g}" for v in values)

    lines = [
        f"dataset    {f.dataset} ({f.layout}), {f.cases} cases, {f.labelled_cases} labelled, "
        f"{f.dims}D, {f.channels} channel(s){', CT' if f.looks_like_ct else ''}",
        f"shape      median {axes(f.shape.median, 4)}  min {axes(f.shape.min, 4)}  "
        f"max {axes(f.shape.max, 4)}",
        f"spacing    median {axes(f.spacing.median)}  min {axes(f.spacing.min)}  "
        f"max {axes(f.spacing.max)} mm",
        "orientation " + ", ".join(f"{code}: {n}" for code, n in f.orientations.items()),
    ]
    for channel in f.intensity:
        for where, s in (("all", channel.overall), ("foreground", channel.foreground)):
            if s.voxels:
                lines.append(
                    f"channel {channel.channel} {where:<10} mean {s.mean:.4g} std {s.std:.4g} "
                    f"p0.5 {s.percentile_00_5:.4g} p99.5 {s.percentile_99_5:.4g}"
                )
    for c in f.classes:
        lines.append(
            f"class {c.id} {c.name or '':<12} {c.frequency:8.4%} of voxels, in {c.cases} cases, "
            f"mean {c.volume_ml_mean:.4g} ml"
        )
    for problem in f.mismatches:
        lines.append(f"mismatch   {problem}")
    return "\n".join(lines)
