"""``miscore plan``: a complete config from a dataset fingerprint, every choice explained.

The rules follow nnU-Net's planning, simplified:

- **target spacing**: the median spacing per axis. When the median spacing is anisotropic
  (largest / smallest > 3), the thick axis gets the 10th percentile of its spacings instead
  (but not finer than the other axes), so thin-slice cases are not over-smoothed.
- **intensities**: CT (dataset.json, or air near -1000 HU) is clipped to the 0.5/99.5
  percentiles of the foreground voxels of the whole dataset and z-scored with the dataset's
  foreground mean and std; any other modality is z-scored per case.
- **patch and batch**: the patch starts at the median shape after resampling (capped), the
  network depth follows from its smallest axis (the coarsest feature map keeps >= 4 voxels,
  at most 5 poolings), and the largest axis shrinks until two samples fit the memory budget
  by ``estimate_memory_bytes``; the batch is then as large as the budget allows (2..16 in 3D,
  2..64 in 2D).
- **components**: the architecture, loss and augmentation set are the plugins' choice
  (``miscore_plan_choices``; the bundled plugins choose nnU-Net's: a U-Net with instance norm
  and leaky ReLU, Dice + cross-entropy, nnU-Net's augmentations). The planner adds the depth
  and width it sized when the chosen architecture's parameters have them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from miscore.core.config import Config, parse_config
from miscore.core.errors import InputError, PipelineError
from miscore.tools.analysis import CaseFingerprint, Fingerprint

if TYPE_CHECKING:
    from miscore.core.plugins import PluginManager

__all__ = ["Plan", "estimate_memory_bytes", "plan_config", "target_spacing"]

#: stored float32 values per voxel and per first-level feature map in training (forward
#: activations of conv, norm and activation for two convolutions per level in encoder and
#: decoder, the skip concatenation, and backward temporaries)
TENSORS_PER_FILTER = 16
BASE_FILTERS = 32
#: share of the device memory the activations may use (weights, optimizer state, workspace)
USABLE_SHARE = 0.75
MAX_DEPTH = 5
MIN_BOTTOM_VOXELS = 4
#: nnU-Net's training length: 1000 epochs of 250 steps (planned without --budget)
FULL_EPOCHS = 1000
STEPS_PER_EPOCH = 250
LEARNING_RATE = 1e-3


def estimate_memory_bytes(patch: Sequence[int], filters: int = BASE_FILTERS) -> float:
    """Rough training memory of one sample in a U-Net: ``4 * voxels * filters * 16 * g``.

    ``g`` sums the levels: each level has 1/2**ndim of the voxels and twice the filters, so
    ``g = 1 / (1 - 2 / 2**ndim)`` (4/3 in 3D, 2 in 2D). A 128**3 patch with 32 filters:
    about 5.7 GB. Measured Keras figures vary with the backend and precision; the estimate is
    meant to rank patch shapes, not to promise a fit.
    """
    ndim = len(patch)
    levels = 1.0 / (1.0 - 2.0 / 2**ndim)
    return float(4.0 * float(np.prod(patch)) * filters * TENSORS_PER_FILTER * levels)


def target_spacing(spacings: Sequence[Sequence[float]], threshold: float = 3.0) -> list[float]:
    """The median spacing, with nnU-Net's rule for anisotropic data (see module docstring)."""
    array = np.asarray(spacings, float)
    target = np.median(array, axis=0)
    thick = int(np.argmax(target))
    if target.max() / target.min() > threshold:
        others = np.delete(target, thick)
        target[thick] = max(float(np.percentile(array[:, thick], 10)), float(others.max()))
    return [round(float(v), 4) for v in target]


