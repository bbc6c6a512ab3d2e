"""What every CLI command gets through ``ctx.obj``."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from typing import Any

import typer

from miscore.core.plugins import PluginManager


@dataclass
class CliState:
    """The plugin manager and the global flags of one ``miscore`` invocation."""

    plugins: PluginManager
    debug: bool = False
    quiet: bool = False
    #: the ``--plugin`` / ``MISCORE_PLUGINS`` modules, for worker processes to load again
    local_plugins: tuple[str, ...] = ()

    @property
    def interactive(self) -> bool:
        """Progress bars: only for a person at a terminal, never with ``--quiet``."""
        return not self.quiet and sys.stderr.isatty()

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


def import_tensorflow_quietly(debug: bool = False) -> None:
    """Import TensorFlow with its C++ start-up log lines (oneDNN, CUDA probing) hidden.

    They are written to file descriptor 2 before Python can filter them, so the descriptor
    is pointed at /dev/null for the import. With ``--debug`` nothing is hidden; if the import
    fails, it is retried visibly so the real error shows.
    """
    from miscore.core.quiet import native_stderr_silenced

    if debug or "tensorflow" in sys.modules:
        return
    with native_stderr_silenced(), contextlib.suppress(Exception):
        import tensorflow as tf

        tf.config.list_physical_devices()  # probes CUDA, which logs when there is none
    import tensorflow  # noqa: F401  (visible retry when the quiet import failed)
