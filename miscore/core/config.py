"""The configuration: one YAML file, validated by pydantic, errors naming the field path.

Component entries (``preprocessing``, ``augmentation``, ``model.architecture``, ...) are
``{name: ..., **params}``; the kernel validates ``params`` with the component's own ``Params``
model once plugins are loaded (``check_components``), so errors read
``preprocessing[1].clip.min: Input should be a valid number``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from miscore.core.errors import ComponentNotFoundError, ConfigError
from miscore.core.registry import Registry, build_steps, format_validation_error

#: the augmentation entry that stands for the plugins' default set (``miscore_defaults``)
DEFAULT = "default"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ComponentSpec(BaseModel):
    """A component entry: ``name`` plus that component's parameters."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="registered component name, e.g. 'zscore' or 'unet'")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataConfig(Section):
    """Where the data is and what it holds."""

    path: str | None = Field(None, description="dataset folder; the CLI's --data overrides it")
    layout: str = Field(
        "auto",
        description="dataset layout: 'auto' detects it from the folder, or an installed "
        "layout's name (bundled: msd, cases, dicom, image2d, files)",
    )
    io: str | None = Field(None, description="IO component for every file; None: by file name")
    classes: int = Field(2, ge=2, description="number of classes, background included")
    class_names: list[str] | None = Field(None, description="a name per class, background first")
    channels: int | None = Field(None, ge=1, description="image channels; None: from the data")

    @model_validator(mode="after")
    def _names_match(self) -> DataConfig:
        if self.class_names is not None and len(self.class_names) != self.classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names for {self.classes} classes"
            )
        return self


class PatchingConfig(Section):
    """How training samples and inference windows are cut from a (preprocessed) volume."""

    mode: Literal["full", "slice", "grid", "random"] = Field(
        "random", description="full image, 2D slices, a grid of patches, or random crops"
    )
    patch_shape: list[int] | None = Field(
        None, description="spatial patch shape (voxels); required for grid and random"
    )
    overlap: float = Field(0.5, ge=0.0, lt=1.0, description="grid overlap, fraction of a patch")
    slice_axis: int = Field(2, ge=0, le=2, description="axis 2D slices are taken along")
    skip_blanks: bool = Field(False, description="training: skip patches holding only background")
    foreground_ratio: float = Field(
        0.33, ge=0.0, le=1.0, description="training: share of patches forced to hold foreground"
    )
    foreground_class: int | None = Field(
        None, ge=1, description="class the forced patches must hold; None: any foreground"
    )
    samples_per_case: int = Field(1, ge=1, description="training patches per case per epoch")
    sampler: ComponentSpec | None = Field(
        None,
        description="training: the sampler choosing random and slice windows; None: the "
        "plugins' default (bundled: foreground, which follows foreground_ratio/_class)",
    )

    @model_validator(mode="after")
    def _shape_needed(self) -> PatchingConfig:
        if self.mode in ("grid", "random") and self.patch_shape is None:
            raise ValueError(f"patching mode {self.mode!r} needs patch_shape")
        if self.patch_shape is not None and any(n < 1 for n in self.patch_shape):
            raise ValueError(f"patch_shape must be positive; got {self.patch_shape}")
        return self


class ModelConfig(Section):
    """The network and what it is trained against."""

    architecture: ComponentSpec | None = Field(
        None, description="the network; None: the installed plugins' default (bundled: unet)"
    )
    loss: ComponentSpec | None = Field(
        None, description="the training loss; None: the plugins' default (bundled: tversky)"
    )
    metrics: list[str] = Field(
        default_factory=list, description="Keras metric names logged during training"
    )

    @property
    def architecture_entry(self) -> ComponentSpec:
        """``architecture`` once defaults are applied (``apply_defaults``)."""
        return _applied(self.architecture, "architecture")

    @property
    def loss_entry(self) -> ComponentSpec:
        """``loss`` once defaults are applied (``apply_defaults``)."""
        return _applied(self.loss, "loss")


def _applied(spec: ComponentSpec | None, field: str) -> ComponentSpec:
    if spec is None:
        raise ConfigError(
            f"model.{field} is not set: apply the plugins' defaults first "
            "(miscore.apply_defaults(config, registry))"
        )
    return spec


