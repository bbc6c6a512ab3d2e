"""The Python API for embedding miscore in your own code, in a few lines::

    import miscore

    data = miscore.open_dataset("data/")                       # any supported layout
    pipeline = miscore.Pipeline(classes=3, patch_shape=(64, 64, 64), epochs=50)
    model = pipeline.train(data, out="model")                   # writes the model folder
    label = model.predict("new_case.nii.gz")                    # a Volume on the input's grid
    model.predict("test_folder/", out="predictions/")           # files, as `miscore predict`
    report = pipeline.cross_validate(data, out="cv", folds=3)   # per-case, per-class metrics
    model = miscore.load_model("model")                         # later, elsewhere

Component objects are accepted wherever a name is (a Keras loss, a ``Subfunction``
instance, a function ``build(input_shape, n_classes) -> keras.Model``): they are registered
for this pipeline's session. A model trained with such objects can be used in the same
process; to reload it elsewhere, package the objects as a plugin.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from miscore.core.components import BASES, REGISTRATION_HOOKS, Architecture, Component, Loss
from miscore.core.config import Config, load_config, parse_config
from miscore.core.errors import ConfigError
from miscore.core.hookspecs import hookimpl
from miscore.core.plugins import PluginManager
from miscore.core.volume import Volume
from miscore.data.dataset import Dataset
from miscore.pipeline.crossval import CrossValidationReport, cross_validate
from miscore.tools.cachebuild import BuildResult

#: keyword -> (config section, field) for Pipeline(**overrides)
SHORTCUTS: dict[str, tuple[str, str]] = {
    "classes": ("data", "classes"),
    "class_names": ("data", "class_names"),
    "layout": ("data", "layout"),
    "patch_shape": ("patching", "patch_shape"),
    "patching": ("patching", "mode"),
    "overlap": ("inference", "overlap"),
    "epochs": ("training", "epochs"),
    "batch_size": ("training", "batch_size"),
    "learning_rate": ("training", "learning_rate"),
    "validation_split": ("training", "validation_split"),
    "seed": ("training", "seed"),
    "workers": ("training", "workers"),
    "tta": ("inference", "tta"),
}
COMPONENT_FIELDS = ("preprocessing", "augmentation", "architecture", "loss")

_counter = itertools.count()


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def open_dataset(
    path: Path | str, layout: str = "auto", plugins: PluginManager | None = None
) -> Dataset:
    """The cases of a dataset folder (MSD, KiTS-style case folders, DICOM, 2D, files)."""
    plugins = plugins or PluginManager()
    return Dataset.discover(path, plugins.registry, layout)


def synthesize(
    out: Path | str,
    cases: int = 10,
    shape: Sequence[int] = (64, 64, 64),
    classes: int = 3,
    *,
    layout: str = "msd",
    fmt: str = "nifti",
    seed: int = 0,
    oblique: bool = False,
    plugins: PluginManager | None = None,
) -> Dataset:
    """Write a synthetic phantom dataset (as ``miscore synth``) and return it, discovered."""
    from miscore.tools.synth import write_dataset

    plugins = plugins or PluginManager()
    write_dataset(
        out,
        plugins.registry,
        n_cases=cases,
        shape=shape,
        classes=classes,
        layout=layout,  # type: ignore[arg-type]
        fmt=fmt,  # type: ignore[arg-type]
        seed=seed,
        oblique=oblique,
    )
    return Dataset.discover(out, plugins.registry)


class _SessionComponents:
    """A plugin holding the component objects given to one Pipeline."""

    def __init__(self) -> None:
        self.classes: dict[str, list[type[Component]]] = {kind: [] for kind in BASES}
        self._code = hashlib.sha256()

    def version(self) -> str:
        """``0+session.<hash>``: the hash of the code behind the objects given, so that a
        cache entry made with one session step is not served to an edited or another one
        (their names, ``python_<kind>_<n>``, repeat from run to run)."""
        return f"0+session.{self._code.hexdigest()[:12]}"

    def plugin_name(self) -> str:
        """``session_<hash>``: the name cache keys record this plugin under; like the
        version, the same from run to run of the same code."""
        return f"session_{self._code.hexdigest()[:12]}"

    def _note_code(self, name: str, code: object) -> None:
        """Hash ``code``'s identity and source: its module's file (helpers next to it
        count), else its own source; code without either (typed at a plain Python prompt)
        gets a token of this run, so nothing cached with it is reused by another run."""
        target = code if inspect.isclass(code) or inspect.isfunction(code) else type(code)
        module = getattr(target, "__module__", "?")
        qualname = getattr(target, "__qualname__", type(target).__qualname__)
        self._code.update(f"{name}\0{module}\0{qualname}\0".encode())
        try:
            file = inspect.getsourcefile(target)
            if file is not None and os.path.isfile(file):
                self._code.update(Path(file).read_bytes())
                return
            self._code.update(inspect.getsource(target).encode())
        except (OSError, TypeError):
            self._code.update(f"run {os.getpid()} {time.time_ns()}".encode())

    def add(self, kind: str, obj: Any) -> str:
        name = f"python_{kind}_{next(_counter)}"
        base = BASES[kind]
        self._note_code(name, obj)
        if isinstance(obj, base):
            bound_params = obj.params
            parent: type[Component] = type(obj)

            def init(self: Component, params: Any = None, **kwargs: Any) -> None:
                parent.__init__(self, bound_params)

            cls = type(f"Session{parent.__name__}", (parent,), {"name": name, "__init__": init})
        elif kind == "loss":
            cls = type("SessionLoss", (Loss,), {"name": name, "build": lambda self, n: obj})
        elif kind == "architecture" and callable(obj):

            def build(self: Architecture, input_shape: Any, n_classes: int) -> Any:
                return obj(input_shape, n_classes)

            cls = type("SessionArchitecture", (Architecture,), {"name": name, "build": build})
        else:
            raise ConfigError(
                f"{kind}: {type(obj).__name__} is not a {base.__name__}; give a name, a "
                f"{{name, ...params}} mapping or a {base.__name__} instance"
            )
        self.classes[kind].append(cls)
        return name


def _make_hook(kind: str) -> Callable[[Any], list[type[Component]]]:
    def hook(self: _SessionComponents) -> list[type[Component]]:
        return self.classes[kind]

    return hook


for _kind, _hook_name in REGISTRATION_HOOKS.items():
    setattr(_SessionComponents, _hook_name, hookimpl(_make_hook(_kind)))


class Pipeline:
    """A configuration plus the plugins it runs with: train, cross-validate, predict.

    Args:
        config: a ``Config``, a mapping as in YAML, or None for the defaults.
        plugins: a ``PluginManager``; a new one (every installed plugin) when None.
        **overrides: shortcuts for common fields (``classes``, ``patch_shape``, ``epochs``,
            ``batch_size``, ``learning_rate``, ``validation_split``, ``seed``, ``workers``,
            ``patching``, ``overlap``, ``tta``, ``layout``) and the components
            (``preprocessing``, ``augmentation`` — a list or ``"default"`` —,
            ``architecture``, ``loss``) as names, ``{name, ...params}`` mappings or objects.
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any] | None = None,
        *,
        plugins: PluginManager | None = None,
        **overrides: Any,
    ) -> None:
        self.plugins = plugins or PluginManager()
        self._session = _SessionComponents()
        data: dict[str, Any] = (
            config.model_dump(mode="json") if isinstance(config, Config) else dict(config or {})
        )
        left_out = isinstance(config, Config) and "preprocessing" not in config.model_fields_set
        if left_out and not data.get("preprocessing"):  # training.init_from then reuses the
            data.pop("preprocessing", None)  # trained model's (docs/sharing.md#fine-tuning)
        for key, value in overrides.items():
            if key in COMPONENT_FIELDS:
                self._set_component(data, key, value)
            elif key in SHORTCUTS:
                section, field = SHORTCUTS[key]
                data.setdefault(section, {})[field] = (
                    list(value) if isinstance(value, tuple) else value
                )
            else:
                known = sorted([*SHORTCUTS, *COMPONENT_FIELDS])
                raise ConfigError(f"Pipeline: unknown option {key!r}; options: {', '.join(known)}")
        if any(self._session.classes.values()):
            self.plugins.register(
                self._session, self._session.plugin_name(), version=self._session.version()
            )
        patching = data.get("patching", {})
        if patching.get("patch_shape") is not None and "mode" not in patching:
            patching["mode"] = "random"
        self.config = parse_config(data, "Pipeline")

    @classmethod
    def from_config(cls, path: Path | str, plugins: PluginManager | None = None) -> Pipeline:
        """A pipeline from a YAML config file."""
        return cls(load_config(path), plugins=plugins)

    def _set_component(self, data: dict[str, Any], key: str, value: Any) -> None:
        kinds = {
            "preprocessing": "subfunction",
            "augmentation": "augmentation",
            "architecture": "architecture",
            "loss": "loss",
        }
        kind = kinds[key]
        if key == "augmentation" and value == "default":
            value = ["default"]  # the plugins' default set (miscore_defaults)

        def entry(item: Any) -> Any:
            if isinstance(item, (str, Mapping)):
                return item
            return self._session.add(kind, item)

        if key in ("preprocessing", "augmentation"):
            data[key] = [entry(item) for item in value]
        else:
            data.setdefault("model", {})[key] = entry(value)

    def train(
        self,
        data: Dataset | Path | str,
        out: Path | str = "model",
        *,
        epochs: int | None = None,
        resume: bool = False,
        cache: str | None = None,
        log: Callable[[str], None] = _log,
    ) -> Model:
        """Train on the labelled cases of ``data``; returns the trained ``Model``."""
        from miscore.pipeline.training import train

        root = data.root if isinstance(data, Dataset) else data
        train(
            self.config,
            root,
            out,
            plugins=self.plugins,
            epochs=epochs,
            resume=resume,
            cache=cache,
            log=log,
        )
        return load_model(out, plugins=self.plugins)

    def build_cache(
        self,
        data: Dataset | Path | str,
        *,
        cache: str | None = None,
        scheduler: str | None = None,
        log: Callable[[str], None] = _log,
    ) -> list[BuildResult]:
        """Preprocess the labelled cases of ``data`` into the cache (as ``miscore cache
        build``), here or on Dask: ``scheduler="local:4"`` or ``"tcp://host:8786"`` (needs
        ``miscore[dask]``). Returns one result a case; raises naming the failed cases."""
        from miscore.tools.cachebuild import build_cache

        if scheduler is not None and any(self._session.classes.values()):
            raise ConfigError(
                "build_cache(scheduler=...): components given as Python objects cannot reach "
                "Dask workers; package them as a plugin, or build without a scheduler"
            )
        root = data.root if isinstance(data, Dataset) else data
        return build_cache(
            self.config,
            root,
            cache,
            plugins=self.plugins,
            scheduler=scheduler,
            source="Pipeline",
            log=log,
        )

    def cross_validate(
        self,
        data: Dataset | Path | str,
        out: Path | str = "crossval",
        **options: Any,
    ) -> CrossValidationReport:
        """Train and evaluate every fold; see ``miscore.pipeline.crossval.cross_validate``
        for the ``options`` (scheme, folds, epochs, cache, metrics, resume...)."""
        root = data.root if isinstance(data, Dataset) else data
        return cross_validate(self.config, root, out, plugins=self.plugins, **options)


