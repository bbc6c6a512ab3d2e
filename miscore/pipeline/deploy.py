"""Deployment export: a trained network for serving, its pipeline written beside it as data.

``export_savedmodel(model_dir, out)`` writes a TensorFlow SavedModel (Keras 3
``model.export(format="tf_saved_model")``: a ``serve`` endpoint and the ``serving_default``
signature TF Serving calls); ``export_onnx(model_dir, out)`` writes ``model.onnx`` (Keras 3
``format="onnx"``, converted by tf2onnx: ``pip install 'miscore[onnx]'``). Both put
``miscore-deploy.json`` in the folder: what a server must do around the network, as data, not
code: the preprocessing steps with all their parameters (each a miscore subfunction, with the
plugin and version that provide it), the sliding window (patch shape, overlap, blending), the
classes, the threshold, the postprocessing, and the dataset's intensity statistics when the
model folder has a fingerprint.

The network maps a batch of preprocessed windows ``(B, *patch, C)`` (channels last, float32)
to class probabilities ``(B, *patch, K)``; a deep-supervision model is exported with its
full-resolution head only, as ``miscore predict`` uses it. A cross-validation ensemble is not
exported: export one of its fold models.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from miscore.core.atomic import atomic_output, write_text_atomic
from miscore.core.errors import InputError, MiscoreError, PipelineError
from miscore.core.version import __version__
from miscore.pipeline.modeldir import (
    FINGERPRINT_FILE,
    ModelDir,
    ModelInfo,
    check_plugins,
    custom_objects,
    ensemble_members,
    load_keras_model,
)
from miscore.pipeline.package import resolve_model

if TYPE_CHECKING:
    import keras

    from miscore.core.config import Config
    from miscore.core.plugins import PluginManager

#: the pipeline description written beside the exported network
DEPLOY_FILE = "miscore-deploy.json"
#: bumped when ``miscore-deploy.json`` changes in a way its readers must know
DEPLOY_FORMAT = 1
#: the exported network's file in an ONNX export
ONNX_FILE = "model.onnx"
ONNX_MISSING = (
    "--format onnx converts the network with tf2onnx, which is not installed: "
    "pip install 'miscore[onnx]' (or pip install tf2onnx)"
)


class DeployStep(BaseModel):
    """A preprocessing or postprocessing step: a miscore component with all its params."""

    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any]
    plugin: str | None = Field(None, description="the plugin that provides it")
    version: str | None = Field(None, description="that plugin's version")


class TensorInfo(BaseModel):
    """The network's input or output: batch first, channels last."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int | None]
    dtype: str = "float32"


class WindowInfo(BaseModel):
    """How windows are cut from the preprocessed image and blended back."""

    model_config = ConfigDict(extra="forbid")

    mode: str = Field(description="patching.mode the model was trained with")
    patch_shape: list[int | None] = Field(description="window shape; None: the image's size")
    slice_axis: int | None = Field(None, description="slice mode: windows are 2D slices")
    overlap: float
    blend: Literal["mean", "gaussian"]
    batch_size: int
    tta: bool = Field(description="mirroring test-time augmentation (mean over all flips)")


class PostprocessingInfo(BaseModel):
    """What happens to the probabilities on the image's own grid."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="how probabilities become a label map")
    threshold: float
    keep_largest: list[int] = Field(description="classes whose largest component alone is kept")
    steps: list[DeployStep] = Field(description="postprocessors run in order after keep_largest")


class DeploySpec(BaseModel):
    """``miscore-deploy.json``: what to do around the exported network, as data."""

    model_config = ConfigDict(extra="forbid")

    format: int = DEPLOY_FORMAT
    miscore_version: str = __version__
    artifact: Literal["tf_saved_model", "onnx"]
    file: str = Field(description="the network, relative to this file's folder")
    signature: str | None = Field(None, description="the SavedModel signature to call")
    input: TensorInfo
    output: TensorInfo
    probabilities: str = Field(description="what the output's last axis holds")
    classes: int = Field(description="classes, background included")
    class_names: list[str] | None = None
    preprocessing: list[DeployStep] = Field(
        description="run in order on the image before windowing; their inverses run in "
        "reverse order on the probabilities (e.g. a crop is padded back)"
    )
    window: WindowInfo
    postprocessing: PostprocessingInfo
    intensity: list[dict[str, Any]] | None = Field(
        None, description="per channel intensity statistics of the training data, if known"
    )


def export_savedmodel(
    model_dir: Path | str, out: Path | str, plugins: PluginManager | None = None
) -> Path:
    """Write ``model_dir`` (a model folder or ``.miscore`` package) as a TensorFlow
    SavedModel folder ``out`` with ``miscore-deploy.json`` inside; returns ``out``."""
    return _export(model_dir, out, "tf_saved_model", plugins)


def export_onnx(
    model_dir: Path | str, out: Path | str, plugins: PluginManager | None = None
) -> Path:
    """Write ``model_dir`` as the folder ``out`` holding ``model.onnx`` and
    ``miscore-deploy.json``; needs tf2onnx (``miscore[onnx]``). Returns ``out``."""
    if importlib.util.find_spec("tf2onnx") is None:
        raise InputError(ONNX_MISSING)
    return _export(model_dir, out, "onnx", plugins)


def read_spec(folder: Path | str) -> DeploySpec:
    """``miscore-deploy.json`` of an exported folder."""
    file = Path(folder) / DEPLOY_FILE
    try:
        return DeploySpec.model_validate_json(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{file}: not a miscore deployment description: {exc}") from None


def _export(
    model_dir: Path | str,
    out: Path | str,
    artifact: Literal["tf_saved_model", "onnx"],
    plugins: PluginManager | None,
) -> Path:
    from miscore.core.plugins import PluginManager

    plugins = plugins or PluginManager()
    out = Path(out)
    _refuse_other_folder(out)
    with _model_folder(model_dir, plugins) as folder:
        info, config = folder.info(), folder.config()
        check_plugins(info, plugins, config)
        model = serving_model(load_keras_model(folder.model_file, custom_objects(config, plugins)))
        spec = deploy_spec(folder, info, config, plugins, model, artifact)
    with atomic_output(out) as temp:
        temp.mkdir()
        target = temp / ONNX_FILE if artifact == "onnx" else temp
        try:
            model.export(
                str(target), format=artifact, verbose=False, input_signature=_signature(model)
            )
        except MiscoreError:
            raise
        except Exception as exc:  # the converter's own errors: say which network and format
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PipelineError(f"{model_dir}: cannot export as {artifact}: {first}") from None
        if artifact == "onnx":
            spec = _onnx_names(spec, target)
        write_text_atomic(temp / DEPLOY_FILE, spec.model_dump_json(indent=2) + "\n")
    return out


@contextmanager
def _model_folder(model_dir: Path | str, plugins: PluginManager) -> Iterator[ModelDir]:
    """The model folder of a folder or package; a cross-validation ensemble is refused."""
    with resolve_model(model_dir, plugins) as source:
        if ensemble_members(source.path) is not None:
            raise InputError(
                f"{model_dir}: a cross-validation ensemble; export one of its fold models "
                "(a served network is one network)"
            )
        yield ModelDir(source.path)


def _refuse_other_folder(out: Path) -> None:
    """``out`` may be new, empty or an earlier export (replaced whole); nothing else."""
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / DEPLOY_FILE).is_file()):
        raise InputError(
            f"{out}: exists and is not a miscore deployment export; choose another --out"
        )


def serving_model(model: keras.Model) -> keras.Model:
    """The network to serve: a deep-supervision model's full-resolution head only."""
    if len(model.outputs) == 1:
        return model
    import keras

    return keras.Model(model.inputs, model.outputs[0], name=model.name)