class TrainingConfig(Section):
    """The fit loop."""

    epochs: int = Field(50, ge=1, description="passes of steps_per_epoch batches")
    batch_size: int = Field(2, ge=1, description="patches per training step")
    steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="training steps (batches) per epoch; None: one pass over the cases' "
        "samples, so few cases mean few steps (planned configs set it: nnU-Net uses 250)",
    )
    learning_rate: float = Field(1e-3, gt=0, description="the optimizer's initial rate")
    lr_schedule: ComponentSpec | None = Field(
        None,
        description="the rate of every step, a registered lr_schedule (bundled: poly falls as "
        "(1 - step / all steps) ** 0.9 to 0 at the last step, nnU-Net's; cosine; constant); "
        "None: the initial rate throughout (reduce_lr_patience may still halve it)",
    )
    callbacks: list[ComponentSpec] = Field(
        default_factory=list,
        description="registered Keras callbacks added to the fit, e.g. "
        "[{name: time_limit, minutes: 60}]",
    )
    optimizer: Literal["adam", "adamw", "sgd"] = Field(
        "adam", description="adam, adamw, or sgd with momentum 0.99"
    )
    validation_split: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of labelled cases held out (seeded) to validate"
    )
    validation_cases: list[str] | None = Field(
        None, description="case ids to validate on (instead of validation_split)"
    )
    seed: int = Field(0, description="seed of every random choice in training")
    early_stopping: int | None = Field(None, ge=1, description="patience in epochs; None: off")
    reduce_lr_patience: int | None = Field(
        None, ge=1, description="halve the rate after this many epochs without progress; None: off"
    )
    mixed_precision: bool = Field(
        False, description="16-bit compute (float16 on GPU, bfloat16 on CPU), float32 weights"
    )
    inference_dice: bool = Field(
        True,
        description="every epoch, Dice of fixed patches (validation cases, else training "
        "cases) predicted in inference mode and in training mode, to show a model that is "
        "good only in training mode (batch normalization)",
    )
    workers: int = Field(1, ge=1, description="processes that sample and augment patches")
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = Field(
        "auto",
        description="auto: MultiWorkerMirroredStrategy when TF_CONFIG names several workers "
        "(miscore train --cluster sets it), else MirroredStrategy when several GPUs are "
        "visible; multi_worker: refuse to start without TF_CONFIG",
    )
    devices: list[str] | None = Field(
        None, description="devices for MirroredStrategy, e.g. ['/gpu:0', '/gpu:1']"
    )
    init_from: str | None = Field(
        None,
        min_length=1,
        description="fine-tune: start from the weights of this trained model (a model folder, "
        "a .miscore package or an installed model's name); layers are matched by name and "
        "shape, the others (e.g. the output layer when the classes differ) start fresh; its "
        "preprocessing is reused when this config gives none. None: a new model",
    )

    @field_serializer("lr_schedule")
    def _name_when_plain(self, spec: ComponentSpec | None) -> str | dict[str, Any] | None:
        """A schedule without params is written as its name (``lr_schedule: poly``)."""
        if spec is None:
            return None
        return spec.name if not spec.params else {"name": spec.name, **spec.params}

    @model_validator(mode="after")
    def _one_rate_rule(self) -> TrainingConfig:
        schedule = self.lr_schedule
        if schedule is not None and schedule.name != "constant" and self.reduce_lr_patience:
            raise ValueError(
                f"lr_schedule {schedule.name!r} sets the rate of every step; "
                "reduce_lr_patience cannot change it too: leave one of them out"
            )
        return self


