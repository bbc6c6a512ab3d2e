"""Hooks are called through pluggy: call order decides clashes, wrappers, tracing, isolation,
reader priority and the plugin-API version a plugin may require."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Generator
from pathlib import Path
from typing import Any, ClassVar

import nibabel
import numpy as np
import pluggy
import pytest
import typer

import miscore
from miscore.core.plugins import PluginManager
from tests.cli.helpers import run_cli


def subfunction(name: str, doc: str) -> type[miscore.Subfunction]:
    """A fresh ``Subfunction`` class named ``name`` (two plugins may register one name)."""
    return type(f"Step_{doc}", (miscore.Subfunction,), {"name": name, "__doc__": doc})


class Plugin:
    """A plugin object registering ``classes`` with the hookimpl options given."""

    def __init__(
        self, *classes: type[miscore.Subfunction], tryfirst: bool = False, trylast: bool = False
    ) -> None:
        self.classes = list(classes)

        @miscore.hookimpl(tryfirst=tryfirst, trylast=trylast)
        def miscore_register_subfunctions() -> list[type[miscore.Subfunction]]:
            return self.classes

        self.miscore_register_subfunctions = miscore_register_subfunctions


def winner(manager: PluginManager, name: str = "clip") -> str:
    return manager.registry.info("subfunction", name).plugin


# --- name clashes: the implementation pluggy calls first wins ----------------------------


def test_among_equals_the_plugin_registered_later_wins_and_the_loser_is_shadowed(
    plugin_manager: PluginManager,
) -> None:
    plugin_manager.register(Plugin(subfunction("clip", "a")), "first")
    plugin_manager.register(Plugin(subfunction("clip", "b")), "second")
    registry = plugin_manager.registry
    assert winner(plugin_manager) == "second"
    assert registry.get_subfunction("clip").__doc__ == "b"
    [shadow] = registry.shadowed
    assert (shadow.kind, shadow.name, shadow.plugin, shadow.by) == (
        "subfunction",
        "clip",
        "first",
        "second",
    )
    assert "of plugin 'first' is shadowed by plugin 'second'" in str(shadow)
    assert registry.failures == ()  # a clash is not an error
    infos = {info.name: info for info in plugin_manager.plugins()}
    assert infos["second"].components == {"subfunction": ["clip"]}
    assert infos["first"].components == {}


def test_tryfirst_wins_a_clash_although_registered_first(plugin_manager: PluginManager) -> None:
    plugin_manager.register(Plugin(subfunction("clip", "a"), tryfirst=True), "eager")
    plugin_manager.register(Plugin(subfunction("clip", "b")), "plain")
    assert winner(plugin_manager) == "eager"
    assert [(s.plugin, s.by) for s in plugin_manager.registry.shadowed] == [("plain", "eager")]


def test_trylast_loses_a_clash_although_registered_last(plugin_manager: PluginManager) -> None:
    plugin_manager.register(Plugin(subfunction("clip", "a")), "plain")
    plugin_manager.register(Plugin(subfunction("clip", "b"), trylast=True), "fallback")
    assert winner(plugin_manager) == "plain"


def test_a_trylast_default_is_replaced_by_any_plugin(plugin_manager: PluginManager) -> None:
    class Bundled:
        @miscore.hookimpl(trylast=True)
        def miscore_defaults(self) -> dict[str, Any]:
            return {"loss": {"name": "tversky"}, "architecture": {"name": "unet"}}

    class Mine:
        @miscore.hookimpl
        def miscore_defaults(self) -> dict[str, Any]:
            return {"loss": {"name": "focal"}}

    plugin_manager.register(Mine(), "mine")
    plugin_manager.register(Bundled(), "bundled")
    assert plugin_manager.registry.defaults == {
        "loss": {"name": "focal"},
        "architecture": {"name": "unet"},
    }


# --- wrappers ---------------------------------------------------------------------------


class Extra(miscore.ImageIO):
    """An IO that a wrapper adds."""

    name = "extra"
    suffixes: ClassVar[tuple[str, ...]] = (".extra",)


class Base(miscore.ImageIO):
    """An IO registered the plain way."""

    name = "base"
    suffixes: ClassVar[tuple[str, ...]] = (".base",)


class Plain:
    @miscore.hookimpl
    def miscore_register_io(self) -> list[type[miscore.ImageIO]]:
        return [Base]


class Appender:
    """A ``wrapper=True`` implementation that sees every plugin's list and adds its own."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @miscore.hookimpl(wrapper=True)
    def miscore_register_io(self) -> Generator[None, list[Any], list[Any]]:
        result = yield
        self.seen = list(result)
        return [*result, [Extra]]


