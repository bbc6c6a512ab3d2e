"""What every CLI command gets through ``ctx.obj``."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import typer

from miscore.plugins import PluginManager


@dataclass
class CliState:
    """The plugin manager and the global flags of one ``miscore`` invocation."""

    plugins: PluginManager
    debug: bool = False
    quiet: bool = False
    #: the ``--plugin`` / ``MISCORE_PLUGINS`` modules, for worker processes to load again
    local_plugins: tuple[str, ...] = ()

    def log(self, message: str) -> None:
        """A progress line for people: stderr, silenced by ``--quiet``."""
        if not self.quiet:
            print(message, file=sys.stderr)


def state(ctx: typer.Context) -> CliState:
    """The ``CliState`` of the running command."""
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState)
    return obj


def print_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