class InferenceConfig(Section):
    """Sliding-window prediction and postprocessing."""

    overlap: float = Field(
        0.5, ge=0.0, lt=1.0, description="share of a window its neighbours overlap"
    )
    blend: Literal["mean", "gaussian"] = Field(
        "gaussian", description="weigh window centres more (gaussian) or all voxels equally"
    )
    tta: bool = Field(False, description="mirroring test-time augmentation")
    batch_size: int = Field(1, ge=1, description="windows predicted at once")
    keep_largest: StrictBool | list[Annotated[int, Field(ge=1)]] = Field(
        False,
        description="keep only the largest connected component of a class: true every "
        "foreground class, false none, or a list of class ids; miscore cv decides it from the "
        "validation folds",
    )
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="binary sigmoid threshold")
    postprocessing: list[ComponentSpec] = Field(
        default_factory=list,
        description="registered postprocessors run in order on each label map after "
        "keep_largest, e.g. [{name: remove_small, min_voxels: 50}, fill_holes]",
    )

    @field_validator("keep_largest", mode="before")
    @classmethod
    def _true_false_or_ids(cls, value: Any) -> Any:
        """One clear message instead of one per member of the union; ids sorted, once each."""
        if isinstance(value, bool):
            return value
        ids = value if isinstance(value, list) else None
        if ids is None or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise PydanticCustomError(
                "keep_largest",
                "give true, false or a list of class ids; got {value}",
                {"value": repr(value)},
            )
        if any(i < 1 for i in ids):
            raise PydanticCustomError(
                "keep_largest",
                "class ids start at 1 (0 is the background); got {value}",
                {"value": ids},
            )
        return sorted(set(ids))

    def largest_component_classes(self, classes: int) -> list[int]:
        """The class ids whose largest component is kept, of ``classes`` (background included)."""
        if isinstance(self.keep_largest, bool):
            return list(range(1, classes)) if self.keep_largest else []
        return list(self.keep_largest)


class EvaluationConfig(Section):
    """How ``miscore cv`` scores the test cases of its folds."""

    metrics: list[ComponentSpec] | None = Field(
        None,
        description="registered metrics, the report's columns in order, e.g. [dice, "
        "{name: nsd, tolerance_mm: 2}]; None: the plugins' default set",
    )

    def metric_entries(self) -> list[dict[str, Any]] | None:
        """``metrics`` as ``{name, **params}`` mappings, or None when not set."""
        if self.metrics is None:
            return None
        return [{"name": m.name, **m.params} for m in self.metrics]


class CacheConfig(Section):
    """The zarr cache of preprocessed cases."""

    enabled: bool = Field(True, description="false: preprocess on the fly, nothing on disk")
    path: str | None = Field(
        None, description="store path or URL; --cache and MISCORE_CACHE_DIR override it"
    )
    compression: Literal["zstd", "lz4", "none"] = Field(
        "lz4", description="Blosc codec: lz4 reads fastest, zstd is smaller on disk"
    )
    float16: bool = Field(False, description="store images as float16 (half the size)")
    content_hash: bool = Field(False, description="key inputs by content, not path+size+mtime")


