"""The plugin manager: finds plugins through entry points and wraps every hook call.

Core code never touches ``pm.hook`` directly; it calls the typed methods here.

Environment switches (documented in docs/plugins/index.md):
- ``MISCORE_DISABLE_PLUGINS=name,...`` blocks plugins by name (entry-point or module name);
- ``MISCORE_PLUGINS=module_or_file,...`` registers local modules, as ``--plugin`` does;
- ``MISCORE_TRACE_HOOKS=1`` prints every hook call and result to stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from miscore.core import hookspecs
from miscore.core.components import REGISTRATION_HOOKS
from miscore.core.errors import InputError, PluginError
from miscore.core.registry import ComponentInfo, PluginFailure, Registry, check_component_class

if TYPE_CHECKING:
    import typer

    from miscore.core.config import Config
    from miscore.core.volume import Volume

ENTRY_POINT_GROUP = "miscore"
DISABLE_ENV = "MISCORE_DISABLE_PLUGINS"
PLUGINS_ENV = "MISCORE_PLUGINS"
TRACE_ENV = "MISCORE_TRACE_HOOKS"


@dataclass
class PluginInfo:
    """One registered plugin: its name, version, module and what it registers."""

    name: str
    version: str
    module: str
    source: str  # "entry point", "local" or "api"
    components: dict[str, list[str]] = field(default_factory=dict)


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
        self._info: dict[str, PluginInfo] = {}
        self._failures: list[PluginFailure] = []
        self._registry: Registry | None = None
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
        self, plugin: object, name: str | None = None, *, version: str | None = None
    ) -> str:
        """Register a plugin object (usually a module) and return the name it got.

        Raises ``PluginError`` when it implements a hook wrongly (misspelled name or
        arguments the spec does not have).
        """
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        if self._pm.is_blocked(name):
            return name
        try:
            self._pm.register(plugin, name)
            self._pm.check_pending()
        except Exception as exc:
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            raise PluginError(f"plugin {name!r} is invalid: {exc}") from exc
        module = getattr(plugin, "__name__", type(plugin).__module__)
        self._info[name] = PluginInfo(
            name=name,
            version=version or str(getattr(plugin, "__version__", "0+local")),
            module=module,
            source="api",
        )
        self._registry = None
        return name

    def unregister(self, name: str) -> None:
        """Remove a plugin by name (no error when it is not registered)."""
        plugin = self._pm.get_plugin(name)
        if plugin is not None:
            self._pm.unregister(plugin)
        self._info.pop(name, None)
        self._registry = None

    def is_registered(self, name: str) -> bool:
        return self._pm.get_plugin(name) is not None

    def _load_entrypoints(self) -> None:
        for ep in sorted(
            importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name
        ):
            if ep.name in self.disabled or self.is_registered(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self._failures.append(
                    PluginFailure(ep.name, "import", f"{type(exc).__name__}: {exc}")
                )
                continue
            version = getattr(plugin, "__version__", None) or (
                ep.dist.version if ep.dist is not None else "unknown"
            )
            try:
                self.register(plugin, ep.name, version=str(version))
            except PluginError as exc:
                self._failures.append(PluginFailure(ep.name, "registration", str(exc)))
                continue
            self._info[ep.name].source = "entry point"

    def _load_local(self, spec: str) -> None:
        module = import_local_plugin(spec)
        name = module.__name__.removeprefix("miscore_local_")
        if name in self.disabled:
            return
        self.register(module, name)
        self._info[name].source = "local"

    # --- the registry -------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        """The components every plugin registered (built on first use, then kept)."""
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> Registry:
        components: list[ComponentInfo] = []
        failures = list(self._failures)
        owners: dict[tuple[str, str], str] = {}
        for info in self._info.values():
            info.components = {}
        for kind, hook_name in REGISTRATION_HOOKS.items():
            caller = getattr(self._pm.hook, hook_name)
            # Call each plugin on its own so that one that raises cannot take the others down.
            for impl in caller.get_hookimpls():  # registration order: the first one wins
                plugin_name = impl.plugin_name
                try:
                    returned = impl.function() or []
                    classes = [check_component_class(kind, c) for c in returned]
                except Exception as exc:
                    failures.append(
                        PluginFailure(plugin_name, hook_name, f"{type(exc).__name__}: {exc}")
                    )
                    continue
                owner_info = self._info.get(plugin_name)
                for cls in classes:
                    owner = owners.get((kind, cls.name))
                    if owner is not None and owner != plugin_name:
                        failures.append(
                            PluginFailure(
                                plugin_name,
                                hook_name,
                                f"{kind} {cls.name!r} is already registered by plugin "
                                f"{owner!r}; disable one of them with {DISABLE_ENV}",
                            )
                        )
                        continue
                    owners[(kind, cls.name)] = plugin_name
                    components.append(
                        ComponentInfo(
                            kind=kind,
                            name=cls.name,
                            cls=cls,
                            plugin=plugin_name,
                            version=owner_info.version if owner_info else "unknown",
                        )
                    )
                    if owner_info is not None:
                        owner_info.components.setdefault(kind, []).append(cls.name)
        defaults = self._merged("miscore_defaults", failures)
        formats = self._merged("miscore_register_output_formats", failures)
        return Registry(components, failures, defaults=defaults, output_formats=formats)

    def _merged(self, hook_name: str, failures: list[PluginFailure]) -> dict[str, Any]:
        """Merge the dicts a hook's implementations return: the first to give a key wins."""
        merged: dict[str, Any] = {}
        caller = getattr(self._pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):  # pluggy's call order
            try:
                returned = impl.function() or {}
                if not isinstance(returned, dict):
                    raise TypeError(f"returned {type(returned).__name__}, not a dict")
            except Exception as exc:
                failures.append(
                    PluginFailure(impl.plugin_name, hook_name, f"{type(exc).__name__}: {exc}")
                )
                continue
            for key, value in returned.items():
                merged.setdefault(key, value)
        return merged

    # --- introspection ------------------------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin, with what it registers per kind."""
        self.registry  # noqa: B018 - fills PluginInfo.components
        return [self._info[name] for name in sorted(self._info)]

    @property
    def failures(self) -> tuple[PluginFailure, ...]:
        return self.registry.failures

    def versions(self) -> dict[str, str]:
        """Plugin name -> version, for model directories and cache keys."""
        return {info.name: info.version for info in self.plugins()}

    def plugin_of(self, kind: str, name: str) -> PluginInfo:
        """The plugin that registers component ``name`` of ``kind``."""
        return self._info[self.registry.info(kind, name).plugin]

    # --- typed hook calls ---------------------------------------------------------------

    def register_commands(self, app: typer.Typer) -> None:
        """Let each plugin add commands; one that raises is recorded, not fatal, so that
        ``miscore plugins`` can still show what is wrong."""
        for impl in self._pm.hook.miscore_register_commands.get_hookimpls():
            try:
                impl.function(app=app)
            except Exception as exc:
                self._failures.append(
                    PluginFailure(
                        impl.plugin_name,
                        "miscore_register_commands",
                        f"{type(exc).__name__}: {exc}",
                    )
                )
                self._registry = None

    def configure(self, config: Config) -> None:
        self._pm.hook.miscore_configure(config=config, registry=self.registry)

    def epoch_end(self, epoch: int, logs: dict[str, float], model_dir: Path | None) -> None:
        self._pm.hook.miscore_epoch_end(epoch=epoch, logs=logs, model_dir=model_dir)

    def prediction_written(self, case_id: str, path: Path, prediction: Volume) -> None:
        self._pm.hook.miscore_prediction_written(case_id=case_id, path=path, prediction=prediction)
