"""Lookups of registered components by kind and name."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from miscore.core.components import (
    BASES,
    KINDS,
    REGISTRATION_HOOKS,
    Architecture,
    Augmentation,
    Component,
    Evaluator,
    ImageIO,
    Loss,
    Metric,
    Subfunction,
)
from miscore.core.errors import ComponentNotFoundError, ConfigError, InputError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

C = TypeVar("C", bound=Component)


@dataclass(frozen=True)
class ComponentInfo:
    """Where a registered component comes from."""

    kind: str
    name: str
    cls: type[Component]
    plugin: str
    version: str


#: ``PluginFailure.stage`` of a plugin that is installed but did not load
LOAD_STAGES = frozenset({"import", "registration"})


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or whose registration hook raised.

    ``stage`` is ``import`` (the entry point raised on import), ``registration`` (refused:
    a wrong hook, another plugin API) or the name of the hook that raised.
    ``distribution`` is ``"name version"`` of the installed package, for entry points.
    """

    plugin: str
    stage: str
    message: str
    distribution: str | None = None

    @property
    def did_not_load(self) -> bool:
        """Whether the plugin is missing altogether (not only one hook's answer)."""
        return self.stage in LOAD_STAGES

    def __str__(self) -> str:
        where = f" (distribution {self.distribution})" if self.distribution else ""
        # one line: an exception's message may have several (numpy's ImportError has)
        message = "; ".join(line.strip() for line in self.message.splitlines() if line.strip())
        if self.did_not_load:
            return f"plugin {self.plugin!r}{where} is installed but failed to load: {message}"
        return f"plugin {self.plugin!r}{where} failed at {self.stage}: {message}"


@dataclass(frozen=True)
class ReaderTie:
    """Two readers of the same priority that declare the same file endings."""

    suffixes: tuple[str, ...]
    winner: str
    loser: str
    priority: int

    def __str__(self) -> str:
        return (
            f"io {self.winner!r} and {self.loser!r} both read {', '.join(self.suffixes)} at "
            f"priority {self.priority}; {self.winner!r} wins by name: set ImageIO.priority "
            "on one of them to choose"
        )


@dataclass(frozen=True)
class ShadowedComponent:
    """A component name two plugins register: ``by`` wins, ``plugin``'s class is unused.

    The winner is the implementation pluggy calls first: ``tryfirst``, then plain, then
    ``trylast``; among equals the plugin registered later.
    """

    kind: str
    name: str
    plugin: str
    by: str

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.name!r} of plugin {self.plugin!r} is shadowed by plugin "
            f"{self.by!r} (called first by pluggy)"
        )


#: what a registered model may be called: never a path (no slash), so a name and a file differ
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class ModelEntry:
    """A trained model a plugin ships inside its package (``miscore_register_models``).

    Args:
        name: what users type: ``miscore predict NAME ...``, ``miscore.load_model(NAME)``;
            letters, digits and ``._-``.
        path: a model folder written by ``miscore train`` or a ``.miscore`` package, inside the
            installed plugin package: ``importlib.resources.files(__package__) / "model"``.
        card: what ``miscore models`` shows beside what the model itself records: ``task``,
            ``classes``, ``license``, ``description``, ``url``... (JSON values).
    """

    name: str
    path: str | os.PathLike[str] | Traversable
    card: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RegisteredModel:
    """A model a plugin registered: its name, its checked path, who ships it, its card."""

    name: str
    path: Path
    plugin: str
    version: str
    card: dict[str, Any] = field(default_factory=dict)