class Config(Section):
    """A complete miscore configuration."""

    version: Literal[1] = 1
    data: DataConfig = Field(default_factory=DataConfig)
    preprocessing: list[ComponentSpec] = Field(default_factory=list)
    patching: PatchingConfig = Field(
        default_factory=lambda: PatchingConfig(mode="full", patch_shape=None)
    )
    augmentation: list[ComponentSpec] = Field(default_factory=list)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_augmentation(cls, data: Any) -> Any:
        """``augmentation: default`` is the list ``[default]``; plugins say what it holds."""
        if isinstance(data, dict) and data.get("augmentation") == "default":
            data = {**data, "augmentation": ["default"]}
        return data

    @field_validator("augmentation")
    @classmethod
    def _default_takes_no_params(cls, entries: list[ComponentSpec]) -> list[ComponentSpec]:
        for entry in entries:
            if entry.name == DEFAULT and entry.params:
                raise ValueError(
                    f"the entry 'default' takes no parameters; got {sorted(entry.params)}: "
                    "list the entries of the default set instead to change them"
                )
        return entries

    @model_validator(mode="after")
    def _keep_largest_classes(self) -> Config:
        """``inference.keep_largest`` may only name foreground classes of ``data.classes``."""
        chosen = self.inference.keep_largest
        wrong = [] if isinstance(chosen, bool) else [c for c in chosen if c >= self.data.classes]
        if wrong:
            problem = PydanticCustomError(
                "keep_largest_class",
                "the foreground classes of data.classes {classes} are 1 to {last}; got {wrong}",
                {"classes": self.data.classes, "last": self.data.classes - 1, "wrong": wrong},
            )
            # raised as a ValidationError so that the message names the field's own path
            raise ValidationError.from_exception_data(
                "Config",
                [InitErrorDetails(type=problem, loc=("inference", "keep_largest"), input=chosen)],
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def parse_config(data: Any, source: str = "config") -> Config:
    """Validate a mapping (as read from YAML); raise ``ConfigError`` naming each bad field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config is a mapping of sections; got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc)}") from None


def load_config(path: Path | str) -> Config:
    """Read and validate a YAML (or JSON) config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: not valid YAML: {problem}") from None
    return parse_config(data, str(path))


def apply_defaults(config: Config, registry: Registry) -> Config:
    """The config with what it left out taken from the plugins' defaults (``miscore_defaults``).

    Fills ``model.architecture``, ``model.loss`` and ``patching.sampler`` when None and
    replaces ``default`` entries of ``augmentation`` by the default set. A config without
    gaps is returned as is; otherwise a validated copy. Raises ``ConfigError`` naming the
    field no plugin fills.
    """
    defaults = registry.defaults
    data = config.model_dump(mode="json")
    changed = False
    for field in ("architecture", "loss"):
        if data["model"][field] is None:
            if field not in defaults:
                raise ConfigError(
                    f"model.{field}: not set, and no installed plugin supplies a default; "
                    "name one in the config"
                )
            data["model"][field] = defaults[field]
            changed = True
    if any(entry.name == DEFAULT for entry in config.augmentation):
        if "augmentation" not in defaults:
            raise ConfigError(
                "augmentation: 'default' is used, but no installed plugin supplies a default set"
            )
        expanded: list[Any] = []
        for entry in data["augmentation"]:
            expanded.extend(defaults["augmentation"] if entry["name"] == DEFAULT else [entry])
        data["augmentation"] = expanded
        changed = True
    if data["patching"]["sampler"] is None and "sampler" in defaults:
        data["patching"]["sampler"] = defaults["sampler"]
        changed = True
    return parse_config(data, "config with the plugins' defaults") if changed else config


def check_components(config: Config, registry: Registry) -> dict[str, Any]:
    """Create every component the config names, validating each one's params.

    Defaults are applied first (``apply_defaults``). Returns the created components: the
    ``preprocessing``, ``augmentation``, ``callbacks``, ``postprocessors`` and ``metrics``
    lists, the ``architecture`` and ``loss`` objects, and ``lr_schedule`` and ``sampler``
    when the config has them. Names ``data.io`` and ``data.layout`` are checked too. Raises
    ``ConfigError``/``ComponentNotFoundError`` with the field path.
    """
    preprocessing = build_steps(config.preprocessing, registry)  # its errors first
    config = apply_defaults(config, registry)
    assert config.model.architecture is not None and config.model.loss is not None
    created: dict[str, Any] = {
        "preprocessing": preprocessing,
        "augmentation": registry.create_each("augmentation", config.augmentation, "augmentation"),
        "architecture": registry.create(
            "architecture", config.model.architecture, "model.architecture"
        ),
        "loss": _loss(config, registry),
    }
    if config.training.lr_schedule is not None:
        created["lr_schedule"] = registry.create(
            "lr_schedule", config.training.lr_schedule, "training.lr_schedule"
        )
    created["callbacks"] = registry.create_each(
        "callback", config.training.callbacks, "training.callbacks"
    )
    created["postprocessors"] = registry.create_each(
        "postprocessor", config.inference.postprocessing, "inference.postprocessing"
    )
    created["metrics"] = registry.create_each(
        "metric", config.evaluation.metrics or [], "evaluation.metrics"
    )
    if config.patching.sampler is not None:
        created["sampler"] = registry.create("sampler", config.patching.sampler, "patching.sampler")
    for field, kind, name in (
        ("data.io", "io", config.data.io),
        ("data.layout", "layout", config.data.layout),
    ):
        if name is not None and name != "auto":
            try:
                registry.get(kind, name)
            except ComponentNotFoundError as exc:
                raise ComponentNotFoundError(f"{field}: {exc}") from None
    return created


def _loss(config: Config, registry: Registry) -> Any:
    """The configured loss component, or None for a Keras built-in loss name."""
    spec = config.model.loss
    assert spec is not None, "apply_defaults fills model.loss"
    if spec.name in registry.names("loss") or spec.params:
        return registry.create("loss", spec, "model.loss")
    import keras  # only for names no plugin registers: is it one of Keras's own?

    try:
        keras.losses.get(spec.name)
    except ValueError:
        return registry.create("loss", spec, "model.loss")  # raises, naming the choices
    return None


def json_schema() -> str:
    """The JSON Schema of the config file, as ``miscore config schema`` prints it."""
    return json.dumps(Config.model_json_schema(), indent=2)