class Model:
    """A trained model: predict files, folders, datasets or Volumes."""

    def __init__(self, predictor: Any, source: Any = None) -> None:
        self.predictor = predictor
        #: where it was loaded from (a ``ModelSource``: a package's private folder lives
        #: as long as this model)
        self.source = source

    def close(self) -> None:
        """Remove the private folder a package was unpacked into (nothing for a folder)."""
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def config(self) -> Config:
        return self.predictor.config  # type: ignore[no-any-return]

    @property
    def keras_model(self) -> Any:
        """The Keras model inside."""
        return self.predictor.model

    def predict(
        self,
        source: Volume | Path | str | Sequence[Path | str],
        out: Path | str | None = None,
        *,
        scheduler: str | None = None,
        **options: Any,
    ) -> Any:
        """Predict label maps.

        With ``out``: ``source`` is one or more files/folders and the predictions are
        written there (as ``miscore predict``); returns the written paths. Without ``out``:
        ``source`` is a Volume or one image file, and the label Volume is returned.
        ``scheduler`` (with ``out``): predict on Dask, one task a case, ``"local:2"`` or
        ``"tcp://host:8786"`` (needs ``miscore[dask]``); each worker loads the model folder.
        """
        from miscore.core.volume import Case
        from miscore.pipeline.inference import find_inputs, predict

        if scheduler is not None and out is None:
            raise ConfigError("predict: scheduler= writes files; give out= too")
        if out is not None:
            if isinstance(source, Volume):
                raise ConfigError("predict: give files or folders with out=, or a Volume without")
            inputs = [source] if isinstance(source, (str, Path)) else list(source)
            if scheduler is not None:
                from miscore.tools.scaleout import predict_on_dask

                return predict_on_dask(
                    self.predictor.model_dir,
                    inputs,
                    out,
                    scheduler=scheduler,
                    plugins=self.predictor.plugins,
                    **options,
                )
            return predict(
                self.predictor.model_dir,
                inputs,
                out,
                plugins=self.predictor.plugins,
                **options,
            )
        if isinstance(source, Volume):
            case = Case("input", source)
        else:
            [item] = find_inputs([Path(str(source))], self.predictor.plugins)
            case = item.read()
        label, _ = self.predictor.predict_case(case, **options)
        return label

    def export(self, out: Path | str, **card: Any) -> Path:
        """Write this model as one ``.miscore`` package (see ``export_model``); a model
        loaded from a package keeps that package's card unless ``card`` says otherwise."""
        manifest = getattr(self.source, "manifest", None)
        if manifest is not None:
            from miscore.pipeline.package import CardText

            written = manifest.card.model_dump(include=set(CardText.model_fields))
            card = {**written, **card}
        return export_model(self.predictor.model_dir, out, **card)


def load_model(model: Path | str, plugins: PluginManager | None = None) -> Model:
    """A model folder written by ``miscore train``, a cross-validation folder written by
    ``miscore cv`` or a ``.miscore`` package (checked, unpacked into a private temporary
    folder); loaded with Keras safe mode."""
    from miscore.pipeline.inference import load_model as load_predictor
    from miscore.pipeline.package import resolve_model

    plugins = plugins or PluginManager()
    source = resolve_model(model, plugins)
    try:
        return Model(load_predictor(source.path, plugins), source)
    except BaseException:
        source.close()
        raise


def export_model(model_dir: Path | str, out: Path | str, **card: Any) -> Path:
    """Write a model (or cross-validation) folder as one ``.miscore`` package.

    Args:
        card: the model card's written fields: ``name``, ``task``, ``description``,
            ``intended_input``, ``training_data``, ``license``, ``authors``, ``references``.
            The classes, shapes, spacing and cross-validation metrics come from the folder.
    """
    from pydantic import ValidationError

    from miscore.pipeline.package import CardText, export_package

    try:
        text = CardText.model_validate(card)
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise ConfigError(
            f"export_model: card field {problem['loc'][0]}: {problem['msg']}"
        ) from None
    return export_package(model_dir, out, text)
