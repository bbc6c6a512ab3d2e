"""Prediction: sliding windows over the preprocessed volume, blended, mapped back, written.

``load_model(model_dir)`` gives a ``Predictor``; ``predictor.predict_case(case)`` returns the
label map on the case's own grid; ``predict(model_dir, inputs, out)`` writes one file per case
with the input's IO plugin and geometry, so a prediction overlays its image in any viewer.

On the case's grid the label map is postprocessed before it is returned (and written):
``inference.keep_largest`` first, then the ``inference.postprocessing`` components in order.

Memory stays bounded: per-class sums are float32 (``SlidingWindow(accumulate=np.float16)``
halves them; not a config option yet), the argmax runs in slabs, and the final label map is
uint8/uint16; no float64 copy of the whole output is made.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from miscore.core.components import ImageIO, Postprocessor, Subfunction
from miscore.core.config import Config
from miscore.core.errors import InputError, PipelineError
from miscore.core.labels import label_dtype
from miscore.core.volume import Case, Volume
from miscore.data.preprocess import build_steps, postprocess_prediction, preprocess_case
from miscore.pipeline.augmenting import TTATransform, tta_transforms
from miscore.pipeline.modeldir import (
    ModelDir,
    ModelInfo,
    check_plugins,
    custom_objects,
    load_keras_model,
)
from miscore.pipeline.patching import Window, extract_patch, grid_windows, window_region
from miscore.pipeline.postprocessing import keep_largest_component

if TYPE_CHECKING:
    from miscore.core.plugins import PluginManager


def gaussian_importance(patch_shape: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """A window weight that is 1 at the centre and falls off to the borders (nnU-Net's)."""
    weights = np.ones((), np.float32)
    for n in patch_shape:
        x = np.arange(n, dtype=np.float32) - (n - 1) / 2
        sigma = max(n * sigma_scale, 1e-3)
        axis = np.exp(-0.5 * (x / sigma) ** 2).astype(np.float32)
        weights = np.multiply.outer(weights, axis)
    weights = weights / weights.max()
    # never zero: every voxel of a window counts a little
    result: np.ndarray = np.maximum(weights, 1e-3).astype(np.float32)
    return result


@dataclass
class SlidingWindow:
    """Sliding-window prediction of one preprocessed volume.

    Args:
        predict_batch: ``(B, *patch, C) -> (B, *patch, K)`` class probabilities.
        patch_shape: window shape on the volume (1 on the slice axis in slice mode).
        overlap: share of a window its neighbours overlap.
        blend: ``mean`` (equal weights) or ``gaussian`` (centre counts more).
        batch_size: windows predicted at once.
        slice_axis: set in slice mode: windows are 2D slices along this axis.
        tta: test-time transforms (mirroring); their mean is the window's prediction.
        accumulate: dtype of the per-class sums (float32 or float16).
    """

    predict_batch: Callable[[np.ndarray], np.ndarray]
    patch_shape: tuple[int, ...]
    overlap: float = 0.5
    blend: str = "gaussian"
    batch_size: int = 1
    slice_axis: int | None = None
    tta: Sequence[TTATransform] = field(default_factory=tuple)
    accumulate: Any = np.float32

    def windows(self, shape: Sequence[int]) -> list[Window]:
        return grid_windows(shape, self.patch_shape, self.overlap)

    def _model_patch(self, patch: np.ndarray) -> np.ndarray:
        return patch if self.slice_axis is None else np.squeeze(patch, self.slice_axis)

    def _model_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """The model's class probabilities; one sigmoid channel p becomes (1 - p, p), so
        blended scores of binary and multi-class models read the same way."""
        out = np.asarray(self.predict_batch(batch), dtype=np.float32)
        if out.shape[-1] == 1:
            out = np.concatenate([1.0 - out, out], axis=-1)
        return out

    def _predict(self, patches: list[np.ndarray]) -> list[np.ndarray]:
        """Probabilities for each window, mean over the TTA transforms."""
        inputs = [self._model_patch(p) for p in patches]
        if not self.tta:
            return list(self._model_probabilities(np.stack(inputs)))
        total: list[np.ndarray] | None = None
        for transform in self.tta:
            moved = np.stack([np.ascontiguousarray(transform.forward(p)) for p in inputs])
            out = self._model_probabilities(moved)
            back = [transform.inverse(o) for o in out]
            total = back if total is None else [t + b for t, b in zip(total, back, strict=True)]
        assert total is not None
        return [t / np.float32(len(self.tta)) for t in total]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(*spatial, C)`` -> ``(*spatial, K)`` blended class scores (not normalised).

        The scores' argmax is the prediction; divide by their sum over classes for
        probabilities (done by ``probabilities``).
        """
        spatial = image.shape[:-1]
        windows = self.windows(spatial)
        weight = (
            gaussian_importance(self.patch_shape)
            if self.blend == "gaussian"
            else np.ones(self.patch_shape, np.float32)
        )
        scores: np.ndarray | None = None
        for chunk in _chunks(windows, self.batch_size):
            patches = [extract_patch(image, w, 0.0) for w in chunk]
            for window, probs in zip(chunk, self._predict(patches), strict=True):
                if self.slice_axis is not None:
                    probs = np.expand_dims(probs, self.slice_axis)
                if scores is None:
                    scores = np.zeros((*spatial, probs.shape[-1]), self.accumulate)
                in_volume, in_patch = window_region(window, spatial)
                scores[in_volume] += (probs[in_patch] * weight[in_patch][..., None]).astype(
                    self.accumulate
                )
        assert scores is not None
        return scores


def _chunks(items: Sequence[Window], size: int) -> Iterator[list[Window]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def labels_from_scores(scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Class ids ``(*spatial, 1)``: the argmax; for two classes, foreground where its share
    of the blended scores exceeds ``threshold`` (0.5 is the argmax)."""
    if scores.shape[-1] == 2 and threshold != 0.5:
        share = probabilities(scores)[..., 1]
        binary: np.ndarray = (share > threshold).astype(np.uint8)[..., None]
        return binary
    n = scores.shape[-1]
    classes: np.ndarray = np.empty((*scores.shape[:-1], 1), label_dtype(n - 1))
    # argmax in slabs along axis 0: its int64 result for a whole volume would take 8 bytes
    # per voxel (800 MB for 512x512x400), more than the label map it becomes.
    per_row = max(1, int(np.prod(scores.shape[1:])))
    step = max(1, (1 << 22) // per_row)
    for start in range(0, scores.shape[0], step):
        classes[start : start + step, ..., 0] = np.argmax(scores[start : start + step], axis=-1)
    return classes


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Blended scores -> probabilities that sum to 1 over the classes (float32)."""
    total = scores.sum(axis=-1, keepdims=True, dtype=np.float32)
    result: np.ndarray = (scores / np.maximum(total, np.float32(1e-12))).astype(np.float32)
    return result


@dataclass
class Predictor:
    """A trained model with its config and preprocessing chain, ready to predict."""

    model: Any
    config: Config
    info: ModelInfo
    steps: list[Subfunction]
    plugins: PluginManager
    model_dir: Path

    def sliding_window(
        self,
        shape: Sequence[int],
        overlap: float | None = None,
        blend: str | None = None,
        tta: bool | None = None,
    ) -> SlidingWindow:
        """The sliding window for a preprocessed volume of spatial ``shape``."""
        inference = self.config.inference
        patching = self.config.patching
        ndim = len(shape)
        slice_axis = patching.slice_axis if patching.mode == "slice" else None
        model_spatial = self.info.input_shape[:-1]
        patch = [int(n) for n in shape]
        if slice_axis is not None:
            if None not in model_spatial:  # a fixed in-plane patch: tile each slice with it
                patch = [int(n or 0) for n in model_spatial]
                patch.insert(slice_axis, 1)
            patch[slice_axis] = 1
        elif patching.mode != "full" or None not in model_spatial:
            patch = [int(n or 0) for n in model_spatial]
        use_tta = inference.tta if tta is None else tta
        transforms = tta_transforms(ndim if slice_axis is None else 2) if use_tta else []
        model = self.model

        def predict_batch(batch: np.ndarray) -> np.ndarray:
            out = model.predict_on_batch(batch)
            if isinstance(out, (list, tuple)):  # deep supervision: the full-resolution head
                out = out[0]
            return np.asarray(out)

        return SlidingWindow(
            predict_batch,
            tuple(int(n) for n in patch),
            overlap=inference.overlap if overlap is None else overlap,
            blend=inference.blend if blend is None else blend,
            batch_size=inference.batch_size,
            slice_axis=slice_axis,
            tta=transforms,
        )

    def class_scores(
        self,
        image: np.ndarray,
        overlap: float | None = None,
        blend: str | None = None,
        tta: bool | None = None,
    ) -> np.ndarray:
        """``(*spatial, C)`` preprocessed image -> ``(*spatial, K)`` scores (argmax: class)."""
        return self.sliding_window(image.shape[:-1], overlap, blend, tta)(image)

    @functools.cached_property
    def postprocessors(self) -> list[Postprocessor]:
        """The ``inference.postprocessing`` components, in order."""
        return self.plugins.registry.create_each(
            "postprocessor", self.config.inference.postprocessing, "inference.postprocessing"
        )

    def postprocess(
        self, prediction: Volume, keep_largest: bool | list[int] | None = None
    ) -> Volume:
        """A label map on the case's grid after ``inference.keep_largest`` (or the
        ``keep_largest`` given) and then each of ``inference.postprocessing``."""
        inference = self.config.inference
        if keep_largest is not None:
            inference = inference.model_copy(update={"keep_largest": keep_largest})
        kept = inference.largest_component_classes(self.config.data.classes)
        if kept:
            prediction = prediction.with_array(keep_largest_component(prediction.array, kept))
        n_classes = self.info.n_classes
        for postprocessor in self.postprocessors:
            changed = postprocessor.apply(prediction, n_classes)
            if not isinstance(changed, Volume) or changed.array.shape != prediction.array.shape:
                shape = getattr(getattr(changed, "array", None), "shape", type(changed).__name__)
                raise PipelineError(
                    f"postprocessor {postprocessor.name!r} returned {shape}; a postprocessor "
                    f"returns a label Volume of the prediction's shape {prediction.array.shape}"
                )
            array = changed.array.astype(prediction.array.dtype, copy=False)
            prediction = Volume(array, prediction.affine, prediction.meta)
        return prediction

    def predict_case(
        self,
        case: Case,
        *,
        overlap: float | None = None,
        blend: str | None = None,
        tta: bool | None = None,
        with_probabilities: bool = False,
        keep_largest: bool | list[int] | None = None,
        postprocess: bool = True,
    ) -> tuple[Volume, Volume | None]:
        """Predict one case; returns the label map on the case's grid (and probabilities).

        ``overlap``, ``blend``, ``tta`` and ``keep_largest`` override the config's
        ``inference`` settings. The label map is postprocessed on the case's grid
        (``postprocess``): as written and scored (and as ``miscore cv`` decided it);
        ``postprocess=False`` returns the network's labels as they are.
        """
        ready = preprocess_case(case, self.steps, training=False)
        channels = self.info.input_shape[-1]
        if channels is not None and ready.image.channels != channels:
            raise InputError(
                f"case {case.id}: the image has {ready.image.channels} channel(s) but the model "
                f"{self.model_dir} was trained on {channels}; give images like its training data"
            )
        image = np.asarray(ready.image.array, dtype=np.float32)
        scores = self.class_scores(image, overlap, blend, tta)
        label = labels_from_scores(scores, self.config.inference.threshold)
        on_grid = self._undo_steps(ready.image.with_array(label), ready, case)
        prediction = Volume(on_grid.array, case.image.affine, dict(case.image.meta))
        if postprocess:
            prediction = self.postprocess(prediction, keep_largest)
        probs: Volume | None = None
        if with_probabilities:
            back = self._undo_steps(ready.image.with_array(probabilities(scores)), ready, case)
            probs = Volume(back.array, case.image.affine, dict(case.image.meta))
        return prediction, probs

    def _undo_steps(self, prediction: Volume, ready: Case, case: Case) -> Volume:
        """The prediction on ``case``'s grid: the steps' inverses, each checked to restore
        the grid it was given (``postprocess_prediction``), and the result checked against
        the image before it is paired with the image's affine."""
        back = postprocess_prediction(prediction, ready, self.steps)
        if back.spatial_shape != case.image.spatial_shape:
            # reached only when a step dropped the grid record of the steps before it
            names = ", ".join(repr(step.name) for step in self.steps)
            raise PipelineError(
                f"case {case.id}: the preprocessing steps ({names}) did not restore the grid on "
                f"inverse: got {back.spatial_shape}, the image is {case.image.spatial_shape}"
            )
        return back


@dataclass
class EnsemblePredictor(Predictor):
    """The fold models of a cross-validation folder as one predictor (MIScnn's model group).

    Each case is preprocessed once (the folds share the config); every fold model predicts
    it with its own sliding window, and the mean of their class probabilities decides the
    label and is the probability map returned. ``model`` is the first fold's model.
    """

    members: list[Predictor] = field(default_factory=list)

    def class_scores(
        self,
        image: np.ndarray,
        overlap: float | None = None,
        blend: str | None = None,
        tta: bool | None = None,
    ) -> np.ndarray:
        """The mean over the fold models of their class probabilities."""
        total: np.ndarray | None = None
        for member in self.members:
            probs = probabilities(member.class_scores(image, overlap, blend, tta))
            total = probs if total is None else np.add(total, probs, out=total)
        assert total is not None
        mean: np.ndarray = total / np.float32(len(self.members))
        return mean


def load_ensemble(
    cv_dir: Path, members: Sequence[Path], plugins: PluginManager
) -> EnsemblePredictor:
    """The fold models of a cross-validation folder; they must preprocess alike."""
    predictors = [load_model(m, plugins) for m in members]
    first = predictors[0]
    steps = [s.config() for s in first.steps]
    for member in predictors[1:]:
        if [s.config() for s in member.steps] != steps:
            raise InputError(
                f"{member.model_dir}: preprocesses differently from {first.model_dir}; "
                "the fold models of an ensemble must share their preprocessing"
            )
        if member.info.n_classes != first.info.n_classes:
            raise InputError(
                f"{member.model_dir}: predicts {member.info.n_classes} classes but "
                f"{first.model_dir} predicts {first.info.n_classes}"
            )
    return EnsemblePredictor(
        first.model, first.config, first.info, first.steps, plugins, cv_dir, members=predictors
    )


def load_model(model_dir: Path | str, plugins: PluginManager | None = None) -> Predictor:
    """Load a model folder written by ``miscore train`` (Keras safe mode), or a
    cross-validation folder written by ``miscore cv`` as an ``EnsemblePredictor``."""
    from miscore.core.plugins import PluginManager
    from miscore.pipeline.modeldir import ensemble_members

    members = ensemble_members(model_dir)
    if members is not None:
        return load_ensemble(Path(model_dir), members, plugins or PluginManager())
    folder = ModelDir(model_dir)
    info = folder.info()
    config = folder.config()
    plugins = plugins or PluginManager()
    check_plugins(info, plugins, config)
    model = load_keras_model(folder.model_file, custom_objects(config, plugins), compile=False)
    steps = build_steps(config.preprocessing, plugins.registry)
    predictor = Predictor(model, config, info, steps, plugins, folder.path)
    _ = predictor.postprocessors  # a wrong name or parameter fails now, not after a case
    return predictor


@dataclass
class InputCase:
    """One thing to predict: its id, how to read it, and the IO that writes its prediction."""

    id: str
    read: Callable[[], Case]
    io: ImageIO
    source: Path


def find_inputs(
    inputs: Sequence[Path | str], plugins: PluginManager, layout: str = "auto"
) -> list[InputCase]:
    """Files, series folders and dataset folders -> the cases to predict, ids unique."""
    from miscore.data.dataset import Dataset

    registry = plugins.registry
    found: list[InputCase] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        io: ImageIO | None = None
        try:
            io = registry.io_for(path)
        except InputError:
            io = None
        if io is not None:
            reader = io
            case_id = _input_id(io, path)
            found.append(
                InputCase(case_id, functools.partial(_read_file, reader, path, case_id), io, path)
            )
            continue
        dataset = Dataset.discover(path, registry, layout)
        for source in dataset:
            first = source.images[0]
            found.append(
                InputCase(
                    source.id,
                    functools.partial(dataset.load, source.id, label=False),
                    dataset.io_for(first),
                    first,
                )
            )
    ids = [c.id for c in found]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"several inputs give the case id(s) {', '.join(duplicates)}")
    if not found:
        raise InputError("no input to predict")
    return found