class OldStyleObserver:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    @miscore.hookimpl(hookwrapper=True)
    def miscore_register_io(self) -> Generator[None, pluggy.Result[list[Any]], None]:
        outcome = yield
        self.seen = list(outcome.get_result())


def test_a_wrapper_sees_the_results_and_what_it_adds_is_its_own(
    plugin_manager: PluginManager,
) -> None:
    appender = Appender()
    plugin_manager.register(Plain(), "plain")
    plugin_manager.register(appender, "appender")
    registry = plugin_manager.registry
    assert appender.seen == [[Base]]
    assert registry.names("io") == ["base", "extra"]
    assert registry.info("io", "extra").plugin == "appender"
    assert registry.info("io", "base").plugin == "plain"
    assert registry.failures == ()  # not "registered None"


def test_an_old_style_hookwrapper_observes_without_registering_anything(
    plugin_manager: PluginManager,
) -> None:
    observer = OldStyleObserver()
    plugin_manager.register(observer, "observer")
    plugin_manager.register(Plain(), "plain")
    assert plugin_manager.registry.names("io") == ["base"]
    assert observer.seen == [[Base]]
    assert plugin_manager.registry.failures == ()
    infos = {info.name: info for info in plugin_manager.plugins()}
    assert infos["observer"].components == {}


def test_a_wrapper_that_raises_is_named_and_the_call_goes_on(
    plugin_manager: PluginManager,
) -> None:
    class Faulty:
        @miscore.hookimpl(wrapper=True)
        def miscore_register_io(self) -> Generator[None, list[Any], list[Any]]:
            yield
            raise RuntimeError("wrapper teardown failed")

    plugin_manager.register(Plain(), "plain")
    plugin_manager.register(Faulty(), "faulty")
    registry = plugin_manager.registry
    assert registry.names("io") == ["base"]
    [failure] = registry.failures
    assert (failure.plugin, failure.stage) == ("faulty", "miscore_register_io")
    assert "wrapper teardown failed" in failure.message


# --- isolation, subsets of arguments, commands -------------------------------------------


def test_a_raising_defaults_impl_is_named_and_the_others_go_on(
    plugin_manager: PluginManager,
) -> None:
    class Broken:
        @miscore.hookimpl(tryfirst=True)
        def miscore_defaults(self) -> dict[str, Any]:
            raise KeyError("no such setting")

    class Good:
        @miscore.hookimpl
        def miscore_defaults(self) -> dict[str, Any]:
            return {"loss": {"name": "dice"}}

    plugin_manager.register(Good(), "good")
    plugin_manager.register(Broken(), "broken")
    registry = plugin_manager.registry
    assert registry.defaults == {"loss": {"name": "dice"}}
    [failure] = registry.failures
    assert (failure.plugin, failure.stage) == ("broken", "miscore_defaults")


def test_a_zero_argument_command_hook_is_called(plugin_manager: PluginManager) -> None:
    calls: list[str] = []

    class NoArgs:
        @miscore.hookimpl
        def miscore_register_commands(self) -> None:
            calls.append("called")

    plugin_manager.register(NoArgs(), "noargs")
    plugin_manager.register_commands(typer.Typer())
    assert calls == ["called"]
    assert plugin_manager.failures == ()


def test_the_commands_each_plugin_adds_are_listed(plugin_manager: PluginManager) -> None:
    class Commands:
        @miscore.hookimpl
        def miscore_register_commands(self, app: typer.Typer) -> None:
            @app.command()
            def say_hello() -> None:
                """Greets."""

            app.add_typer(typer.Typer(), name="tools")

    app = typer.Typer()

    @app.command()
    def kernel() -> None:
        """A command that is not a plugin's."""

    plugin_manager.register(Commands(), "commands")
    plugin_manager.register_commands(app)
    [info] = plugin_manager.plugins()
    assert info.commands == ["say-hello", "tools"]


