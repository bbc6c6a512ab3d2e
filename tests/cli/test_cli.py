"""The command line skeleton: help, versions, plugins, config, errors, local plugins."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cli.helpers import assert_one_line_error, run_cli

LOCAL_PLUGIN = textwrap.dedent(
    '''
    """A research script's one-off subfunction."""
    import miscore


    class Double(miscore.Subfunction):
        """Doubles the image."""

        name = "double"

        def preprocess(self, case, training):
            return miscore.Case(case.id, case.image.with_array(case.image.array * 2), case.label)


    @miscore.hookimpl
    def miscore_register_subfunctions():
        return [Double]
    '''
)


def modules_after(args: list[str]) -> set[str]:
    """Run ``main(args)`` in a fresh interpreter and return the modules it imported."""
    code = textwrap.dedent(
        f"""
        import json, sys
        from miscore.cli.main import main
        try:
            main({args!r})
        except SystemExit:
            pass
        sys.__stdout__.write("\\nMODULES=" + json.dumps(sorted(sys.modules)))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return set(json.loads(result.stdout.split("MODULES=")[-1]))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["plugins"],
        ["plugins", "--json"],
        ["--version"],
        ["models"],
        ["models", "--json"],
    ],
)
def test_help_and_plugins_do_not_import_tensorflow(args: list[str]) -> None:
    modules = modules_after(args)
    assert "miscore.cli.main" in modules
    assert not {m for m in modules if m.split(".")[0] in {"tensorflow", "keras", "torch"}}


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("plugins", "config"):
        assert command in result.stdout


def test_version_shows_plugin_versions() -> None:
    from miscore import __version__

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"miscore {__version__}")
    assert "nifti" in result.stdout and "miscore_nifti" in result.stdout


def test_plugins_json_lists_the_bundled_plugins() -> None:
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    names = {p["name"] for p in data["plugins"]}
    assert {"nifti", "dicom", "sitk", "image2d", "preprocessing", "augment"} <= names
    assert {"unet", "losses", "metrics", "evaluation"} <= names
    assert data["failures"] == []


def test_plugins_table_for_people() -> None:
    result = run_cli("plugins")
    assert result.returncode == 0
    assert "miscore_preprocessing" in result.stdout


def test_config_schema_is_json() -> None:
    result = run_cli("config", "schema")
    assert result.returncode == 0
    assert "training" in json.loads(result.stdout)["properties"]


def test_config_typo_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("training:\n  epocs: 3\n")
    line = assert_one_line_error(run_cli("config", "validate", config))
    assert "training.epocs: Extra inputs are not permitted" in line
    assert str(config) in line


def test_wrong_component_name_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("preprocessing:\n  - name: no_such_step\n")
    line = assert_one_line_error(run_cli("config", "validate", config))
    assert "preprocessing[0].name: no subfunction named 'no_such_step'" in line


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("training:\n  epocs: 3\n")
    result = run_cli("--debug", "config", "validate", config)
    assert result.returncode == 2
    assert "Traceback" in result.stderr


def test_local_plugin_file_registers_components(tmp_path: Path) -> None:
    plugin = tmp_path / "my_steps.py"
    plugin.write_text(LOCAL_PLUGIN)
    listing = run_cli("--plugin", plugin, "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    entry = {p["name"]: p for p in json.loads(listing.stdout)["plugins"]}["my_steps"]
    assert entry["source"] == "local"
    assert entry["components"] == {"subfunction": ["double"]}
    config = tmp_path / "config.yaml"
    config.write_text("preprocessing: [double]\nmodel: {architecture: unet, loss: tversky}\n")
    # The local step resolves; the result depends only on whether unet/tversky are registered.
    result = run_cli("--plugin", plugin, "config", "validate", config)
    assert "no subfunction named 'double'" not in result.stderr


def test_local_plugins_from_the_environment(tmp_path: Path) -> None:
    plugin = tmp_path / "env_steps.py"
    plugin.write_text(LOCAL_PLUGIN)
    result = run_cli("plugins", "--json", env={"MISCORE_PLUGINS": str(plugin)})
    assert result.returncode == 0, result.stderr
    assert "env_steps" in {p["name"] for p in json.loads(result.stdout)["plugins"]}


def test_a_missing_local_plugin_is_a_clear_error(tmp_path: Path) -> None:
    line = assert_one_line_error(run_cli("--plugin", tmp_path / "nope.py", "plugins"))
    assert "nope.py: no such file" in line


def test_unknown_command_is_a_usage_error() -> None:
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert "No such command" in result.stderr
    assert "Traceback" not in result.stderr


BROKEN_COMMANDS = """
import miscore


@miscore.hookimpl
def miscore_register_commands(app):
    raise RuntimeError("boom")
"""


def test_a_plugin_whose_commands_raise_is_named_and_the_cli_still_works(tmp_path: Path) -> None:
    plugin = tmp_path / "badcmd.py"
    plugin.write_text(BROKEN_COMMANDS)
    result = run_cli("--plugin", plugin, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    [failure] = json.loads(result.stdout)["failures"]
    assert failure["plugin"] == "badcmd" and "boom" in failure["message"]