class Plan:
    """A planned config and the reason for each choice (by field path)."""

    def __init__(self, config: Config, reasons: dict[str, str], header: str) -> None:
        self.config = config
        self.reasons = reasons
        self.header = header

    def to_yaml(self) -> str:
        """The config as YAML, each planned value followed by a ``# why`` comment."""
        return render_yaml(self.config.model_dump(mode="json"), self.reasons, self.header)


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def render_yaml(data: dict[str, Any], reasons: dict[str, str], header: str) -> str:
    """YAML of a two-level mapping, lists as ``- {flow}`` items, comments from ``reasons``."""

    def line(indent: str, text: str, path: str) -> str:
        reason = reasons.get(path)
        return f"{indent}{text}  # {reason}" if reason else f"{indent}{text}"

    lines = [f"# {row}" if row else "#" for row in header.splitlines()]
    for key, value in data.items():
        if isinstance(value, dict) and value:
            lines.append(line("", f"{key}:", key))
            for sub, item in value.items():
                lines.append(line("  ", f"{sub}: {_flow(item)}", f"{key}.{sub}"))
        elif isinstance(value, list) and value:
            lines.append(line("", f"{key}:", key))
            for i, item in enumerate(value):
                lines.append(line("  ", f"- {_flow(item)}", f"{key}[{i}]"))
        else:
            lines.append(line("", f"{key}: {_flow(value)}", key))
    return "\n".join(lines) + "\n"


def _ras_order(axcodes: str) -> list[int]:
    """For each of R/L, A/P, S/I, the array axis that points along it."""
    pairs = ("RL", "AP", "SI")
    return [next(i for i, c in enumerate(axcodes) if c in pair) for pair in pairs]


def depth_for(shape: Sequence[int]) -> int:
    """Poolings for a patch: its smallest axis keeps >= ``MIN_BOTTOM_VOXELS`` at the bottom."""
    smallest = min(shape)
    return max(1, min(MAX_DEPTH, math.floor(math.log2(max(smallest, 1) / MIN_BOTTOM_VOXELS))))