def _read_file(io: ImageIO, path: Path, case_id: str) -> Case:
    return Case(case_id, io.read(path), meta={"source": {"images": [str(path)]}})


def _input_id(io: ImageIO, path: Path) -> str:
    from miscore.core.volume import check_case_id

    case_id = io.case_id(path)
    # an nnU-Net channel file: case_0000.nii.gz -> case (other numbers are part of the name)
    if case_id.endswith("_0000") and len(case_id) > 5:
        case_id = case_id[:-5]
    return check_case_id(case_id)


def writer_io(name: str, plugins: PluginManager) -> ImageIO:
    """The IO that ``--format NAME`` writes with: an IO name, or a format a plugin names
    (``miscore_register_output_formats``, e.g. dicom-seg)."""
    spec: str | dict[str, Any] = plugins.registry.output_formats.get(name, name)
    io = plugins.registry.create("io", spec, "--format")
    assert isinstance(io, ImageIO)
    return io


def predict(
    model_dir: Path | str,
    inputs: Sequence[Path | str],
    out: Path | str,
    *,
    plugins: PluginManager | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    tta: bool | None = None,
    with_probabilities: bool = False,
    writer: str | None = None,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    progress: bool = False,
) -> list[Path]:
    """Predict every input case and write the label maps into ``out``; returns the paths.

    Args:
        writer: an IO name to write with (e.g. ``nifti``); default the input's own IO.
        progress: a progress bar over the cases (for a terminal).
    """
    from miscore.core.progress import progress_bar

    predictor = load_model(model_dir, plugins)
    plugins = predictor.plugins
    out = Path(out)
    cases = _check_inputs_and_output(inputs, out, plugins, writer)
    written: list[Path] = []
    with progress_bar(len(cases), "predicting", progress) as advance:
        for index, item in enumerate(cases, 1):
            written.append(
                predict_and_write(
                    predictor, item, out, overlap, blend, tta, with_probabilities, writer
                )
            )
            log(f"[{index}/{len(cases)}] {item.id} -> {written[-1]}")
            advance()
    return written


