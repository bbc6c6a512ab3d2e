"""The plugin manager: finds plugins through entry points and wraps every hook call.

Core code never touches ``pm.hook`` directly; it calls the typed methods here, and each of
them calls ``pm.hook.<name>(...)`` with keyword arguments, so ``tryfirst``/``trylast``,
``wrapper=True`` implementations and tracing work as in any pluggy project.

Isolation: the implementations of the hooks in ``ISOLATED_HOOKS`` (registration, defaults,
output formats, models, commands) are wrapped when their plugin is registered
(``isolation.py``). The wrapper catches an exception, records it as a ``PluginFailure``
naming the plugin, and lets pluggy go on with the other implementations; it also notes which
plugin returned which value, so that the registry knows who registered what. Lifecycle
hooks are not isolated: ``miscore_configure`` raising ``ConfigError`` is how a plugin refuses
a config.

Name clashes: when two plugins register one component name, the implementation pluggy calls
first wins (``tryfirst``, then plain, then ``trylast``; among equals the plugin registered
later). Entry points are registered sorted by name, local ``--plugin`` modules after them. The
loser is kept in ``Registry.shadowed`` and shown by ``miscore plugins``.

Source hashes: a plugin whose code can change without its version changing (a local
``--plugin`` file or module, a module registered from Python, an entry point of an editable
install) gets ``PluginInfo.source_hash``, a SHA-256 of its ``.py`` files read when it is
registered; cache keys use ``PluginInfo.key_version`` (``0+local.src.<12 hex>``), so an edited
step makes new entries. A regular installed wheel is keyed by its version.

Environment switches (documented in docs/plugins/index.md):
- ``MISCORE_DISABLE_PLUGINS=name,...`` blocks plugins by name (entry-point or module name);
- ``MISCORE_PLUGINS=module_or_file,...`` registers local modules, as ``--plugin`` does;
- ``MISCORE_TRACE_HOOKS=1`` prints every hook call and result to stderr.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from miscore.core import hookspecs
from miscore.core.components import REGISTRATION_HOOKS
from miscore.core.errors import InputError, PluginError
from miscore.core.isolation import HookCall, HookMonitor, RegisteredPlugin, isolate
from miscore.core.registry import (
    ComponentInfo,
    PluginFailure,
    RegisteredModel,
    Registry,
    ShadowedComponent,
    check_component_class,
    check_model_entry,
)
from miscore.core.version import PLUGIN_API_VERSION, __version__

if TYPE_CHECKING:
    import typer

    from miscore.core.config import Config
    from miscore.core.volume import Volume

ENTRY_POINT_GROUP = "miscore"
DISABLE_ENV = "MISCORE_DISABLE_PLUGINS"
PLUGINS_ENV = "MISCORE_PLUGINS"
TRACE_ENV = "MISCORE_TRACE_HOOKS"
#: the module attribute a plugin sets to the plugin-API version it needs, e.g. ``"1.0"``
PLUGIN_API_ATTRIBUTE = "MISCORE_PLUGIN_API"

#: hooks whose implementations are isolated: one that raises is recorded, the others go on
ISOLATED_HOOKS: frozenset[str] = frozenset(
    {
        *REGISTRATION_HOOKS.values(),
        "miscore_defaults",
        "miscore_register_output_formats",
        "miscore_register_commands",
        "miscore_register_models",
    }
)


@dataclass
class PluginInfo:
    """One registered plugin: its name, version, module and what it registers."""

    name: str
    version: str
    module: str
    source: str  # "entry point", "local" or "api"
    components: dict[str, list[str]] = field(default_factory=dict)
    #: the CLI commands (and command groups) its ``miscore_register_commands`` added
    commands: list[str] = field(default_factory=list)
    #: the trained models its ``miscore_register_models`` ships (names that won a clash)
    models: list[str] = field(default_factory=list)
    #: the installed distribution that provides an entry-point plugin: "name version"
    distribution: str | None = None
    #: SHA-256 (12 hex) of the plugin's ``.py`` files when its code may change without its
    #: version (local plugins, editable installs); None for an installed wheel
    source_hash: str | None = None

    @property
    def key_version(self) -> str:
        """The version cache keys use: ``version``, plus ``src.<hash>`` as a local version
        label when the plugin has a source hash (``0+local.src.1a2b...``,
        ``1.2.0+src.1a2b...``)."""
        if self.source_hash is None:
            return self.version
        separator = "." if "+" in self.version else "+"
        return f"{self.version}{separator}src.{self.source_hash}"


def split_env_list(value: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def import_local_plugin(spec: str) -> ModuleType:
    """Import a plugin given as a ``.py`` file path or a module name."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise InputError(f"--plugin {spec}: no such file")
        module_name = f"miscore_local_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise PluginError(f"--plugin {spec}: cannot load this file as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise PluginError(f"--plugin {spec}: {type(exc).__name__}: {exc}") from exc
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name == spec.split(".")[0] or exc.name == spec:
            raise InputError(f"--plugin {spec}: no such module or .py file") from None
        raise PluginError(f"--plugin {spec}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise PluginError(f"--plugin {spec}: {type(exc).__name__}: {exc}") from exc


#: hex digits of ``PluginInfo.source_hash``
SOURCE_HASH_LENGTH = 12


def module_sources(module: ModuleType, *, whole_package: bool = False) -> list[Path]:
    """The files and folders whose ``.py`` files are the code of ``module``.

    A module is its file; a package (``__init__.py``) is its folder. With ``whole_package``
    the module's top-level package is taken (an editable install: any module of it may
    change). A module without a file (built in, made in a session) gives ``[]``.
    """
    if whole_package:
        top = sys.modules.get(module.__name__.split(".")[0])
        if top is not None:
            module = top
    locations = getattr(module, "__path__", None)
    if locations is not None:  # a package, perhaps a namespace package of several folders
        return sorted({Path(p) for p in locations if Path(p).is_dir()})
    file = getattr(module, "__file__", None)
    return [Path(file)] if isinstance(file, str) and file.endswith(".py") else []


def source_hash(roots: Sequence[Path]) -> str | None:
    """SHA-256 (``SOURCE_HASH_LENGTH`` hex) of the ``.py`` files at ``roots`` (files, or folders
    searched recursively), by sorted relative path and bytes; None when there are none."""
    files: list[tuple[str, Path]] = []
    for root in roots:
        if root.is_dir():
            files += [
                (f"{root.name}/{p.relative_to(root).as_posix()}", p)
                for p in root.rglob("*.py")
                if "__pycache__" not in p.parts
            ]
        elif root.is_file():
            files.append((root.name, root))
    if not files:
        return None
    digest = hashlib.sha256()
    for name, path in sorted(files):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PluginError(f"cannot read plugin source {path}: {exc}") from None
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:SOURCE_HASH_LENGTH]


