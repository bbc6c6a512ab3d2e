"""A trained model's folder: everything ``miscore predict MODEL_DIR INPUT`` needs.

Layout::

    model.keras            the model to predict with (the best epoch when validating)
    config.yaml            the resolved config: every component with all its params
    miscore.json           format, miscore and plugin versions, every component used (with
                           its plugin and version), shapes, classes
    fingerprint.json       the dataset fingerprint, when it was computed
    history.tsv            every metric per epoch (MIScnn's fitting-evaluation log)
    curves.png             the learning curves
    checkpoints/last.keras the last finished epoch with its optimizer state (for --resume)
    checkpoints/state.json the epoch and best value the resume continues from

Models are loaded with Keras safe mode: a model that carries code (a Lambda layer) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from miscore.core.atomic import atomic_output, write_text_atomic
from miscore.core.config import Config, load_config
from miscore.core.errors import ComponentNotFoundError, InputError
from miscore.core.plugins import DISABLE_ENV
from miscore.core.version import __version__

if TYPE_CHECKING:
    import keras

    from miscore.core.plugins import PluginManager

#: Bumped when the folder's layout changes in a way older miscore versions cannot read.
FORMAT = 1
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
INFO_FILE = "miscore.json"
FINGERPRINT_FILE = "fingerprint.json"
HISTORY_FILE = "history.tsv"
CURVES_FILE = "curves.png"
CHECKPOINTS = "checkpoints"
LAST_FILE = "last.keras"
STATE_FILE = "state.json"


class ComponentRecord(BaseModel):
    """Which plugin provided a component the model was made with.

    ``kind`` is a component kind (``io``, ``layout``, ``subfunction``, ``augmentation``,
    ``architecture``, ``loss``, ``lr_schedule``, ``callback``, ``postprocessor``,
    ``evaluator``...); folders written before every kind was recorded list only the
    architecture, loss and subfunctions, and read as they are.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str
    name: str
    plugin: str
    version: str


class ModelInfo(BaseModel):
    """``miscore.json``: what a model folder needs to be used again."""

    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT
    miscore_version: str = __version__
    plugins: dict[str, str] = Field(default_factory=dict)
    components: list[ComponentRecord] = Field(default_factory=list)
    input_shape: list[int | None]
    n_classes: int
    epochs_trained: int = 0
    training_cases: list[str] = Field(default_factory=list)
    validation_cases: list[str] = Field(default_factory=list)


class ModelDir:
    """Paths and reading of a model folder."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def last_checkpoint(self) -> Path:
        return self.path / CHECKPOINTS / LAST_FILE

    @property
    def state_file(self) -> Path:
        return self.path / CHECKPOINTS / STATE_FILE

    @property
    def history_file(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def curves_file(self) -> Path:
        return self.path / CURVES_FILE

    def info(self) -> ModelInfo:
        """Read ``miscore.json``; refuse folders that are not model folders or are too new."""
        file = self.path / INFO_FILE
        if not self.path.is_dir():
            raise InputError(f"{self.path}: no such model folder")
        if not file.is_file():
            raise InputError(f"{self.path}: not a miscore model folder ({INFO_FILE} is missing)")
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{file}: unreadable: {exc}") from None
        if isinstance(raw, dict) and isinstance(raw.get("format"), int) and raw["format"] > FORMAT:
            raise InputError(
                f"{self.path}: written by a newer miscore ({raw.get('miscore_version')}, "
                f"format {raw['format']}); upgrade miscore to use it"
            )
        try:
            return ModelInfo.model_validate(raw)
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"]
            raise InputError(f"{file}: not a valid model description: {problem}") from None

    def config(self) -> Config:
        file = self.path / CONFIG_FILE
        if not file.is_file():
            raise InputError(f"{self.path}: {CONFIG_FILE} is missing; the model folder is broken")
        return load_config(file)

    def write_config(self, config: Config) -> None:
        """Replace the stored config (atomically), e.g. with decided inference settings."""
        write_text_atomic(self.path / CONFIG_FILE, config.to_yaml())

    def write_metadata(
        self, config: Config, info: ModelInfo, fingerprint: dict[str, Any] | None = None
    ) -> None:
        """Write the config, ``miscore.json`` and the fingerprint (each atomically)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path / CONFIG_FILE, config.to_yaml())
        write_text_atomic(self.path / INFO_FILE, info.model_dump_json(indent=2) + "\n")
        if fingerprint is not None:
            write_text_atomic(
                self.path / FINGERPRINT_FILE, json.dumps(fingerprint, indent=2, default=str)
            )


