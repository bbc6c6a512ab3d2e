"""The ``miscore`` entry point: global options, error handling, plugin commands.

Everything imported here at module level must stay light: ``miscore --help`` may not load
TensorFlow (a test checks ``sys.modules``).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated

import typer

# The base of typer's usage errors: click's, vendored into typer since 0.26 (typer 0.27+ also
# names it typer.TyperException; pyproject pins typer < 0.27, whose help renders as click's).
from typer._click.exceptions import ClickException

from miscore.cli import (
    analyze_cmd,
    bench_cmd,
    cache_cmd,
    config_cmd,
    cv_cmd,
    demo_cmd,
    evaluate_cmd,
    export_cmd,
    info_cmd,
    models_cmd,
    plan_cmd,
    plugins_cmd,
    synth_cmd,
    train_cmd,
)
from miscore.cli.state import CliState
from miscore.core.errors import MiscoreError
from miscore.core.plugins import PLUGINS_ENV, PluginManager, split_env_list
from miscore.core.version import __version__


def _version_callback(ctx: typer.Context, value: bool) -> None:
    if not value:
        return
    print(f"miscore {__version__}")
    obj = ctx.obj
    if isinstance(obj, CliState):
        for info in obj.plugins.plugins():
            print(f"  {info.name} {info.version} ({info.module})")
    raise typer.Exit()


def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Show the version of miscore and of every plugin, then exit.",
        ),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    plugin: Annotated[
        list[str] | None,
        typer.Option(
            "--plugin",
            help="Register a local plugin module or .py file (repeatable; also "
            f"{PLUGINS_ENV}=a,b).",
        ),
    ] = None,
) -> None:
    """miscore: medical image segmentation with deep learning."""
    obj = ctx.obj
    if isinstance(obj, CliState):
        obj.quiet = quiet


def build_app(manager: PluginManager) -> typer.Typer:
    """The root application with the kernel's commands and every plugin's."""
    app = typer.Typer(
        name="miscore",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    app.command("plugins")(plugins_cmd.plugins)
    app.command("models")(models_cmd.models)
    app.command("info")(info_cmd.info)
    app.command("synth")(synth_cmd.synth)
    app.add_typer(config_cmd.app, name="config")
    app.command("evaluate")(evaluate_cmd.evaluate)
    app.add_typer(cache_cmd.app, name="cache")
    app.command("analyze")(analyze_cmd.analyze)
    app.command("plan")(plan_cmd.plan)
    app.command("train")(train_cmd.train)
    app.command("predict")(train_cmd.predict)
    app.command("export")(export_cmd.export)
    app.command("import")(export_cmd.import_)
    app.command("cv")(cv_cmd.cv)
    app.command("demo")(demo_cmd.demo)
    app.command("bench")(bench_cmd.bench)
    manager.register_commands(app)
    return app


def _prescan(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """Read ``--debug`` and ``--plugin`` before typer runs: plugins add commands."""
    debug = False
    local: list[str] = split_env_list(os.environ.get(PLUGINS_ENV))
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--debug":
            debug = True
        elif arg == "--plugin" and i + 1 < len(args):
            local.append(args[i + 1])
        elif arg.startswith("--plugin="):
            local.append(arg.split("=", 1)[1])
    return debug, local


def _explain_missing_commands(manager: PluginManager) -> None:
    """After typer's "No such command": the plugins whose commands are missing because they
    did not load (or their ``miscore_register_commands`` raised), each with its reason."""
    for failure in manager.load_failures:
        print(
            f"miscore: {failure}; any command it adds is missing; run `miscore plugins` "
            "for details",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; exit 0 on success, 2 on bad input, 1 on a failure at run time."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug, local = _prescan(args)
    manager: PluginManager | None = None
    try:
        manager = PluginManager(local_plugins=local)
        app = build_app(manager)
        state = CliState(plugins=manager, debug=debug, local_plugins=tuple(local))
        code = app(args=args, prog_name="miscore", standalone_mode=False, obj=state)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("miscore: aborted", file=sys.stderr)
        sys.exit(130)
    except ClickException as exc:  # usage errors: typer's own message and exit code 2
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            print(f"miscore: error: {exc.format_message()}", file=sys.stderr)
        if manager is not None and exc.format_message().startswith("No such command"):
            _explain_missing_commands(manager)
        sys.exit(exc.exit_code)
    except MiscoreError as exc:
        if debug:
            traceback.print_exc()
        print(f"miscore: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("miscore: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(
            f"miscore: error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)
