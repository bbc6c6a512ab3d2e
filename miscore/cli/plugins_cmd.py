"""``miscore plugins``: what is installed and what each plugin registers."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from miscore.cli.state import print_json, state
from miscore.core.components import KINDS


def plugins(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """List the loaded plugins: name, version, module and the components of each kind."""
    manager = state(ctx).plugins
    infos = manager.plugins()
    failures = manager.failures
    if as_json:
        print_json(
            {
                "plugins": [asdict(info) for info in infos],
                "failures": [asdict(f) for f in failures],
                "disabled": sorted(manager.disabled),
            }
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="miscore plugins")
    for column in ("plugin", "version", "module", "registers"):
        table.add_column(column)
    for info in infos:
        registers = "\n".join(
            f"{kind}: {', '.join(sorted(info.components[kind]))}"
            for kind in KINDS
            if info.components.get(kind)
        )
        table.add_row(info.name, info.version, info.module, registers or "-")
    console = Console()
    console.print(table)
    for failure in failures:
        console.print(f"[red]{failure}[/red]")
    if manager.disabled:
        console.print(f"disabled: {', '.join(sorted(manager.disabled))}")
