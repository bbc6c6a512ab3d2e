"""Fine-tuning: a new model that starts from a trained model's weights (``training.init_from``).

The new network is built from the config as usual, then every layer that has a layer of the
same name and the same weight shapes in the trained model takes that layer's weights; the
others keep their fresh initialisation (the output layer when the number of classes differs,
the first convolution when the channels differ, any layer of another shape). What was loaded
and what was skipped, and why, is logged and written to ``init_from.json`` in the new model
folder.

Names: Keras numbers the layers it names itself per process (``conv3d``, ``conv3d_1``...; the
second model a process builds starts at ``conv3d_12``), so a layer is matched by its name
without that number plus its rank among the model's layers of that name: the ``k``-th
``conv3d`` of the one model takes the weights of the ``k``-th ``conv3d`` of the other. Layers
named by the architecture (``image``, ``segmentation``) match as they are.

``init_from`` is resolved as ``miscore predict`` resolves its model (``package.resolve_model``:
a model folder, a checked ``.miscore`` package or an installed model's name), and the trained
model is loaded in Keras safe mode (no pickle, no code). Its preprocessing entries are the new
config's when the config gives none, so the new model sees its inputs normalised as the old
one did.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from miscore.core.atomic import write_text_atomic
from miscore.core.config import Config
from miscore.core.errors import ConfigError, MiscoreError
from miscore.pipeline.modeldir import (
    CONFIG_FILE,
    ModelDir,
    check_plugins,
    custom_objects,
    ensemble_members,
    load_keras_model,
)
from miscore.pipeline.package import resolve_model

if TYPE_CHECKING:
    import keras

    from miscore.core.plugins import PluginManager

#: the report of what a fine-tuned model was started from, in its model folder
INIT_FILE = "init_from.json"


class SkippedLayer(BaseModel):
    """A layer of the new model that kept its fresh initialisation."""

    model_config = ConfigDict(extra="forbid")

    name: str
    reason: str


class InitReport(BaseModel):
    """``init_from.json``: which weights a fine-tuned model started from."""

    model_config = ConfigDict(extra="forbid")

    init_from: str = Field(description="training.init_from as the config gave it")
    source: str = Field(description="the model folder or package file, as an absolute path")
    layers: int = Field(description="layers of the new model that have weights")
    loaded: list[str] = Field(description="layers that took the trained model's weights")
    skipped: list[SkippedLayer] = Field(description="layers left at their initialisation")
    unused: list[str] = Field(description="layers of the trained model no layer took")
    same_preprocessing: bool = Field(
        description="the new model's preprocessing entries equal the trained model's"
    )

    def summary(self) -> str:
        return f"init_from {self.init_from}: {len(self.loaded)} of {self.layers} layers loaded"


@contextlib.contextmanager
def source_folder(init_from: str, plugins: PluginManager | None) -> Iterator[tuple[ModelDir, Path]]:
    """The model folder ``training.init_from`` names, and where it came from (the folder, or
    the package file): a model folder, a ``.miscore`` package checked and unpacked for the
    time of the ``with``, or an installed plugin's model name (``package.resolve_model``)."""
    try:
        source = resolve_model(Path(init_from).expanduser(), plugins)
    except MiscoreError as exc:
        raise type(exc)(f"training.init_from: {exc}") from None
    with source:
        if ensemble_members(source.path) is not None:
            raise ConfigError(
                f"training.init_from: {init_from} is a cross-validation model; name one of its "
                "fold model folders"
            )
        yield ModelDir(source.path), (source.package or source.path).resolve()


def inherit_preprocessing(
    config: Config,
    log: Callable[[str], None],
    plugins: PluginManager | None = None,
    resumed: ModelDir | None = None,
) -> Config:
    """``config`` with the trained model's preprocessing entries when it sets
    ``training.init_from`` and gives no ``preprocessing`` of its own (the section left out:
    ``preprocessing: []`` is a choice, kept); else ``config``. A resumed run (``resumed``, the
    folder being continued, holding its config) takes them from that folder: ``init_from`` is
    not read again, so it may have moved since."""
    init_from = config.training.init_from
    given = "preprocessing" in config.model_fields_set or config.preprocessing
    if init_from is None or given:
        return config
    if resumed is not None and (resumed.path / CONFIG_FILE).is_file():
        entries = resumed.config().preprocessing
        return config.model_copy(update={"preprocessing": list(entries)})
    with source_folder(init_from, plugins) as (source, _):
        entries = source.config().preprocessing
    log(
        f"init_from {init_from}: preprocessing taken from it "
        f"({', '.join(e.name for e in entries) or 'none'}); give preprocessing in the "
        "config to change it"
    )
    return config.model_copy(update={"preprocessing": list(entries)})


