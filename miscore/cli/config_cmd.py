"""``miscore config``: the schema and validation of config files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from miscore.cli.state import state

app = typer.Typer(help="Inspect and check configuration files.", no_args_is_help=True)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the config file."""
    from miscore.core.config import json_schema

    sys.stdout.write(json_schema() + "\n")


@app.command()
def validate(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The YAML config file to check.")],
) -> None:
    """Check a config file: its fields, and every component name and parameter."""
    from miscore.core.config import apply_defaults, check_components, load_config

    cli = state(ctx)
    config = load_config(file)
    check_components(config, cli.plugins.registry)
    config = apply_defaults(config, cli.plugins.registry)  # as training hands it on
    cli.plugins.configure(config)
    print(f"{file}: valid")
