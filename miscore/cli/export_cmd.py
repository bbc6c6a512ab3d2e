"""``miscore export`` and ``miscore import``: a model folder as one file to share, and back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from miscore.cli.state import state
from miscore.core.errors import InputError

if TYPE_CHECKING:
    from miscore.core.plugins import PluginManager
    from miscore.pipeline.package import CardText

#: writes a model folder to a path in one format, given the card options; returns the path
Exporter = Callable[[Path, Path, dict[str, object]], Path]


def _export_miscore(model_dir: Path, out: Path, card: dict[str, object]) -> Path:
    from miscore.pipeline.package import export_package

    return export_package(model_dir, out, _card_text(card))


def _card_text(options: dict[str, object]) -> CardText:
    """The card text of ``--card FILE`` with the single-field options over it."""
    import yaml
    from pydantic import ValidationError

    from miscore.pipeline.package import CardText

    data: dict[str, object] = {}
    file = options.pop("card", None)
    if isinstance(file, Path):
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"{file}: cannot read the card: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise InputError(f"{file}: a card is a mapping of fields (name, license, ...)")
        data.update(loaded or {})
    data.update({k: v for k, v in options.items() if v is not None})
    try:
        return CardText.model_validate(data)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        source = file if isinstance(file, Path) else "--card"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = f"not a card field; the fields: {', '.join(CardText.model_fields)}"
        raise InputError(f"{source}: {where}: {message}") from None


#: --format -> (the suffix of the default --out, its exporter)
FORMATS: dict[str, tuple[str, Exporter]] = {"miscore": (".miscore", _export_miscore)}


def _deploy_savedmodel(model_dir: Path, out: Path, plugins: PluginManager) -> Path:
    from miscore.pipeline.deploy import export_savedmodel

    return export_savedmodel(model_dir, out, plugins)


def _deploy_onnx(model_dir: Path, out: Path, plugins: PluginManager) -> Path:
    from miscore.pipeline.deploy import export_onnx

    return export_onnx(model_dir, out, plugins)


#: --format -> (the suffix of the default --out folder, its exporter): the network for
#: serving, with miscore-deploy.json beside it (miscore/pipeline/deploy.py); no model card
DEPLOY_FORMATS: dict[str, tuple[str, Callable[[Path, Path, PluginManager], Path]]] = {
    "savedmodel": ("-savedmodel", _deploy_savedmodel),
    "onnx": ("-onnx", _deploy_onnx),
}


def export(
    ctx: typer.Context,
    model_dir: Annotated[
        Path, typer.Argument(help="A model folder (miscore train) or a cv folder (miscore cv).")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="The file to write (default: MODEL_DIR.miscore); the folder for savedmodel "
            "and onnx (default: MODEL_DIR-savedmodel, MODEL_DIR-onnx).",
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="miscore: one file miscore predicts from; savedmodel: a TensorFlow SavedModel "
            "folder (TF Serving); onnx: a folder with model.onnx (needs tf2onnx). Both "
            "hold miscore-deploy.json: the pre- and postprocessing as data.",
        ),
    ] = "miscore",
    card: Annotated[
        Path | None, typer.Option("--card", help="A YAML file with the model card's fields.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="The model's name.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="What it segments.")] = None,
    description: Annotated[
        str | None, typer.Option("--description", help="Free text for the card.")
    ] = None,
    licence: Annotated[
        str | None, typer.Option("--license", help="The model's licence, e.g. CC-BY-4.0.")
    ] = None,
) -> None:
    """Write a trained model as one file to share, with its model card and checksums; or its
    network for serving (--format savedmodel, onnx) with its pipeline as data."""
    cli = state(ctx)
    if fmt not in FORMATS and fmt not in DEPLOY_FORMATS:
        known = ", ".join(sorted([*FORMATS, *DEPLOY_FORMATS]))
        raise InputError(f"--format {fmt}: unknown; formats: {known}")
    if fmt in DEPLOY_FORMATS:
        if any(v is not None for v in (card, name, task, description, licence)):
            raise InputError(
                f"--format {fmt}: writes no model card; the card options are for --format miscore"
            )
        suffix, deploy = DEPLOY_FORMATS[fmt]
        written = deploy(model_dir, out or Path(f"{model_dir.resolve().name}{suffix}"), cli.plugins)
        print(f"exported {model_dir} -> {written}")
        return
    suffix, exporter = FORMATS[fmt]
    target = out or Path(f"{model_dir.resolve().name}{suffix}")
    options: dict[str, object] = {
        "card": card, "name": name, "task": task, "description": description, "license": licence,
    }  # fmt: skip
    written = exporter(model_dir, target, options)
    print(f"exported {model_dir} -> {written}")


def import_(
    ctx: typer.Context,
    package: Annotated[Path, typer.Argument(help="A .miscore package.")],
    out: Annotated[Path, typer.Option("--out", help="The model folder to create.")],
) -> None:
    """Check a package and unpack it into a model folder."""
    from miscore.pipeline.package import import_package

    state(ctx)
    manifest = import_package(package, out)
    print(f"imported {package} -> {out} ({len(manifest.members)} files, checksums verified)")
