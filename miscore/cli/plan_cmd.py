"""``miscore plan DATA --out config.yaml``: a complete config planned from the fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from miscore.cli.state import state


def plan(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="The dataset folder (any layout miscore reads).")],
    out: Annotated[Path, typer.Option("--out", help="The config file to write (YAML).")],
    memory_gb: Annotated[
        float, typer.Option("--memory-gb", help="Accelerator memory training may use, in GB.")
    ] = 8.0,
    two_d: Annotated[
        bool, typer.Option("--2d", help="Plan a 2D network on slices of 3D volumes.")
    ] = False,
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            help="auto or a registered layout (bundled: msd, cases, dicom, image2d, files).",
        ),
    ] = "auto",
    budget: Annotated[
        str | None,
        typer.Option(
            "--budget",
            help="Wall-clock time `miscore train` may take on this machine (20m, 300s, 1.5h): "
            "the planner times real training steps of candidate networks and fits width, "
            "patch, steps and epochs to it. Without it: nnU-Net's full schedule.",
        ),
    ] = None,
    cache: Annotated[
        str | None,
        typer.Option("--cache", help="With --budget: the cache training will use."),
    ] = None,
) -> None:
    """Plan spacing, intensity scheme, patch, batch and network depth; every value says why."""
    from miscore.core.atomic import write_text_atomic
    from miscore.data.dataset import Dataset
    from miscore.tools.analysis import analyze_dataset
    from miscore.tools.planning import plan_config

    cli = state(ctx)
    seconds = None
    if budget is not None:
        from miscore.tools.budget import parse_budget

        seconds = parse_budget(budget)
    dataset = Dataset.discover(data, cli.plugins.registry, layout=layout)
    fingerprint = analyze_dataset(dataset, progress=cli.log)
    planned = plan_config(
        fingerprint, cli.plugins, memory_gb=memory_gb, two_d=two_d, data_path=str(data.resolve())
    )
    if seconds is not None:
        from miscore.cli.state import import_tensorflow_quietly
        from miscore.tools.budget import plan_for_budget

        import_tensorflow_quietly(cli.debug)
        planned = plan_for_budget(planned, dataset, cli.plugins, seconds, cache=cache, log=cli.log)
    write_text_atomic(out, planned.to_yaml())
    cli.log(f"wrote {out}")