def check_prediction(
    model_dir: Path | str,
    inputs: Sequence[Path | str],
    out: Path | str,
    plugins: PluginManager,
    writer: str | None = None,
) -> list[InputCase]:
    """What ``predict`` checks before its first case, without loading the Keras model (so
    without TensorFlow): the model folder (or the fold folders of a cross-validation folder)
    and its plugins, the inputs, the output folder (created) and ``writer``. Returns the
    cases to predict; prediction elsewhere (Dask workers) then loads the model itself."""
    from miscore.pipeline.modeldir import ensemble_members

    members = ensemble_members(model_dir)
    for folder in members if members is not None else [Path(model_dir)]:
        model = ModelDir(folder)
        check_plugins(model.info(), plugins, model.config())
    return _check_inputs_and_output(inputs, Path(out), plugins, writer)


def _check_inputs_and_output(
    inputs: Sequence[Path | str], out: Path, plugins: PluginManager, writer: str | None
) -> list[InputCase]:
    cases = find_inputs(inputs, plugins)
    sources = {c.source.resolve() for c in cases}
    if out.resolve() in sources or any(out.resolve() == s.parent for s in sources):
        raise InputError(f"{out}: the output folder is an input folder; choose another")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"{out}: the output folder is not writable; choose another with --out")
    if writer is not None:
        writer_io(writer, plugins)  # a wrong --format fails now, not after the first case
    return cases


def predict_and_write(
    predictor: Predictor,
    item: InputCase,
    out: Path,
    overlap: float | None,
    blend: str | None,
    tta: bool | None,
    with_probabilities: bool,
    writer: str | None,
) -> Path:
    """Predict one input case, write it (and its probabilities), call the hook. The IO
    plugin writes each file; the bundled ones write under a temporary name and rename it
    into place (``atomic_output``), so a failed case leaves no partial file."""
    plugins = predictor.plugins
    case = item.read()
    label, probs = predictor.predict_case(
        case, overlap=overlap, blend=blend, tta=tta, with_probabilities=with_probabilities
    )
    io = writer_io(writer, plugins) if writer else item.io
    target = out / f"{item.id}{io.write_suffix}"
    path = io.write(label, target, reference=case.image)
    if probs is not None:
        io.write(probs, out / f"{item.id}_probabilities{io.write_suffix}", reference=case.image)
    plugins.prediction_written(case_id=item.id, path=path, prediction=label)
    return path
