"""``miscore synth OUT``: write a synthetic CT-like dataset with labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from miscore.cli.state import state


def synth(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="New (or empty) folder to write the dataset to.")],
    cases: Annotated[int, typer.Option("--cases", "-n", help="Number of cases.")] = 10,
    shape: Annotated[
        tuple[int, int, int], typer.Option("--shape", help="Volume size X Y Z in voxels.")
    ] = (64, 64, 64),
    two_d: Annotated[
        bool, typer.Option("--2d", help="2D images (X Y of --shape); PNG by default.")
    ] = False,
    classes: Annotated[
        int, typer.Option("--classes", "-k", help="Classes, background included (>= 2).")
    ] = 3,
    layout: Annotated[
        str | None,
        typer.Option("--layout", help="msd, cases or image2d (default: msd; cases for dicom)."),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="nifti, dicom, png or sitk (default: nifti; png for --2d)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed: the same seed, the same data.")] = 0,
    oblique: Annotated[
        bool, typer.Option("--oblique", help="Rotated, LPS-stored grids (3D only).")
    ] = False,
) -> None:
    """Write phantoms: a body, an organ (class 1) and tumours (2..K-1), noise and bias field."""
    from miscore.tools.synth import write_dataset

    cli = state(ctx)
    size = list(shape[:2]) if two_d else list(shape)
    chosen_fmt = fmt or ("png" if two_d else "nifti")
    chosen_layout = layout or ("cases" if chosen_fmt == "dicom" else "msd")
    written = write_dataset(
        out,
        cli.plugins.registry,
        n_cases=cases,
        shape=size,
        classes=classes,
        layout=chosen_layout,  # type: ignore[arg-type]  # checked by write_dataset
        fmt=chosen_fmt,  # type: ignore[arg-type]
        seed=seed,
        oblique=oblique,
    )
    cli.log(f"wrote {len(written)} cases of {'x'.join(map(str, size))} voxels, {classes} classes")
    typer.echo(f"{out}: {len(written)} cases ({chosen_layout} layout, {chosen_fmt})")
