"""``miscore bench CONFIG --data DATA``: time every stage on your data, say what bounds training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from miscore.cli.state import import_tensorflow_quietly, print_json, state


def bench(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="The YAML config file.")],
    data: Annotated[
        Path | None, typer.Option("--data", help="Dataset folder (else config data.path).")
    ] = None,
    cases: Annotated[
        int, typer.Option("--cases", min=1, help="Labelled cases to use (the first N).")
    ] = 3,
    repeats: Annotated[
        int, typer.Option("--repeats", min=2, help="Timings per stage; the median is shown.")
    ] = 5,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Override training.workers.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Time read, preprocessing, cache, augmentation, batches, train steps and prediction.

    Ends with a verdict: whether data loading or the model bounds training, and by how much.
    A throw-away cache is built in the temp folder; your cache and model folders are untouched.
    """
    from miscore.core.config import load_config
    from miscore.core.errors import InputError
    from miscore.tools.bench import format_seconds, run_bench

    cli = state(ctx)
    settings = load_config(config)
    if workers is not None:
        settings.training.workers = workers
    dataset = data or (Path(settings.data.path) if settings.data.path else None)
    if dataset is None:
        raise InputError("no dataset: give --data DATA or set data.path in the config")
    import_tensorflow_quietly(cli.debug)
    report = run_bench(
        settings,
        dataset,
        plugins=cli.plugins,
        cases=cases,
        repeats=repeats,
        config_name=str(config),
        local_plugins=cli.local_plugins,
        log=cli.log,
    )
    if as_json:
        print_json(report.model_dump(mode="json"))
        return
    machine = report.machine
    typer.echo(
        f"{machine.cpu}, {machine.cpus} CPUs, {machine.memory_gb:g} GiB"
        f"{', GPUs: ' + ', '.join(machine.gpus) if machine.gpus else ', no GPU'}"
    )
    typer.echo(
        f"{len(report.cases)} cases, batch {report.batch_size} of "
        f"{'x'.join(map(str, report.patch_shape))}, {report.workers} loader worker(s); "
        f"median of {repeats}"
    )
    typer.echo(f"{'stage':<18} {'median':>10} {'mean':>10} {'per':<7} {'peak RSS':>10}  what")
    for stage in report.stages:
        typer.echo(
            f"{stage.name:<18} {format_seconds(stage.median_s):>10} "
            f"{format_seconds(stage.mean_s):>10} {stage.unit:<7} "
            f"{stage.peak_rss_mb:>7.0f} MB  {stage.what}"
        )
        if stage.name == "predict":
            typer.echo(
                f"{'':<18} {format_seconds(stage.extra['model_s']):>10} in the model, "
                f"{format_seconds(stage.extra['overhead_s'])} overhead (windows, blending, argmax)"
            )
    typer.echo(f"verdict: {report.verdict.message}")