def is_editable(dist: importlib.metadata.Distribution | None) -> bool:
    """Whether ``dist`` is an editable install (``pip install -e``, ``uv pip install -e``):
    installers record it in the distribution's ``direct_url.json`` (PEP 610), whichever
    build backend (setuptools, hatchling...) made it."""
    if dist is None:
        return False
    try:
        text = dist.read_text("direct_url.json")
        info = json.loads(text) if text else {}
    except (OSError, ValueError):
        return False
    dir_info = info.get("dir_info") if isinstance(info, dict) else None
    return isinstance(dir_info, dict) and dir_info.get("editable") is True


def distribution_label(dist: importlib.metadata.Distribution | None) -> str | None:
    """``"tp-extras-pkg 0.1"``: the distribution's name and version, as pip lists them."""
    if dist is None:
        return None
    name = dist.metadata["Name"] if dist.metadata is not None else None
    return f"{name or '?'} {dist.version}"


def check_plugin_api(plugin: object, name: str) -> None:
    """Refuse a plugin that needs another plugin API (``MISCORE_PLUGIN_API``).

    A plugin needing ``M.m`` loads when ``M`` is this miscore's major version and ``m`` is not
    newer than its minor one. Raises ``PluginError`` with a one-line reason.
    """
    needed = getattr(plugin, PLUGIN_API_ATTRIBUTE, None)
    if needed is None:
        return
    wanted = _api_version(str(needed))
    if wanted is None:
        raise PluginError(
            f"plugin {name!r} sets {PLUGIN_API_ATTRIBUTE} = {needed!r}; write the plugin-API "
            f"version it needs as 'MAJOR.MINOR', e.g. {PLUGIN_API_VERSION!r}"
        )
    have = _api_version(PLUGIN_API_VERSION)
    assert have is not None
    if wanted[0] == have[0] and wanted[1] <= have[1]:
        return
    advice = (
        "upgrade miscore"
        if wanted > have
        else f"install a version of the plugin written for plugin API {have[0]}.x"
    )
    raise PluginError(
        f"plugin {name!r} needs plugin API {needed}, but the installed miscore {__version__} "
        f"provides plugin API {PLUGIN_API_VERSION}; {advice}"
    )