def check_model_entry(value: object) -> tuple[str, Path, dict[str, Any]]:
    """Validate what a ``miscore_register_models`` implementation returned for one model.

    Takes a ``ModelEntry`` or a ``(name, path)`` / ``(name, path, card)`` tuple and returns
    its name, its path (existing, absolute) and its card; raises ``TypeError`` or
    ``ValueError`` saying what is wrong.
    """
    if isinstance(value, tuple) and len(value) in (2, 3):
        value = ModelEntry(*value)
    if not isinstance(value, ModelEntry):
        raise TypeError(f"returned {value!r}; give miscore.ModelEntry or (name, path) tuples")
    name = value.name
    if not (isinstance(name, str) and MODEL_NAME.fullmatch(name)):
        raise ValueError(f"model name {name!r}: use letters, digits and '._-' (no '/')")
    raw = value.path
    if isinstance(raw, str | os.PathLike):
        path = Path(os.fspath(raw))
    else:  # a Traversable that is not a file system path: a zipped install
        raise TypeError(
            f"model {name!r}: {raw!r} is not on the file system; ship the plugin as a regular "
            "(unzipped) package"
        )
    if not path.is_absolute():
        raise ValueError(
            f"model {name!r}: {path} is a relative path; give an absolute one, e.g. "
            "importlib.resources.files(__package__) / 'model'"
        )
    if not path.exists():
        raise ValueError(f"model {name!r}: {path} does not exist (not shipped in the package?)")
    card = value.card
    if card is not None and not (
        isinstance(card, Mapping) and all(isinstance(k, str) for k in card)
    ):
        raise TypeError(f"model {name!r}: card {card!r} is not a mapping of names to values")
    return name, path, dict(card or {})


def format_location(loc: Sequence[int | str]) -> str:
    """``('preprocessing', 1, 'min')`` -> ``preprocessing[1].min``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line naming every wrong field by its path, as users write it in YAML."""
    parts = []
    for item in error.errors():
        loc = format_location(item["loc"])
        path = ".".join(p for p in (prefix, loc) if p) or "config"
        parts.append(f"{path}: {item['msg']}")
    return "; ".join(parts)