def load_source(source: ModelDir, plugins: PluginManager) -> tuple[keras.Model, Config]:
    """The trained model (Keras safe mode, not compiled) and its config."""
    info = source.info()
    config = source.config()
    check_plugins(info, plugins)
    model = load_keras_model(source.model_file, custom_objects(config, plugins))
    return model, config


def layer_keys(model: keras.Model) -> dict[str, Any]:
    """The model's layers that have weights, by matching key: the name without Keras's
    per-process number, and the rank among the layers of that name (``conv3d#2``)."""
    counts: dict[str, int] = {}
    keyed: dict[str, Any] = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        base = re.sub(r"_\d+$", "", layer.name)
        rank = counts.get(base, 0)
        counts[base] = rank + 1
        keyed[f"{base}#{rank}"] = layer
    return keyed


def _shapes(layer: Any) -> list[tuple[int, ...]]:
    return [tuple(int(n) for n in w.shape) for w in layer.weights]


def transfer_weights(
    target: keras.Model, source: keras.Model
) -> tuple[list[str], list[SkippedLayer], list[str]]:
    """Copy the weights of every ``source`` layer matched by name and shapes into
    ``target``; returns the loaded layer names, the skipped ones and the source's unused ones
    (names as ``target`` and ``source`` call them)."""
    theirs = layer_keys(source)
    loaded: list[str] = []
    skipped: list[SkippedLayer] = []
    used: set[str] = set()
    for key, layer in layer_keys(target).items():
        match = theirs.get(key)
        if match is None:
            skipped.append(SkippedLayer(name=layer.name, reason="no such layer in the source"))
            continue
        used.add(key)
        mine, other = _shapes(layer), _shapes(match)
        if mine != other:
            reason = f"shape differs: {_show(other)} in the source, {_show(mine)} here"
            skipped.append(SkippedLayer(name=layer.name, reason=reason))
            continue
        layer.set_weights(match.get_weights())
        loaded.append(layer.name)
    unused = [layer.name for key, layer in theirs.items() if key not in used]
    return loaded, skipped, unused


def _show(shapes: list[tuple[int, ...]]) -> str:
    return ", ".join("x".join(str(n) for n in shape) for shape in shapes)


def init_from_source(
    model: keras.Model,
    config: Config,
    plugins: PluginManager,
    log: Callable[[str], None],
) -> InitReport:
    """Load ``training.init_from``'s weights into the new ``model``; log and return the
    report. Raises ``ConfigError`` when no layer matches (another architecture)."""
    init_from = config.training.init_from
    if init_from is None:
        raise ValueError("init_from_source needs training.init_from")
    with source_folder(init_from, plugins) as (source, origin):
        trained, source_config = load_source(source, plugins)
        loaded, skipped, unused = transfer_weights(model, trained)
        del trained
    report = InitReport(
        init_from=init_from,
        source=str(origin),
        layers=len(loaded) + len(skipped),
        loaded=loaded,
        skipped=skipped,
        unused=unused,
        same_preprocessing=source_config.preprocessing == config.preprocessing,
    )
    if not loaded:
        raise ConfigError(
            f"training.init_from: {init_from}: none of the {report.layers} layers of this "
            "network matches a layer of that model by name and shape (another architecture?)"
        )
    log(report.summary())
    for layer in skipped:
        log(f"  skipped {layer.name}: {layer.reason}")
    if not report.same_preprocessing:
        log(f"  the preprocessing differs from {init_from}'s")
    return report


def write_report(folder: Path, report: InitReport) -> None:
    """``init_from.json`` in the model folder (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / INIT_FILE, report.model_dump_json(indent=2) + "\n")