#: the kinds of recorded components a prediction needs (the others made the model: readers,
#: augmentations, the loss, schedules, callbacks, evaluators; the model is loaded without
#: compiling, so its loss is never built); postprocessors while the config lists them
PREDICTION_KINDS = frozenset({"architecture", "subfunction"})


def check_plugins(info: ModelInfo, plugins: PluginManager, config: Config | None = None) -> None:
    """Raise a clear error when a component that predictions need is missing:
    ``PREDICTION_KINDS``, and the postprocessors ``config`` still lists. The error says
    whether its plugin is installed but failed to load (naming the distribution and the
    reason) or is not installed."""
    registry = plugins.registry
    listed = {p.name for p in config.inference.postprocessing} if config is not None else set()
    for record in info.components:
        wanted = record.kind in PREDICTION_KINDS or (
            record.kind == "postprocessor" and record.name in listed
        )
        if not wanted:
            continue
        try:
            registry.info(record.kind, record.name)
        except ComponentNotFoundError:
            needs = (
                f"this model needs the {record.kind} {record.name!r} of plugin "
                f"{record.plugin!r} (version {record.version})"
            )
            failed = [f for f in registry.failures if f.plugin == record.plugin]
            if failed:
                reasons = "; ".join(str(f) for f in failed)
                raise InputError(f"{needs}: {reasons}; run `miscore plugins` for details") from None
            if record.plugin in plugins.disabled:
                raise InputError(
                    f"{needs}: the plugin is disabled ({DISABLE_ENV}); enable it"
                ) from None
            raise InputError(
                f"{needs}: it is not installed; install the package that provides the miscore "
                f"plugin {record.plugin!r}"
            ) from None


def custom_objects(config: Config, plugins: PluginManager) -> dict[str, Any]:
    """The Keras objects the model's architecture and loss plugins provide."""
    registry = plugins.registry
    objects: dict[str, Any] = {}
    architecture = registry.create("architecture", config.model.architecture_entry)
    objects.update(architecture.custom_objects())
    if config.model.loss_entry.name in registry.names("loss"):
        loss = registry.create("loss", config.model.loss)
        objects.update(loss.custom_objects())
    return objects


def load_keras_model(path: Path, objects: dict[str, Any], compile: bool = False) -> keras.Model:
    """Load a ``.keras`` file in safe mode; errors name the file and the reason."""
    import keras

    if not path.is_file():
        raise InputError(f"{path}: missing; the model folder is incomplete")
    import zipfile

    if not zipfile.is_zipfile(path):  # Keras would say "file not found" for a damaged file
        raise InputError(
            f"{path}: cannot load the model: not a .keras file (damaged or truncated?)"
        )
    try:
        return keras.models.load_model(
            path, custom_objects=objects, compile=compile, safe_mode=True
        )
    except ValueError as exc:
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text:
            raise InputError(
                f"{path}: refused: the model carries Python code (e.g. a Lambda layer), which "
                "safe mode does not load"
            ) from None
        raise InputError(f"{path}: cannot load the model: {text.splitlines()[0]}") from None
    except (OSError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: cannot load the model: {exc}") from None


def save_keras_model(model: keras.Model, path: Path) -> Path:
    """Save atomically (Keras infers the format from the ``.keras`` suffix, which we keep)."""
    with atomic_output(path) as temp:
        model.save(temp)
    return path


# --- a cross-validation folder: its fold models are an ensemble --------------------------

#: the marker a finished cross-validation folder holds, listing its fold model folders
CROSSVAL_FILE = "crossval.json"
#: bumped when ``crossval.json`` changes
CROSSVAL_FORMAT = 1


class EnsembleManifest(BaseModel):
    """``crossval.json``: the fold models of a finished cross-validation folder."""

    model_config = ConfigDict(extra="forbid")

    format: int = CROSSVAL_FORMAT
    models: list[str] = Field(description="fold model folders, relative to the CV folder")


def ensemble_members(folder: Path | str) -> list[Path] | None:
    """The fold model folders when ``folder`` is a cross-validation folder, else None."""
    folder = Path(folder)
    marker = folder / CROSSVAL_FILE
    if not marker.is_file():
        return None
    try:
        manifest = EnsembleManifest.model_validate_json(marker.read_text(encoding="utf-8"))
    except ValidationError as exc:
        message = exc.errors()[0]["msg"]
        raise InputError(f"{marker}: not a cross-validation marker: {message}") from None
    if not manifest.models:
        raise InputError(f"{marker}: lists no fold models")
    return [folder / m for m in manifest.models]
