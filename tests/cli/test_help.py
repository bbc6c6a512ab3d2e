"""``miscore ... --help`` of every command shows what its parser accepts.

typer 0.27 to 0.29 render ``Usage: miscore train [OPTIONS] {config}`` and flags as
``--resume <bool>``: a user who then types ``--resume true`` gets "unexpected extra argument".
The commands are read from the app itself, so a new command (or a typer upgrade) is checked too.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import typer

from miscore.cli.main import build_app
from miscore.core.plugins import PluginManager
from tests.cli.helpers import assert_one_line_error, run_cli

#: wide enough that no option row wraps; no colours whatever the CI sets
HELP_ENV = {"TERMINAL_WIDTH": "250", "COLUMNS": "250", "NO_COLOR": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: typer >= 0.27's type placeholders (``<bool>``, ``<path>``, ``<int range>``...)
TYPE_PLACEHOLDER = re.compile(r"<[a-z][^<>\n]*>")


def _commands() -> list[tuple[tuple[str, ...], Any]]:
    """Every command and group of the app (kernel and installed plugins), depth first, each
    with its parsing context (whose parents give the settings, such as ``-h``)."""
    root = typer.main.get_command(build_app(PluginManager()))
    found: list[tuple[tuple[str, ...], Any]] = []

    def walk(command: Any, path: tuple[str, ...], parent: Any) -> None:
        name = path[-1] if path else "miscore"
        ctx = command.make_context(name, [], parent=parent, resilient_parsing=True)
        found.append((path, ctx))
        for sub_name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, (*path, sub_name), ctx)

    walk(root, (), None)
    return found


COMMANDS = _commands()


@pytest.fixture(scope="module")
def helps() -> dict[tuple[str, ...], str]:
    """``miscore <path> --help`` of every command, run as subprocesses side by side."""

    def run(path: tuple[str, ...]) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "miscore", *path, "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, **HELP_ENV},
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, (path, result.stderr)
        return ANSI.sub("", result.stdout)

    paths = [path for path, _ in COMMANDS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(paths, pool.map(run, paths), strict=True))


def _usage(path: tuple[str, ...], ctx: Any) -> str:
    """The usage line click itself writes: arguments upper case, ``...`` when repeatable,
    brackets when optional."""
    command = ctx.command
    pieces = ["[OPTIONS]"]
    for param in command.params:
        if param.param_type_name != "argument" or param.hidden:
            continue
        name = param.name.upper() + ("..." if param.nargs != 1 else "")
        pieces.append(name if param.required else f"[{name}]")
    if hasattr(command, "commands"):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(["Usage:", "miscore", *path, *pieces])


def _option_row(text: str, opts: list[str]) -> list[str]:
    """The cells of the help row of an option (in a panel, not the description), after the
    leading cells that hold its names."""
    names = {piece for opt in opts for piece in (opt, f"{opt},", "/", "*")}  # * required
    for line in text.splitlines():
        if not line.lstrip().startswith("│"):
            continue
        cells = [c.strip() for c in re.split(r"\s{2,}|│", line) if c.strip()]
        leading = list(itertools.takewhile(lambda cell: cell in names, cells))
        if opts[0] in leading or f"{opts[0]}," in leading:
            return cells[len(leading) :]
    raise AssertionError(f"no help row for {opts[0]}:\n{text}")


def _options(ctx: Any) -> list[tuple[list[str], bool, str]]:
    """(names, is a flag, help) of every shown option, the help option included."""
    shown = []
    for param in ctx.command.get_params(ctx):
        if param.param_type_name != "option" or param.hidden:
            continue
        names = [*param.opts, *param.secondary_opts]
        flag = bool(param.is_flag or param.count)
        shown.append((names, flag, param.help or ""))
    return shown


IDS = [" ".join(path) or "miscore" for path, _ in COMMANDS]


@pytest.mark.parametrize(("path", "ctx"), COMMANDS, ids=IDS)
def test_the_usage_line_names_the_arguments_as_click_does(
    helps: dict[tuple[str, ...], str], path: tuple[str, ...], ctx: Any
) -> None:
    text = helps[path]
    usage = [line.strip() for line in text.splitlines() if line.strip().startswith("Usage:")]
    assert usage == [_usage(path, ctx)], text
    assert not re.search(r"\{[a-z_]+\}", text), text


@pytest.mark.parametrize(("path", "ctx"), COMMANDS, ids=IDS)
def test_flags_show_no_value_and_options_show_theirs(
    helps: dict[tuple[str, ...], str], path: tuple[str, ...], ctx: Any
) -> None:
    text = helps[path]
    assert not TYPE_PLACEHOLDER.search(text), text  # <bool>, <path>, <int range>...
    for names, flag, help_text in _options(ctx):
        cells = _option_row(text, names)
        help_start = help_text.split()[0] if help_text else "["
        if flag:  # nothing between the names and the help (or the [default: ...])
            assert not cells or cells[0].startswith(help_start), (names, cells)
        else:  # a value placeholder (PATH, TEXT, INTEGER, [mean|gaussian]...) first
            assert cells and not cells[0].startswith(help_start), (names, cells)


def test_every_kernel_command_is_checked() -> None:
    names = {path for path, _ in COMMANDS}
    for expected in ("train", "predict", "cv", "evaluate", "synth", "plan", "analyze"):
        assert (expected,) in names
    assert {("cache", "build"), ("cache", "info"), ("config", "validate")} <= names


@pytest.mark.parametrize("command", ["train", "cv"])
def test_resume_is_a_flag(command: str, tmp_path: Path) -> None:
    # parsed as a flag: the run gets as far as reading the (missing) config file
    line = assert_one_line_error(run_cli(command, "missing.yaml", "--resume", cwd=tmp_path))
    assert "missing.yaml: no such config file" in line
    # and it takes no value, as the help says
    result = run_cli(command, "missing.yaml", "--resume", "true", cwd=tmp_path)
    assert result.returncode == 2
    assert "unexpected extra argument" in result.stderr.lower()