def deploy_spec(
    folder: ModelDir,
    info: ModelInfo,
    config: Config,
    plugins: PluginManager,
    model: keras.Model,
    artifact: Literal["tf_saved_model", "onnx"],
) -> DeploySpec:
    """``miscore-deploy.json`` of the model folder whose network is ``model``."""
    registry = plugins.registry
    versions = {(r.kind, r.name): (r.plugin, r.version) for r in info.components}

    def step(kind: str, spec: Any, where: str) -> DeployStep:
        component = registry.create(kind, spec, where)
        plugin, version = versions.get((kind, spec.name), (None, None))
        params = component.params.model_dump(mode="json")
        return DeployStep(name=spec.name, params=params, plugin=plugin, version=version)

    input_shape = [None, *info.input_shape]
    output_shape = [None if n is None else int(n) for n in model.output_shape]
    channels = output_shape[-1]
    inference, patching = config.inference, config.patching
    spatial = list(info.input_shape[:-1])
    return DeploySpec(
        artifact=artifact,
        file="." if artifact == "tf_saved_model" else ONNX_FILE,
        signature="serving_default" if artifact == "tf_saved_model" else None,
        input=TensorInfo(name=model.inputs[0].name, shape=input_shape),
        output=TensorInfo(name="output_0", shape=output_shape),  # the signature's key
        probabilities=(
            "sigmoid: the foreground's probability (one channel)"
            if channels == 1
            else "softmax: one probability per class, background first"
        ),
        classes=info.n_classes,
        class_names=config.data.class_names,
        preprocessing=[
            step("subfunction", s, f"preprocessing[{i}]")
            for i, s in enumerate(config.preprocessing)
        ],
        window=WindowInfo(
            mode=patching.mode,
            patch_shape=spatial,
            slice_axis=patching.slice_axis if patching.mode == "slice" else None,
            overlap=inference.overlap,
            blend=inference.blend,
            batch_size=inference.batch_size,
            tta=inference.tta,
        ),
        postprocessing=PostprocessingInfo(
            label=(
                f"foreground where the probability exceeds {inference.threshold}"
                if channels == 1
                else "argmax over the classes of the blended probabilities"
            ),
            threshold=inference.threshold,
            keep_largest=inference.largest_component_classes(info.n_classes),
            steps=[
                step("postprocessor", p, f"inference.postprocessing[{i}]")
                for i, p in enumerate(inference.postprocessing)
            ],
        ),
        intensity=_intensity(folder.path / FINGERPRINT_FILE),
    )


def _signature(model: keras.Model) -> list[Any]:
    """The served input, batch first (given, as the ONNX export refuses a model that was
    loaded but never called)."""
    import tensorflow as tf

    return [tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, model.inputs[0].name)]


def _onnx_names(spec: DeploySpec, file: Path) -> DeploySpec:
    """``spec`` with the input and output names the converter gave the ONNX graph."""
    onnx = importlib.import_module("onnx")  # installed with tf2onnx
    graph = onnx.load(str(file)).graph
    tensors = {
        "input": spec.input.model_copy(update={"name": graph.input[0].name}),
        "output": spec.output.model_copy(update={"name": graph.output[0].name}),
    }
    return spec.model_copy(update=tensors)


def _intensity(file: Path) -> list[dict[str, Any]] | None:
    """The fingerprint's per-channel intensity statistics, when the model folder has one."""
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    intensity = data.get("intensity") if isinstance(data, dict) else None
    return intensity if isinstance(intensity, list) else None