def _api_version(text: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _command_names(app: typer.Typer) -> dict[int, str]:
    """The commands and command groups of a typer app, by identity: id -> name."""
    names: dict[int, str] = {}
    for command in app.registered_commands:
        name = command.name
        if not isinstance(name, str) and command.callback is not None:
            name = command.callback.__name__.lower().replace("_", "-")
        names[id(command)] = str(name)
    for group in app.registered_groups:
        name = group.name
        if not isinstance(name, str) and group.typer_instance is not None:
            name = group.typer_instance.info.name
        names[id(group)] = name if isinstance(name, str) else "?"
    return names


# --- the manager ---------------------------------------------------------------------------


class PluginManager:
    """Loads plugins and offers typed calls of every hook.

    Args:
        load_entrypoints: find installed plugins (group ``miscore``); False gives an empty
            manager, as tests and embedding code sometimes want.
        local_plugins: modules or ``.py`` files to register too (the CLI's ``--plugin``).
        disabled: plugin names to block; defaults to ``MISCORE_DISABLE_PLUGINS``.
        trace: print hook calls to stderr; defaults to ``MISCORE_TRACE_HOOKS``.
    """

    def __init__(
        self,
        *,
        load_entrypoints: bool = True,
        local_plugins: Sequence[str] = (),
        disabled: Iterable[str] | None = None,
        trace: bool | None = None,
    ) -> None:
        self._pm = pluggy.PluginManager("miscore")
        self._pm.add_hookspecs(hookspecs)
        self._monitor = HookMonitor()
        self._info: dict[str, PluginInfo] = {}
        self._failures: list[PluginFailure] = []
        self._registry: Registry | None = None
        self._building = threading.RLock()
        #: the ``local_plugins`` specs, for worker processes to load again
        self.local_plugins = tuple(local_plugins)
        if disabled is None:
            disabled = split_env_list(os.environ.get(DISABLE_ENV))
        self.disabled = frozenset(disabled)
        for name in self.disabled:
            self._pm.set_blocked(name)
        if trace is None:
            trace = os.environ.get(TRACE_ENV, "") not in ("", "0")
        if trace:
            self._pm.trace.root.setwriter(sys.stderr.write)
            self._pm.enable_tracing()
        if load_entrypoints:
            self._load_entrypoints()
        for spec in local_plugins:
            self._load_local(spec)

    # --- registration -------------------------------------------------------------------

    def register(
        self,
        plugin: object,
        name: str | None = None,
        *,
        version: str | None = None,
        sources: Sequence[Path] | None = None,
    ) -> str:
        """Register a plugin object (usually a module) and return the name it got.

        Args:
            version: the plugin's version; by default its ``__version__`` or ``0+local``.
            sources: files or folders whose ``.py`` files are the plugin's code, hashed into
                ``PluginInfo.source_hash`` for cache keys. By default, when no ``version`` is
                given, the file of the plugin's module (its folder for a package); with a
                ``version``, none.

        Raises ``PluginError`` when it implements a hook wrongly (misspelled name or
        arguments the spec does not have) or needs another plugin API
        (``MISCORE_PLUGIN_API``).
        """
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        if self._pm.is_blocked(name):
            return name
        check_plugin_api(plugin, name)
        if self.is_registered(name):
            raise PluginError(f"plugin {name!r} is already registered")
        for other in self._pm.get_plugins():
            if getattr(other, "_miscore_plugin", None) is plugin:
                raise PluginError(
                    f"plugin {name!r} is already registered as {self._pm.get_name(other)!r}"
                )
        registered = self._registered_plugin(plugin, name)
        try:
            self._pm.register(registered, name)
            self._pm.check_pending()
        except Exception as exc:
            if self._pm.is_registered(registered):
                self._pm.unregister(registered)
            raise PluginError(f"plugin {name!r} is invalid: {exc}") from exc
        module = getattr(plugin, "__name__", type(plugin).__module__)
        if sources is None and version is None:
            code = plugin if isinstance(plugin, ModuleType) else sys.modules.get(module)
            sources = module_sources(code) if code is not None else []
        self._info[name] = PluginInfo(
            name=name,
            version=version or str(getattr(plugin, "__version__", "0+local")),
            module=module,
            source="api",
            source_hash=source_hash(sources or ()),
        )
        self._registry = None
        return name

    def _registered_plugin(self, plugin: object, name: str) -> RegisteredPlugin:
        """The object pluggy registers for ``plugin``: isolated hooks wrapped."""
        impls: dict[str, Callable[..., Any]] = {}
        for attr in dir(plugin):
            opts = self._pm.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            function: Callable[..., Any] = getattr(plugin, attr)
            hook = opts.get("specname") or attr
            if hook in ISOLATED_HOOKS:
                function = isolate(function, dict(opts), name, hook, self._monitor)
            impls[attr] = function
        return RegisteredPlugin(plugin, impls)

    def unregister(self, name: str) -> None:
        """Remove a plugin by name (no error when it is not registered)."""
        registered = self._pm.get_plugin(name)
        if registered is not None:
            self._pm.unregister(registered)
        self._info.pop(name, None)
        self._registry = None

    def is_registered(self, name: str) -> bool:
        return self._pm.get_plugin(name) is not None

    def _load_entrypoints(self) -> None:
        labels: dict[object, str | None] = {}  # one metadata parse per distribution
        for ep in sorted(
            importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name
        ):
            module = ep.value.split(":")[0]
            if {ep.name, module} & self.disabled or self.is_registered(ep.name):
                continue
            where = getattr(ep.dist, "_path", None) or id(ep.dist)  # its dist-info folder
            if where not in labels:
                labels[where] = distribution_label(ep.dist)
            distribution = labels[where]
            try:
                plugin = ep.load()
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                self._failures.append(PluginFailure(ep.name, "import", message, distribution))
                continue
            version = getattr(plugin, "__version__", None) or (
                ep.dist.version if ep.dist is not None else "unknown"
            )
            sources: list[Path] = []
            if is_editable(ep.dist) and ep.module in sys.modules:
                sources = module_sources(sys.modules[ep.module], whole_package=True)
            try:
                self.register(plugin, ep.name, version=str(version), sources=sources)
            except PluginError as exc:
                self._failures.append(
                    PluginFailure(ep.name, "registration", str(exc), distribution)
                )
                continue
            self._info[ep.name].source = "entry point"
            self._info[ep.name].distribution = distribution

    def _load_local(self, spec: str) -> None:
        module = import_local_plugin(spec)
        name = module.__name__.removeprefix("miscore_local_")
        if name in self.disabled:
            return
        self.register(module, name)
        self._info[name].source = "local"

    # --- calling isolated hooks ---------------------------------------------------------

    def _call_isolated(
        self,
        hook_name: str,
        observe: Callable[[], dict[int, str]] | None = None,
        **kwargs: Any,
    ) -> tuple[list[tuple[str, Any]], HookCall]:
        """Call an isolated hook through pluggy.

        Returns ``(plugin, value)`` for each value in the hook's result, in pluggy's call
        order, and the call's record (failures, what ``observe`` saw each plugin add).
        """
        call = self._monitor.start(observe)
        try:
            results = getattr(self._pm.hook, hook_name)(**kwargs)
        finally:
            self._monitor.stop()
        return [(call.origin(value), value) for value in results], call

    # --- the registry -------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        """The components every plugin registered (built on first use, then kept; one thread
        builds it, as the hook monitor follows one call at a time)."""
        with self._building:
            if self._registry is None:
                self._registry = self._build_registry()
            return self._registry

    def _build_registry(self) -> Registry:
        failures = list(self._failures)
        components: list[ComponentInfo] = []
        shadowed: list[ShadowedComponent] = []
        for info in self._info.values():
            info.components = {}
            info.models = []
        for kind, hook_name in REGISTRATION_HOOKS.items():
            returned, call = self._call_isolated(hook_name)
            failures.extend(call.failures)
            winners: dict[str, ComponentInfo] = {}
            for plugin_name, value in returned:  # pluggy's call order: the first one wins
                try:
                    if not isinstance(value, list | tuple):
                        raise TypeError(f"returned {value!r}, not a list of classes")
                    classes = [check_component_class(kind, c) for c in value]
                except Exception as exc:
                    failures.append(
                        PluginFailure(plugin_name, hook_name, f"{type(exc).__name__}: {exc}")
                    )
                    continue
                owner_info = self._info.get(plugin_name)
                for cls in classes:
                    winner = winners.get(cls.name)
                    if winner is not None:
                        if winner.plugin != plugin_name:
                            shadowed.append(
                                ShadowedComponent(kind, cls.name, plugin_name, winner.plugin)
                            )
                        continue
                    winners[cls.name] = record = ComponentInfo(
                        kind=kind,
                        name=cls.name,
                        cls=cls,
                        plugin=plugin_name,
                        version=owner_info.version if owner_info else "unknown",
                    )
                    components.append(record)
                    if owner_info is not None:
                        owner_info.components.setdefault(kind, []).append(cls.name)
        defaults = self._merged("miscore_defaults", failures)
        formats = self._merged("miscore_register_output_formats", failures)
        models = self._models(failures, shadowed)
        failures.extend(self._monitor.unclaimed)
        failures = [self._with_distribution(f) for f in failures]
        return Registry(
            components,
            failures,
            defaults=defaults,
            output_formats=formats,
            shadowed=shadowed,
            models=models,
        )

    def _models(
        self, failures: list[PluginFailure], shadowed: list[ShadowedComponent]
    ) -> list[RegisteredModel]:
        """The trained models of ``miscore_register_models``: a wrong entry (bad name, a path
        that does not exist) is the plugin's failure; a name clash goes as components' do."""
        hook_name = "miscore_register_models"
        returned, call = self._call_isolated(hook_name)
        failures.extend(call.failures)
        winners: dict[str, RegisteredModel] = {}
        for plugin_name, value in returned:  # pluggy's call order: the first one wins
            if not isinstance(value, list | tuple):
                message = f"TypeError: returned {value!r}, not a list of models"
                failures.append(PluginFailure(plugin_name, hook_name, message))
                continue
            owner_info = self._info.get(plugin_name)
            for item in value:
                try:
                    name, path, card = check_model_entry(item)
                except (TypeError, ValueError) as exc:
                    message = f"{type(exc).__name__}: {exc}"
                    failures.append(PluginFailure(plugin_name, hook_name, message))
                    continue
                winner = winners.get(name)
                if winner is not None:
                    if winner.plugin != plugin_name:
                        clash = ShadowedComponent("model", name, plugin_name, winner.plugin)
                        shadowed.append(clash)
                    continue
                version = owner_info.version if owner_info else "unknown"
                winners[name] = RegisteredModel(name, path, plugin_name, version, card)
                if owner_info is not None:
                    owner_info.models.append(name)
        return list(winners.values())

    def _with_distribution(self, failure: PluginFailure) -> PluginFailure:
        """``failure`` naming the distribution of its plugin, when an entry point's."""
        info = self._info.get(failure.plugin)
        if failure.distribution is None and info is not None and info.distribution:
            return dataclasses.replace(failure, distribution=info.distribution)
        return failure

    def _merged(self, hook_name: str, failures: list[PluginFailure]) -> dict[str, Any]:
        """Merge the dicts a hook's implementations return: the first in pluggy's call
        order to give a key wins."""
        returned, call = self._call_isolated(hook_name)
        failures.extend(call.failures)
        merged: dict[str, Any] = {}
        for plugin_name, value in returned:
            if not isinstance(value, dict):
                message = f"TypeError: returned {type(value).__name__}, not a dict"
                failures.append(PluginFailure(plugin_name, hook_name, message))
                continue
            for key, item in value.items():
                problem = _merged_value_problem(hook_name, key, item)
                if problem:
                    failures.append(PluginFailure(plugin_name, hook_name, problem))
                elif key not in merged:
                    merged[key] = item
        return merged

    # --- introspection ------------------------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin, with what it registers per kind."""
        self.registry  # noqa: B018 - fills PluginInfo.components
        return [self._info[name] for name in sorted(self._info)]

    @property
    def failures(self) -> tuple[PluginFailure, ...]:
        return self.registry.failures

    @property
    def load_failures(self) -> tuple[PluginFailure, ...]:
        """The plugins that are installed but did not load, and the ``miscore_register_commands``
        implementations that raised; known without building the registry."""
        return tuple(self._with_distribution(f) for f in self._failures)

    def versions(self) -> dict[str, str]:
        """Plugin name -> version, for model directories and cache keys."""
        return {info.name: info.version for info in self.plugins()}

    def plugin_of(self, kind: str, name: str) -> PluginInfo:
        """The plugin that registers component ``name`` of ``kind``."""
        return self._info[self.registry.info(kind, name).plugin]

    # --- typed hook calls ---------------------------------------------------------------

    def register_commands(self, app: typer.Typer) -> None:
        """Let each plugin add commands; one that raises is recorded, not fatal, so that
        ``miscore plugins`` can still show what is wrong. ``PluginInfo.commands`` lists
        what each added."""
        _, call = self._call_isolated(
            "miscore_register_commands", observe=lambda: _command_names(app), app=app
        )
        for plugin_name, names in call.added.items():
            if plugin_name in self._info:
                self._info[plugin_name].commands.extend(names)
        if call.failures:
            self._failures.extend(call.failures)
            self._registry = None

    def configure(self, config: Config) -> None:
        self._pm.hook.miscore_configure(config=config, registry=self.registry)

    def epoch_end(self, epoch: int, logs: dict[str, float], model_dir: Path | None) -> None:
        self._pm.hook.miscore_epoch_end(epoch=epoch, logs=logs, model_dir=model_dir)

    def prediction_written(self, case_id: str, path: Path, prediction: Volume) -> None:
        self._pm.hook.miscore_prediction_written(case_id=case_id, path=path, prediction=prediction)

    def plan_choices(self, ndim: int, thick_axis: int | None) -> dict[str, Any]:
        """The planner's components, merged from ``miscore_plan_choices`` in pluggy's call
        order: the first plugin to give a key wins. ``reasons`` merge per config path, each
        taken only from the plugin whose choice won that path's key (an overridden choice's
        reason is dropped with it)."""
        results = self._pm.hook.miscore_plan_choices(ndim=ndim, thick_axis=thick_axis)
        merged: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        for returned in results:
            choices = {key: value for key, value in returned.items() if key != "reasons"}
            won = [key for key in choices if key not in merged]
            if choices and not won:
                continue
            for key in won:
                merged[key] = choices[key]
            for path, why in (returned.get("reasons") or {}).items():
                # a path names its key last: model.loss -> loss, augmentation[2] -> augmentation
                if path.split("[")[0].split(".")[-1] in won:
                    reasons.setdefault(path, why)
        merged["reasons"] = reasons
        return merged