class Registry:
    """Every component the loaded plugins registered, by kind and name."""

    def __init__(
        self,
        components: Iterable[ComponentInfo],
        failures: Sequence[PluginFailure] = (),
        *,
        defaults: Mapping[str, Any] | None = None,
        output_formats: Mapping[str, Mapping[str, Any]] | None = None,
        shadowed: Sequence[ShadowedComponent] = (),
        models: Iterable[RegisteredModel] = (),
    ) -> None:
        self._by_kind: dict[str, dict[str, ComponentInfo]] = {kind: {} for kind in KINDS}
        for info in components:
            self._by_kind[info.kind][info.name] = info
        self.failures: tuple[PluginFailure, ...] = tuple(failures)
        #: components that lost a name clash to another plugin's (not errors)
        self.shadowed: tuple[ShadowedComponent, ...] = tuple(shadowed)
        #: what a config leaves out (``miscore_defaults``): architecture, loss, augmentation
        self.defaults: dict[str, Any] = dict(defaults or {})
        #: ``--format`` names: format -> IO entry ``{name, **params}``
        self.output_formats: dict[str, dict[str, Any]] = {
            k: dict(v) for k, v in (output_formats or {}).items()
        }
        #: trained models the plugins ship (``miscore_register_models``), by name
        self._models: dict[str, RegisteredModel] = {m.name: m for m in models}

    # --- lookups ------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        """Sorted names of the registered components of ``kind``."""
        return sorted(self._kind(kind))

    def components(self, kind: str) -> list[ComponentInfo]:
        return [self._kind(kind)[name] for name in self.names(kind)]

    def info(self, kind: str, name: str) -> ComponentInfo:
        """The registration record of a component; raises a helpful error when missing."""
        table = self._kind(kind)
        if name in table:
            return table[name]
        raise ComponentNotFoundError(self._missing_message(kind, name))

    def get(self, kind: str, name: str) -> type[Component]:
        """The class registered as ``name`` of ``kind`` (typed as ``Component``)."""
        return self.info(kind, name).cls

    def get_typed(self, base: type[C], name: str) -> type[C]:
        """The class registered as ``name`` of the kind whose base class is ``base``.

        ``registry.get_typed(miscore.Sampler, "uniform")`` is typed ``type[Sampler]``.
        """
        cls = self.get(base.kind, name)
        if not issubclass(cls, base):  # the registry checks classes; a kind's base is fixed
            raise TypeError(f"{base.kind} {name!r} is {cls!r}, not a {base.__name__}")
        return cls

    # The kinds the kernel looks up most, by name (the same lookup as ``get_typed``).

    def get_io(self, name: str) -> type[ImageIO]:
        return self.get_typed(ImageIO, name)

    def get_subfunction(self, name: str) -> type[Subfunction]:
        return self.get_typed(Subfunction, name)

    def get_augmentation(self, name: str) -> type[Augmentation]:
        return self.get_typed(Augmentation, name)

    def get_architecture(self, name: str) -> type[Architecture]:
        return self.get_typed(Architecture, name)

    def get_loss(self, name: str) -> type[Loss]:
        return self.get_typed(Loss, name)

    def get_metric(self, name: str) -> type[Metric]:
        return self.get_typed(Metric, name)

    def get_evaluator(self, name: str) -> type[Evaluator]:
        return self.get_typed(Evaluator, name)

    # --- trained models plugins ship ----------------------------------------------------

    def models(self) -> list[RegisteredModel]:
        """The models the plugins registered, sorted by name."""
        return [self._models[name] for name in sorted(self._models)]

    def model(self, name: str) -> RegisteredModel:
        """The model a plugin registered as ``name``; ``ComponentNotFoundError`` naming the
        registered models (and the closest one) when there is none."""
        if name in self._models:
            return self._models[name]
        raise ComponentNotFoundError(
            self._missing_message("model", name, sorted(self._models), "miscore_register_models")
        )

    # --- creation -----------------------------------------------------------------------

    def create_each(self, kind: str, specs: Iterable[Any], where: str) -> list[Any]:
        """``create`` for every entry of a config list; errors name ``where[index]``."""
        return [self.create(kind, spec, f"{where}[{i}]") for i, spec in enumerate(specs)]

    def create(self, kind: str, spec: Any, where: str = "") -> Any:
        """Create a component from a name, a ``{name, **params}`` mapping or an object.

        An object that is already a component (or, for the Python API, any other object such
        as a Keras loss) is returned unchanged. ``where`` is the config path used in errors,
        e.g. ``preprocessing[1]``.
        """
        if isinstance(spec, BaseModel):
            spec = spec.model_dump()
        if isinstance(spec, str):
            name, params = spec, {}
        elif isinstance(spec, Mapping):
            values = dict(spec)
            name = values.pop("name", None)
            params = values
            if not isinstance(name, str):
                field = f"{where}.name" if where else "name"
                raise ConfigError(f"{field}: a {kind} entry needs a 'name'")
        elif spec is None:
            raise ConfigError(f"{where or kind}: not set (apply the plugins' defaults first)")
        else:
            return spec
        try:
            cls = self.get(kind, name)
        except ComponentNotFoundError as exc:
            field = f"{where}.name" if where else "name"
            raise ComponentNotFoundError(f"{field}: {exc}") from None
        try:
            return cls(params)
        except ValidationError as exc:
            prefix = f"{where}.{name}" if where else name
            raise ConfigError(format_validation_error(exc, prefix)) from None

    def readers(self) -> list[type[ImageIO]]:
        """The IO classes in the order they are asked for a file: the highest ``priority``
        first, ties by name."""
        classes = [self.get_io(name) for name in self.names("io")]
        return sorted(classes, key=lambda cls: (-cls.priority, cls.name))

    def reader_ties(self) -> list[ReaderTie]:
        """File endings two readers of the same ``priority`` both declare: the name decides
        between them, which is rarely what was meant; ``miscore plugins`` shows each one."""
        ties: list[ReaderTie] = []
        readers = self.readers()
        for i, first in enumerate(readers):
            for second in readers[i + 1 :]:
                if first.priority != second.priority:
                    continue
                common = sorted(set(first.suffixes) & set(second.suffixes))
                if common:
                    ties.append(ReaderTie(tuple(common), first.name, second.name, first.priority))
        return ties

    def reader_for(self, path: Path) -> ImageIO | None:
        """The IO that reads ``path``: of those whose ``can_read`` says yes, the one with the
        highest ``priority``, ties by name; None when none can."""
        for cls in self.readers():
            io = cls()
            if io.can_read(path):
                return io
        return None

    def io_for(self, path: Path) -> ImageIO:
        """The IO that reads ``path`` (see ``reader_for``); ``InputError`` when none can."""
        io = self.reader_for(path)
        if io is not None:
            return io
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        known = sorted({s for i in self.components("io") for s in getattr(i.cls, "suffixes", ())})
        raise InputError(
            f"{path}: no installed reader handles this file; known endings: "
            f"{', '.join(known) or 'none (no IO plugin is installed)'}"
        )

    # --- helpers ------------------------------------------------------------------------

    def _kind(self, kind: str) -> dict[str, ComponentInfo]:
        if kind not in self._by_kind:
            raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        return self._by_kind[kind]

    def _missing_message(
        self, kind: str, name: str, installed: list[str] | None = None, hook: str | None = None
    ) -> str:
        """No such component: the plugins that failed come first (the name may well be one
        of theirs), then the closest installed name as a guess, then the installed names.
        ``installed`` and ``hook`` default to those of component ``kind``."""
        if installed is None:
            installed = self.names(kind)
        hook = hook or REGISTRATION_HOOKS[kind]
        message = f"no {kind} named {name!r}"
        close = difflib.get_close_matches(name, installed, n=1, cutoff=0.5)
        relevant = [f for f in self.failures if f.did_not_load or f.stage == hook]
        if relevant:
            message += "; " + "; ".join(str(f) for f in relevant)
            message += "; run `miscore plugins` for details"
            if close:
                message += f"; otherwise did you mean {close[0]!r}?"
        elif close:
            message += f" (did you mean {close[0]!r}?)"
        message += f"; installed: {', '.join(installed) if installed else 'none'}"
        others = [f for f in self.failures if f not in relevant]
        if others:
            message += "; " + "; ".join(str(f) for f in others)
        return message