def _fit_patch(patch: list[int], budget: float, batch_min: int) -> tuple[list[int], int]:
    """Shrink ``patch`` until ``batch_min`` samples fit ``budget``; return it and the depth."""
    depth_of = depth_for

    def rounded(shape: Sequence[int], depth: int) -> list[int]:
        k = 2**depth
        return [max(k, (n // k) * k) for n in shape]

    depth = depth_of(patch)
    patch = rounded(patch, depth)
    while estimate_memory_bytes(patch) * batch_min > budget:
        depth = depth_of(patch)
        k = 2**depth
        axis = int(np.argmax(patch))
        if patch[axis] <= k:
            break  # cannot shrink further: the smallest patch is planned anyway
        patch[axis] -= k
        depth = depth_of(patch)
        patch = rounded(patch, depth)
    return patch, depth_of(patch)


@dataclass
class _Draft:
    """A planned config under construction: its sections and the reason for each value."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    def add_step(self, step: dict[str, Any], reason: str) -> None:
        self.steps.append(step)
        self.reasons[f"preprocessing[{len(self.steps) - 1}]"] = reason


@dataclass(frozen=True)
class _Geometry:
    """The planned spacing and the median shape the cases get at it."""

    target: list[float]
    median: list[float]  # the median spacing, before the anisotropy rule
    anisotropic: bool
    resampled: list[float]  # median shape after resampling


@dataclass(frozen=True)
class _Sizing:
    """The planned patch, network depth and batch."""

    patching: dict[str, Any]
    depth: int
    batch: int
    batch_cap: int
    slices: bool


def plan_config(
    fingerprint: Fingerprint,
    plugins: PluginManager,
    memory_gb: float = 8.0,
    two_d: bool = False,
    data_path: str | None = None,
) -> Plan:
    """Plan a complete config for the dataset of ``fingerprint``.

    Args:
        plugins: the plugins whose ``miscore_plan_choices`` name the architecture, loss and
            augmentation (the bundled ones: nnU-Net's choices).
        memory_gb: accelerator memory the training may use.
        two_d: plan a 2D network on slices of 3D data (always 2D for 2D data).
        data_path: the config's ``data.path`` (default: the fingerprint's dataset).
    """
    if memory_gb <= 0:
        raise InputError(f"--memory-gb must be positive; got {memory_gb}")
    cases = [c for c in fingerprint.per_case if len(c.shape) == fingerprint.dims]
    if not cases:
        raise InputError(f"{fingerprint.dataset}: the fingerprint holds no case to plan from")
    draft = _Draft()
    geometry = _plan_geometry(fingerprint, cases, draft)
    _plan_intensities(fingerprint, draft)
    sizing = _plan_sizing(geometry, fingerprint.dims, two_d, memory_gb, draft.reasons)
    ndim = 2 if sizing.slices or fingerprint.dims == 2 else 3
    thick = int(np.argmax(geometry.target)) if geometry.anisotropic and ndim == 3 else None
    augmentation, model, schedule = _plan_components(
        plugins, ndim, thick, sizing.depth, draft.reasons
    )
    config_data: dict[str, Any] = {
        "data": _plan_data(fingerprint, data_path, draft.reasons),
        "preprocessing": draft.steps,
        "patching": sizing.patching,
        "augmentation": augmentation,
        "model": model,
        "training": _plan_training(sizing, memory_gb, schedule, draft.reasons),
    }
    inference = _plan_inference(fingerprint, draft.reasons)
    if inference:
        config_data["inference"] = inference
    config = parse_config(config_data, "planned config")
    header = (
        f"miscore config planned by `miscore plan` from {fingerprint.dataset}\n"
        f"({fingerprint.cases} cases, {fingerprint.labelled_cases} labelled, "
        f"{'CT' if fingerprint.looks_like_ct else 'not CT'}, {fingerprint.dims}D, "
        f"median spacing {_mm(geometry.median)}).\n"
        "Every planned value says why; edit freely and check with `miscore config validate`."
    )
    plan = Plan(config, draft.reasons, header)
    again = parse_config(yaml.safe_load(plan.to_yaml()), "planned config")
    if again != config:
        raise PipelineError("plan: the YAML written does not read back as the planned config")
    return plan


def _plan_geometry(
    fingerprint: Fingerprint, cases: Sequence[CaseFingerprint], draft: _Draft
) -> _Geometry:
    """One orientation (when the cases differ), then one spacing for all cases."""
    spacings = [c.spacing for c in cases]
    shapes = [c.shape for c in cases]
    if fingerprint.dims == 3 and len(fingerprint.orientations) > 1:
        draft.add_step(
            {"name": "reorient", "axcodes": "RAS"},
            f"cases come in {len(fingerprint.orientations)} orientations "
            f"({', '.join(fingerprint.orientations)}): one axis order for all",
        )
        orders = [_ras_order(c.axcodes) for c in cases]
        spacings = [[c.spacing[i] for i in o] for c, o in zip(cases, orders, strict=True)]
        shapes = [[c.shape[i] for i in o] for c, o in zip(cases, orders, strict=True)]
    target = target_spacing(spacings)
    median = [float(v) for v in np.median(np.asarray(spacings, float), axis=0)]
    anisotropic = max(median) / min(median) > 3
    # always: the cases to predict need not have the training cases' spacing (a no-op for
    # a case already at the target)
    draft.add_step(
        {"name": "resample", "spacing": target},
        f"median spacing {_mm(median)}"
        + (
            "; anisotropic (ratio > 3): the thick axis takes its 10th percentile"
            if anisotropic
            else ""
        )
        + (
            "; the training cases have it already, new cases are brought to it"
            if all(np.allclose(s, target, rtol=0.01) for s in spacings)
            else ""
        ),
    )
    resampled = [
        float(v)
        for v in np.median(
            [
                np.multiply(sh, sp) / np.asarray(target)
                for sh, sp in zip(shapes, spacings, strict=True)
            ],
            axis=0,
        )
    ]
    return _Geometry(target, median, anisotropic, resampled)


def _plan_intensities(fingerprint: Fingerprint, draft: _Draft) -> None:
    """CT: clip and z-score with the dataset's foreground statistics; else z-score per case."""
    if not fingerprint.looks_like_ct:
        draft.add_step(
            {"name": "zscore"},
            "not CT: intensities have no fixed scale, so each case is z-scored on its own",
        )
        return
    fg = [c.foreground for c in fingerprint.intensity]
    if any(f.voxels == 0 for f in fg):
        raise InputError(
            f"{fingerprint.dataset}: CT data without labelled foreground: cannot compute "
            "the clipping range; label some cases or write the preprocessing by hand"
        )
    draft.add_step(
        {
            "name": "clip",
            "min": [round(float(f.percentile_00_5 or 0), 2) for f in fg],
            "max": [round(float(f.percentile_99_5 or 0), 2) for f in fg],
        },
        "CT: the 0.5/99.5 percentiles of the dataset's foreground voxels",
    )
    draft.add_step(
        {
            "name": "zscore",
            "mean": [round(float(f.mean or 0), 3) for f in fg],
            "std": [round(float(f.std or 1), 3) for f in fg],
        },
        "CT: one normalisation for all cases, the dataset's foreground mean and std",
    )


def _plan_sizing(
    geometry: _Geometry, dims: int, two_d: bool, memory_gb: float, reasons: dict[str, str]
) -> _Sizing:
    """The patch (fit to the memory), the depth it allows, and the batch the memory holds."""
    budget = memory_gb * 1e9 * USABLE_SHARE
    slices = dims == 3 and two_d
    if slices:
        axis = int(np.argmax(geometry.target))
        in_plane = [round(v) for i, v in enumerate(geometry.resampled) if i != axis]
        start = [min(n, 512) for n in in_plane]
        batch_cap = 64
    else:
        axis = 2
        start = [min(round(v), 256 if dims == 3 else 512) for v in geometry.resampled]
        batch_cap = 16 if dims == 3 else 64
    patch, depth = _fit_patch(start, budget, batch_min=2)
    per_sample = estimate_memory_bytes(patch)
    batch = int(max(1, min(batch_cap, budget // per_sample)))
    patching: dict[str, Any] = {
        "mode": "slice" if slices else "random",
        "patch_shape": patch,
        "overlap": 0.5,
        "slice_axis": axis,
        "foreground_ratio": 0.33,
        "samples_per_case": 2,
    }
    median_text = "x".join(str(round(v)) for v in geometry.resampled)
    reasons["patching.mode"] = (
        f"2D network on slices along axis {axis} (the thickest)"
        if slices
        else "random patches, a third of them on foreground (nnU-Net)"
    )
    reasons["patching.patch_shape"] = (
        f"median shape after resampling {median_text}, cut to fit {memory_gb:g} GB "
        f"(~{per_sample / 1e9:.2f} GB per sample by the U-Net estimate) and to a multiple of "
        f"2**{depth}"
    )
    if slices:
        reasons["patching.slice_axis"] = "the axis of the largest target spacing"
    return _Sizing(patching, depth, batch, batch_cap, slices)


def _plan_data(
    fingerprint: Fingerprint, data_path: str | None, reasons: dict[str, str]
) -> dict[str, Any]:
    """The data section: where, which layout, how many classes (and their names)."""
    classes = max(2, max((c.id for c in fingerprint.classes), default=1) + 1)
    names = {c.id: c.name for c in fingerprint.classes if c.name}
    data: dict[str, Any] = {
        "path": data_path or fingerprint.dataset,
        "layout": fingerprint.layout,
        "classes": classes,
        "channels": fingerprint.channels,
    }
    reasons["data.classes"] = (
        f"class ids 0..{classes - 1} found in {fingerprint.labelled_cases} labelled cases"
    )
    if len(names) == classes:
        data["class_names"] = [names[i] for i in range(classes)]
    return data


#: the config paths the plugins' choices fill (and may explain in ``reasons``)
CHOSEN_PATHS = ("model.architecture", "model.loss", "augmentation", "training.lr_schedule")


def _plan_components(
    plugins: PluginManager,
    ndim: int,
    thick: int | None,
    depth: int,
    reasons: dict[str, str],
) -> tuple[list[dict[str, Any]], dict[str, Any], Any]:
    """The augmentation list, the model section and the rate schedule (None: none chosen),
    as the plugins choose them.

    The plugins' ``miscore_plan_choices`` name the architecture, loss, augmentation and
    schedule (and may explain them, for the paths in ``CHOSEN_PATHS``); the planner adds the
    depth and width it sized when the architecture's parameters have them.
    """
    choices = plugins.plan_choices(ndim=ndim, thick_axis=thick)
    for key in ("architecture", "loss"):
        if key not in choices:
            raise PipelineError(
                f"plan: no installed plugin chooses the {key} of a planned config "
                "(hook miscore_plan_choices); install or enable one, e.g. the bundled "
                f"{'unet' if key == 'architecture' else 'losses'} plugin"
            )
    for path, text in choices["reasons"].items():
        if path.split("[")[0] in CHOSEN_PATHS:
            reasons[path] = text
    architecture = _sized_architecture(plugins, choices["architecture"], depth, reasons)
    augmentation = [dict(entry) for entry in choices.get("augmentation", [])]
    if "augmentation" not in choices:
        reasons["augmentation"] = "no installed plugin plans an augmentation set"
    model = {"architecture": architecture, "loss": dict(choices["loss"])}
    return augmentation, model, choices.get("lr_schedule")


def _sized_architecture(
    plugins: PluginManager, chosen: dict[str, Any], depth: int, reasons: dict[str, str]
) -> dict[str, Any]:
    """The chosen architecture entry with the planned ``depth`` and ``filters`` after its name,
    each where the architecture's ``Params`` have it and the plugin left it open; the depth's
    reason goes before the plugin's own."""
    fields = plugins.registry.get_architecture(chosen["name"]).Params.model_fields
    sized = {"depth": depth, "filters": BASE_FILTERS}
    architecture = {"name": chosen["name"]}
    architecture.update({k: v for k, v in sized.items() if k in fields and k not in chosen})
    architecture.update(chosen)
    if "depth" in fields and "depth" not in chosen:
        why = reasons.get("model.architecture")
        sizing = (
            f"depth {depth}: the patch's smallest axis keeps >= {MIN_BOTTOM_VOXELS} voxels at "
            f"the bottom (at most {MAX_DEPTH} poolings)"
        )
        reasons["model.architecture"] = f"{sizing}; {why}" if why else sizing
    return architecture


def _plan_training(
    sizing: _Sizing, memory_gb: float, schedule: Any, reasons: dict[str, str]
) -> dict[str, Any]:
    """nnU-Net's training length, with the batch the memory holds and the plugins' schedule."""
    reasons["training.batch_size"] = (
        f"as many samples as {memory_gb:g} GB x {USABLE_SHARE} holds by the estimate "
        f"(capped at {sizing.batch_cap})"
    )
    reasons["training.epochs"] = (
        f"nnU-Net's full schedule ({FULL_EPOCHS} x {STEPS_PER_EPOCH} steps); plan with "
        "--budget to fit a wall-clock time on this machine"
    )
    reasons["training.steps_per_epoch"] = (
        "training is counted in steps, not passes over the cases (one case would be one step)"
    )
    training: dict[str, Any] = {
        "batch_size": sizing.batch,
        "epochs": FULL_EPOCHS,
        "steps_per_epoch": STEPS_PER_EPOCH,
        "learning_rate": LEARNING_RATE,
    }
    if schedule is not None:
        training["lr_schedule"] = schedule
        name = schedule if isinstance(schedule, str) else schedule.get("name", "chosen")
        reasons["training.learning_rate"] = f"Adam's usual rate, decayed by the {name} schedule"
    else:
        reasons["training.learning_rate"] = "Adam's usual rate, kept for every step"
    return training


def _plan_inference(fingerprint: Fingerprint, reasons: dict[str, str]) -> dict[str, Any]:
    """Keep the largest object of each class that is one object in every labelled case."""
    single = [
        c.id for c in fingerprint.classes if c.id > 0 and c.cases and c.one_object_cases == c.cases
    ]
    if not single:
        return {}
    reasons["inference.keep_largest"] = (
        f"class{'es' if len(single) > 1 else ''} {', '.join(map(str, single))}: one "
        "connected object in every labelled case, so stray islands are errors "
        "(`miscore cv` re-decides it from predictions)"
    )
    return {"keep_largest": single}


def _mm(values: Sequence[float]) -> str:
    return "x".join(f"{v:.3g}" for v in values) + " mm"