#: ``miscore_defaults`` keys whose value is one component entry, and those holding a list
_ENTRY_DEFAULTS = ("architecture", "loss", "sampler", "evaluator")
_LIST_DEFAULTS = ("augmentation", "metrics")


def _is_entry(value: Any) -> bool:
    """A component entry: a name, or a mapping with a string ``name``."""
    return isinstance(value, str) or (
        isinstance(value, dict) and isinstance(value.get("name"), str)
    )


def _merged_value_problem(hook_name: str, key: Any, value: Any) -> str | None:
    """Why ``value`` cannot be the ``key`` of a merged hook's answer, or None when it can."""
    if not isinstance(key, str):
        return f"TypeError: key {key!r} is not a string"
    if hook_name == "miscore_register_output_formats":
        if not (isinstance(value, dict) and isinstance(value.get("name"), str)):
            return f"format {key!r}: give an IO entry {{name: IO name, **params}}; got {value!r}"
    elif key in _ENTRY_DEFAULTS and not _is_entry(value):
        return f"default {key!r}: give a component name or {{name, **params}}; got {value!r}"
    elif key in _LIST_DEFAULTS and not (
        isinstance(value, list) and all(_is_entry(v) for v in value)
    ):
        return f"default {key!r}: give a list of component entries; got {value!r}"
    return None
