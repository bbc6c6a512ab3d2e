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
    """List the loaded plugins: name, version, module, the components of each kind and the
    commands each adds; then shadowed components (a name two plugins register), readers
    that tie on a file ending, and failures."""
    manager = state(ctx).plugins
    infos = manager.plugins()
    registry = manager.registry
    failures = registry.failures
    if as_json:
        print_json(
            {
                "plugins": [asdict(info) for info in infos],
                "shadowed": [asdict(s) for s in registry.shadowed],
                "reader_ties": [asdict(t) for t in registry.reader_ties()],
                "failures": [asdict(f) for f in failures],
                "disabled": sorted(manager.disabled),
            }
        )
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="miscore plugins")
    for column in ("plugin", "version", "module", "registers"):
        table.add_column(column)
    for info in infos:
        lines = [
            f"{kind}: {', '.join(sorted(info.components[kind]))}"
            for kind in KINDS
            if info.components.get(kind)
        ]
        lines += [
            f"{s.kind}: {s.name} (shadowed by {s.by})"
            for s in registry.shadowed
            if s.plugin == info.name
        ]
        if info.models:
            lines.append(f"models: {', '.join(sorted(info.models))}")
        if info.commands:
            lines.append(f"commands: {', '.join(info.commands)}")
        # cache keys use the source hash of local plugins and editable installs
        module = info.module + (f"\nsource {info.source_hash}" if info.source_hash else "")
        table.add_row(info.name, info.version, module, escape("\n".join(lines)) or "-")
    console = Console()
    console.print(table)
    for shadow in [*registry.shadowed, *registry.reader_ties()]:
        console.print(f"[yellow]{escape(str(shadow))}[/yellow]")
    for failure in failures:
        console.print(f"[red]{escape(str(failure))}[/red]")
    if manager.disabled:
        console.print(f"disabled: {', '.join(sorted(manager.disabled))}")
