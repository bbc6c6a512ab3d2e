"""``miscore models``: the trained models installed plugins ship, with their cards."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from miscore.cli.state import print_json, state
from miscore.core.registry import RegisteredModel

#: the card fields the table shows, in order; ``--json`` has every field
COLUMNS = ("task", "classes", "license")
HOOK = "miscore_register_models"


def models(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """List the trained models installed plugins ship: name, plugin, task, classes, license.

    ``miscore predict NAME INPUT`` and ``miscore.load_model(NAME)`` use one by name. Models
    whose registration failed (a path the package does not ship) and names two plugins
    register are listed after the table.
    """
    manager = state(ctx).plugins
    registry = manager.registry
    entries = [describe(model) for model in registry.models()]
    failures = [f for f in registry.failures if f.stage == HOOK or f.did_not_load]
    shadowed = [s for s in registry.shadowed if s.kind == "model"]
    if as_json:
        print_json(
            {
                "models": entries,
                "shadowed": [{"name": s.name, "plugin": s.plugin, "by": s.by} for s in shadowed],
                "failures": [{"plugin": f.plugin, "message": str(f)} for f in failures],
            }
        )
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if entries:
        table = Table(title="miscore models")
        for column in ("name", "plugin", *COLUMNS):
            table.add_column(column)
        for entry in entries:
            card = entry["card"]
            cells = [_cell(_column(card, column)) for column in COLUMNS]
            plugin = f"{entry['plugin']} {entry['version']}"
            table.add_row(*(escape(c) for c in (entry["name"], plugin, *cells)))
        console.print(table)
    else:
        console.print("no installed plugin ships a model (see `miscore models --help`)")
    # one line each however narrow the terminal, so they can be grepped and copied
    for shadow in shadowed:
        console.print(f"[yellow]{escape(str(shadow))}[/yellow]", soft_wrap=True)
    for failure in failures:
        console.print(f"[red]{escape(str(failure))}[/red]", soft_wrap=True)


def describe(model: RegisteredModel) -> dict[str, Any]:
    """What ``miscore models --json`` says of one model: its registration and its card (the
    plugin's card over what the model itself records)."""
    return {
        "name": model.name,
        "plugin": model.plugin,
        "version": model.version,
        "path": str(model.path),
        "card": {**recorded_card(model), **model.card},
    }


def recorded_card(model: RegisteredModel) -> dict[str, Any]:
    """The card a model carries: a package's, or the one its folder's records make (classes,
    input shape, spacing...); nothing when the model cannot be read (``miscore predict``
    and ``miscore info`` say why)."""
    from miscore.core.errors import MiscoreError
    from miscore.pipeline.package import build_card, read_package

    try:
        card = build_card(model.path) if model.path.is_dir() else read_package(model.path).card
    except MiscoreError:
        return {}
    return card.model_dump(mode="json", exclude_none=True)


def _column(card: dict[str, Any], column: str) -> Any:
    if column == "classes" and card.get("class_names"):
        return card["class_names"]
    return card.get(column)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)