COMMAND_PLUGIN = """
import miscore


@miscore.hookimpl
def miscore_register_commands(app):
    @app.command("shout")
    def shout(word: str) -> None:
        print(word.upper())
"""


def test_plugins_json_lists_the_commands_a_plugin_adds(tmp_path: Path) -> None:
    plugin = tmp_path / "loud.py"
    plugin.write_text(COMMAND_PLUGIN)
    listing = run_cli("--plugin", plugin, "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    entry = {p["name"]: p for p in data["plugins"]}["loud"]
    assert entry["commands"] == ["shout"]
    assert data["shadowed"] == []
    table = run_cli("--plugin", plugin, "plugins")
    assert "commands: shout" in table.stdout
    assert run_cli("--plugin", plugin, "shout", "hey").stdout.strip() == "HEY"


SHADOWING_PLUGIN = """
import miscore


class Clip(miscore.Subfunction):
    '''Replaces the bundled clip.'''

    name = "clip"


@miscore.hookimpl
def miscore_register_subfunctions():
    return [Clip]
"""


def test_a_local_plugin_shadows_a_bundled_component_and_the_listing_says_so(
    tmp_path: Path,
) -> None:
    plugin = tmp_path / "myclip.py"
    plugin.write_text(SHADOWING_PLUGIN)
    listing = run_cli("--plugin", plugin, "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    assert data["shadowed"] == [
        {"kind": "subfunction", "name": "clip", "plugin": "preprocessing", "by": "myclip"}
    ]
    assert data["failures"] == []
    table = run_cli("--plugin", plugin, "plugins")
    assert "shadowed by plugin 'myclip'" in table.stdout


# --- tracing ----------------------------------------------------------------------------


def test_trace_switch_shows_registration_hook_calls(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MISCORE_TRACE_HOOKS", "1")
    manager = PluginManager(load_entrypoints=False)
    manager.register(Plain(), "plain")
    assert manager.registry.names("io") == ["base"]
    err = capsys.readouterr().err
    assert "miscore_register_io" in err
    assert "miscore_defaults" in err
    assert "finish miscore_register_io" in err


def test_trace_switch_in_the_cli(tmp_path: Path) -> None:
    result = run_cli("plugins", "--json", env={"MISCORE_TRACE_HOOKS": "1"})
    assert result.returncode == 0, result.stderr
    assert "miscore_register_subfunctions" in result.stderr
    assert "miscore_register_commands" in result.stderr


# --- reader priority --------------------------------------------------------------------


def nifti_reader(name: str, priority: int) -> type[miscore.ImageIO]:
    """A ``.nii.gz`` reader class named ``name`` with ``priority``."""

    class VendorNifti(miscore.ImageIO):
        """Reads .nii.gz files."""

        suffixes: ClassVar[tuple[str, ...]] = (".nii.gz",)

    VendorNifti.name = name
    VendorNifti.priority = priority
    return VendorNifti


def registered_reader(manager: PluginManager, cls: type[miscore.ImageIO]) -> None:
    class Reader:
        @miscore.hookimpl
        def miscore_register_io(self) -> list[type[miscore.ImageIO]]:
            return [cls]

    manager.register(Reader(), f"plugin_{cls.name}")


@pytest.fixture
def nifti_file(tmp_path: Path) -> Path:
    path = tmp_path / "case.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.zeros((3, 3, 3), np.int16), np.eye(4)), str(path))  # type: ignore[no-untyped-call]
    return path


def test_a_priority_10_reader_wins_nii_gz_over_the_bundled_nifti(
    installed_plugins: PluginManager, nifti_file: Path
) -> None:
    registered_reader(installed_plugins, nifti_reader("zz_vendor", 10))
    assert installed_plugins.registry.io_for(nifti_file).name == "zz_vendor"


def test_a_lower_priority_reader_loses_although_its_name_sorts_first(
    installed_plugins: PluginManager, nifti_file: Path
) -> None:
    registered_reader(installed_plugins, nifti_reader("aa_fallback", -1))
    assert installed_plugins.registry.io_for(nifti_file).name == "nifti"
    order = [cls.name for cls in installed_plugins.registry.readers()]
    assert order[-1] == "aa_fallback"


def test_equal_priorities_are_decided_by_name(
    plugin_manager: PluginManager, nifti_file: Path
) -> None:
    registered_reader(plugin_manager, nifti_reader("b_reader", 0))
    registered_reader(plugin_manager, nifti_reader("a_reader", 0))
    assert plugin_manager.registry.io_for(nifti_file).name == "a_reader"
    assert plugin_manager.registry.reader_for(nifti_file.with_suffix(".txt")) is None


def test_a_reader_that_ties_with_nifti_by_name_is_shown_not_silent(
    installed_plugins: PluginManager, nifti_file: Path
) -> None:
    """The issue's case: a priority-0 reader named ``ants`` wins ``.nii.gz`` by its name."""
    registered_reader(installed_plugins, nifti_reader("ants", 0))
    registry = installed_plugins.registry
    assert registry.io_for(nifti_file).name == "ants"
    ties = registry.reader_ties()
    assert [(t.winner, t.loser, t.suffixes) for t in ties] == [("ants", "nifti", (".nii.gz",))]
    assert "set ImageIO.priority" in str(ties[0])
    # the bundled readers alone tie on nothing
    assert miscore.PluginManager().registry.reader_ties() == []


BUNDLED_READERS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".mha": "sitk",
    ".mhd": "sitk",
    ".nrrd": "sitk",
    ".nhdr": "sitk",
    ".png": "image2d",
    ".jpg": "image2d",
    ".tif": "image2d",
    ".bmp": "image2d",
    ".dcm": "dicom",
}


def test_every_bundled_ending_keeps_its_reader(
    installed_plugins: PluginManager, tmp_path: Path
) -> None:
    registry = installed_plugins.registry
    chosen = {}
    for suffix in BUNDLED_READERS:
        path = tmp_path / f"case{suffix}"
        path.write_bytes(b"")
        chosen[suffix] = registry.io_for(path).name
    assert chosen == BUNDLED_READERS


# --- the plugin-API version -------------------------------------------------------------


class Needs:
    def __init__(self, version: str) -> None:
        self.MISCORE_PLUGIN_API = version

    @miscore.hookimpl
    def miscore_register_io(self) -> list[type[miscore.ImageIO]]:
        return [Base]


@pytest.mark.parametrize("version", ["1.0", miscore.PLUGIN_API_VERSION])
def test_a_plugin_needing_this_api_loads(plugin_manager: PluginManager, version: str) -> None:
    plugin_manager.register(Needs(version), "fine")
    assert plugin_manager.registry.names("io") == ["base"]


@pytest.mark.parametrize(
    ("version", "advice"),
    [("1.2", "upgrade miscore"), ("2.0", "upgrade miscore"), ("0.9", "plugin API 1.x")],
)
def test_a_plugin_needing_another_api_is_refused(
    plugin_manager: PluginManager, version: str, advice: str
) -> None:
    with pytest.raises(miscore.PluginError) as caught:
        plugin_manager.register(Needs(version), "future")
    message = str(caught.value)
    assert f"plugin 'future' needs plugin API {version}" in message
    assert f"provides plugin API {miscore.PLUGIN_API_VERSION}" in message
    assert advice in message and "\n" not in message
    assert not plugin_manager.is_registered("future")


def test_a_malformed_api_version_is_refused(plugin_manager: PluginManager) -> None:
    with pytest.raises(miscore.PluginError, match=r"as 'MAJOR\.MINOR'"):
        plugin_manager.register(Needs("one"), "odd")


def test_an_installed_plugin_needing_a_newer_api_is_a_listed_failure(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "future_plugin").mkdir(parents=True)
    (site / "future_plugin" / "__init__.py").write_text(
        textwrap.dedent(
            """
            import miscore

            MISCORE_PLUGIN_API = "1.9"

            @miscore.hookimpl
            def miscore_register_commands(app):
                pass
            """
        )
    )
    dist = site / "future_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: future-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[miscore]\nfuture = future_plugin\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = run_cli("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "future" not in {p["name"] for p in data["plugins"]}
    [failure] = data["failures"]
    assert failure["plugin"] == "future"
    assert "needs plugin API 1.9" in failure["message"]
    assert f"provides plugin API {miscore.PLUGIN_API_VERSION}" in failure["message"]


# --- miscore.testing without pytest -----------------------------------------------------


def test_miscore_testing_imports_without_pytest() -> None:
    import subprocess
    import sys

    code = textwrap.dedent(
        """
        import sys

        class NoPytest:
            def find_spec(self, name, path=None, target=None):
                if name == "pytest" or name.startswith(("pytest.", "_pytest")):
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, NoPytest())
        import miscore.testing as testing
        case = testing.synthetic_case()
        print(case.id, hasattr(testing, "plugin_manager"), "pytest" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["case_000", "False", "False"]


# --- what a review found ----------------------------------------------------------------


def test_one_plugin_object_cannot_be_registered_under_two_names(
    plugin_manager: PluginManager,
) -> None:
    plugin = Plugin(subfunction("clip", "one"))
    plugin_manager.register(plugin, "first")
    with pytest.raises(miscore.PluginError, match="already registered as 'first'"):
        plugin_manager.register(plugin, "second")
    assert [info.name for info in plugin_manager.plugins()] == ["first"]


class BadAnswers:
    """A plugin whose defaults and output formats are of the wrong shape."""

    @miscore.hookimpl
    def miscore_register_output_formats(self) -> dict[str, Any]:
        return {"nii": "nifti", "seg": {"name": "dicom", "output": "dicom-seg"}}

    @miscore.hookimpl
    def miscore_defaults(self) -> dict[str, Any]:
        return {"augmentation": "flip", "loss": {"name": "dice"}}


def test_answers_of_the_wrong_shape_are_named_and_the_rest_is_kept(
    plugin_manager: PluginManager,
) -> None:
    plugin_manager.register(BadAnswers(), "bad")
    registry = plugin_manager.registry
    assert registry.output_formats == {"seg": {"name": "dicom", "output": "dicom-seg"}}
    assert registry.defaults == {"loss": {"name": "dice"}}
    problems = {f.stage: f.message for f in registry.failures if f.plugin == "bad"}
    assert "format 'nii'" in problems["miscore_register_output_formats"]
    assert "default 'augmentation'" in problems["miscore_defaults"]


class Planner:
    def __init__(self, choices: dict[str, Any], tryfirst: bool = False) -> None:
        @miscore.hookimpl(tryfirst=tryfirst)
        def miscore_plan_choices() -> dict[str, Any]:
            return choices

        self.miscore_plan_choices = miscore_plan_choices


def test_a_plan_reason_goes_with_the_choice_it_explains(plugin_manager: PluginManager) -> None:
    plugin_manager.register(
        Planner({"architecture": "net", "loss": "dice", "reasons": {"model.loss": "why dice"}}),
        "plain",
    )
    plugin_manager.register(Planner({"loss": "focal"}, tryfirst=True), "first")
    choices = plugin_manager.plan_choices(ndim=3, thick_axis=None)
    assert (choices["loss"], choices["architecture"]) == ("focal", "net")
    assert "model.loss" not in choices["reasons"]  # "why dice" explained the loss that lost


class Nosy(miscore.DatasetLayout):
    name = "nosy"

    def detect(self, root: Path, finder: Any) -> bool:
        return any(root.iterdir())  # NotADirectoryError on a single file


def test_a_layout_whose_detect_fails_on_a_file_is_named(
    installed_plugins: PluginManager, nifti_file: Path
) -> None:
    class Layouts:
        @miscore.hookimpl
        def miscore_register_layouts(self) -> list[type[miscore.DatasetLayout]]:
            return [Nosy]

    installed_plugins.register(Layouts(), "nosy_plugin")
    with pytest.raises(miscore.PluginError, match=r"layout 'nosy' failed to inspect"):
        miscore.Dataset.discover(nifti_file, installed_plugins.registry)