def check_component_class(kind: str, cls: object) -> type[Component]:
    """Validate a class a plugin registered for ``kind``; raise ``TypeError`` saying why."""
    base = BASES[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"registered {cls!r} as {kind}; it is not a subclass of {base.__name__}")
    if not cls.name or not isinstance(cls.name, str):
        raise TypeError(f"{cls.__name__} has no 'name'")
    extra = cls.Params.model_config.get("extra")
    if extra != "forbid":
        raise TypeError(f"{cls.__name__}.Params must forbid extra fields (derive miscore.Params)")
    return cls


def build_steps(specs: Iterable[Any], registry: Registry) -> list[Subfunction]:
    """Create the subfunctions a config lists, each with a unique ``state_key``.

    Args:
        specs: entries as a config holds them: a name, a ``{name, **params}`` mapping, a
            ``ComponentSpec`` or an already created ``Subfunction``.
        registry: where names are looked up (``PluginManager.registry``).
    """
    steps: list[Subfunction] = []
    for i, spec in enumerate(specs):
        step = registry.create("subfunction", spec, f"preprocessing[{i}]")
        if not isinstance(step, Subfunction):
            raise InputError(
                f"preprocessing[{i}]: {type(step).__name__} is not a Subfunction; "
                "give a name, a {name, ...params} mapping or a Subfunction"
            )
        step.state_key = f"{i}.{step.name}"
        steps.append(step)
    return steps
