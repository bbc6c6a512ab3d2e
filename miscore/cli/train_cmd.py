"""``miscore train`` and ``miscore predict``: the two steps most runs are made of."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from miscore.cli.state import CliState, import_tensorflow_quietly, state
from miscore.core.errors import InputError


def train(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="The YAML config file.")],
    data: Annotated[
        Path | None, typer.Option("--data", help="Dataset folder (else config data.path).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")] = Path("model"),
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Override training.epochs.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in --out.")
    ] = False,
    cache: Annotated[
        str | None, typer.Option("--cache", help="Cache location (above MISCORE_CACHE_DIR).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Override training.workers.")
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="Train on several machines: every worker's host:port, comma-separated, the "
            "same list on each (sets TF_CONFIG).",
        ),
    ] = None,
    task: Annotated[
        int | None,
        typer.Option("--task", min=0, help="This worker's place in --cluster (0: the chief)."),
    ] = None,
) -> None:
    """Train a model on a dataset and write the model folder."""
    import os

    from miscore.core.config import load_config
    from miscore.core.errors import InputError
    from miscore.pipeline.multiworker import TF_CONFIG, tf_config_for
    from miscore.pipeline.training import train as run_training

    cli = state(ctx)
    if cluster is not None or task is not None:
        if cluster is None or task is None:
            raise InputError("--cluster and --task go together (or set TF_CONFIG)")
        # before TensorFlow is imported; it is read when the strategy is made
        os.environ[TF_CONFIG] = tf_config_for(cluster.split(","), task)
    settings = load_config(config)
    import_tensorflow_quietly(cli.debug)
    if workers is not None:
        settings.training.workers = workers
    dataset = data or (Path(settings.data.path) if settings.data.path else None)
    if dataset is None:
        raise InputError("no dataset: give --data DATA or set data.path in the config")
    result = run_training(
        settings,
        dataset,
        out,
        plugins=cli.plugins,
        epochs=epochs,
        resume=resume,
        cache=cache,
        local_plugins=cli.local_plugins,
        log=cli.log,
        progress=cli.interactive,
    )
    best = f", best {result.monitor} {result.best:.4g}" if result.best is not None else ""
    if not result.chief:
        print(f"worker done ({result.epochs} epochs{best}); the chief writes {result.model_dir}")
        return
    print(f"model: {result.model_dir} ({result.epochs} epochs{best})")


def predict(
    ctx: typer.Context,
    model_dir: Annotated[
        Path,
        typer.Argument(
            help="A model folder (miscore train), a cv folder (miscore cv) or a .miscore "
            "package (miscore export)."
        ),
    ],
    inputs: Annotated[
        list[Path], typer.Argument(help="Image files, series folders or dataset folders.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the predictions.")] = Path(
        "predictions"
    ),
    overlap: Annotated[
        float | None, typer.Option("--overlap", min=0.0, max=0.99, help="Window overlap.")
    ] = None,
    blend: Annotated[
        Literal["mean", "gaussian"] | None, typer.Option("--blend", help="Window blending.")
    ] = None,
    tta: Annotated[
        bool | None, typer.Option("--tta/--no-tta", help="Mirroring test-time augmentation.")
    ] = None,
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Also write class probabilities.")
    ] = False,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Write with this IO (e.g. nifti, or dicom-seg for DICOM input); "
            "default: the input's own format.",
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            help="Predict on Dask, one task a case: local:N (N processes here) or "
            "tcp://host:8786 (a running scheduler); needs miscore[dask].",
        ),
    ] = None,
) -> None:
    """Predict label maps with a trained model; each is written with its input's geometry."""
    from miscore.pipeline.package import resolve_model

    cli = state(ctx)
    with resolve_model(model_dir, cli.plugins) as source:
        _predict(cli, source.path, source.package, inputs, out, overlap, blend, tta,
                 probabilities, fmt, scheduler)  # fmt: skip


def _predict(
    cli: CliState,
    model_dir: Path,
    package: Path | None,
    inputs: list[Path],
    out: Path,
    overlap: float | None,
    blend: Literal["mean", "gaussian"] | None,
    tta: bool | None,
    probabilities: bool,
    fmt: str | None,
    scheduler: str | None,
) -> None:
    options: dict[str, Any] = {
        "plugins": cli.plugins,
        "overlap": overlap,
        "blend": blend,
        "tta": tta,
        "with_probabilities": probabilities,
        "writer": fmt,
        "log": cli.log,
        "progress": cli.interactive,
    }
    if scheduler is not None:
        # the workers load the model; this process never imports TensorFlow
        from miscore.tools.scaleout import import_distributed, parse_scheduler, predict_on_dask

        parse_scheduler(scheduler)
        if package is not None and not scheduler.startswith("local:"):
            raise InputError(
                f"{package}: a package unpacks into a folder of this machine only; for a "
                "cluster, `miscore import` it into a shared folder and predict from that"
            )
        import_distributed()
        written = predict_on_dask(model_dir, inputs, out, scheduler=scheduler, **options)
        print(f"{len(written)} predictions in {out}")
        return
    from miscore.pipeline.inference import predict as run_prediction

    import_tensorflow_quietly(cli.debug)
    written = run_prediction(model_dir, inputs, out, **options)
    print(f"{len(written)} predictions in {out}")
