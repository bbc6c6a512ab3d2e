"""``miscore demo``: the whole pipeline on synthetic data, with a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from miscore.cli.state import import_tensorflow_quietly, print_json, state


def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Folder for everything (new).")] = Path(
        "demo-out"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="A tiny run (seconds), to check the installation.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Synthetic phantoms -> plan -> train a 3D U-Net -> predict -> evaluate -> report."""
    from miscore.tools.demo import run_demo

    cli = state(ctx)
    import_tensorflow_quietly(cli.debug)
    result = run_demo(out, quick=quick, plugins=cli.plugins, log=cli.log)
    if as_json:
        print_json(result.model_dump())
        return
    dice = ", ".join(f"{name} {value:.3f}" for name, value in result.dice.items())
    print(f"Dice on held-out cases: {dice} (mean {result.mean_foreground_dice:.3f})")
    print(f"finished in {result.seconds / 60:.1f} min; report: {result.report}")
