"""Run a chain of preprocessing subfunctions on a case, and its inverse on a prediction.

A chain is built once from the config's ``preprocessing`` list::

    steps = build_steps(config.preprocessing, manager.registry)
    ready = preprocess_case(case, steps, training=True)
    ...
    back = postprocess_prediction(prediction, ready, steps)   # on the original grid

Each step gets a unique ``state_key`` (``"<index>.<name>"``), so two steps of the same kind
keep separate inverse state in ``case.meta["steps"]``. The grid each step was given is recorded
in ``case.meta["step_grids"]``, and ``postprocess_prediction`` checks after each inverse that
the step restored it: a step whose inverse drops a slice is named, instead of a prediction that
no longer overlays its image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from miscore.core.components import Subfunction
from miscore.core.errors import InputError, MiscoreError, PipelineError
from miscore.core.registry import build_steps
from miscore.core.volume import Case, Volume

__all__ = ["build_steps", "one_hot", "postprocess_prediction", "preprocess_case"]


def _fresh_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A copy of a case's meta whose ``steps`` record can be written without touching ``meta``."""
    out = dict(meta)
    out["steps"] = {key: dict(value) for key, value in meta.get("steps", {}).items()}
    return out


#: ``Case.meta`` key of the grid (spatial shape and affine) each step was given; written
#: copy-on-write, so a step that shares its input's meta never changes an earlier record
GRIDS_KEY = "step_grids"


def _record_grid(step: Subfunction, given: Volume, result: Case) -> None:
    """Note on ``result`` the grid ``step`` was given: its inverse must return to it."""
    grids = dict(result.meta.get(GRIDS_KEY, {}))
    grids[step.state_key] = {"shape": list(given.spatial_shape), "affine": given.affine.tolist()}
    result.meta[GRIDS_KEY] = grids


def _check_restored(step: Subfunction, result: Volume, case: Case, first: bool) -> None:
    """Raise when ``step``'s inverse did not return a prediction to the grid it was given."""
    grid = case.meta.get(GRIDS_KEY, {}).get(step.state_key)
    if grid is None:  # a step before it dropped the record: nothing to compare with
        return
    broke = f"case {case.id}: preprocessing step {step.name!r} did not restore the grid on inverse"
    shape = tuple(int(n) for n in grid["shape"])
    if tuple(result.spatial_shape) != shape:
        given = "the image is" if first else "the grid it was given is"
        raise PipelineError(f"{broke}: got {tuple(result.spatial_shape)}, {given} {shape}")
    expected = np.asarray(grid["affine"], dtype=float)
    # a thousandth of a millimetre: far below a voxel, far above the rounding of an inverse
    if result.affine.shape != expected.shape or not np.allclose(
        result.affine, expected, rtol=0.0, atol=1e-3
    ):
        given = "the image's" if first else "the one of the grid it was given"
        raise PipelineError(
            f"{broke}: got the affine {np.round(result.affine, 4).tolist()}, "
            f"{given} is {np.round(expected, 4).tolist()}"
        )


def preprocess_case(case: Case, steps: Sequence[Subfunction], training: bool) -> Case:
    """Apply ``steps`` in order and return the new case; ``case`` itself is left untouched.

    Args:
        case: the case as read from disk.
        steps: from ``build_steps``.
        training: True when the case feeds training (steps may then use the label).

    Raises:
        PipelineError: a step failed for a reason other than bad input; the message names
            the step and the case.
    """
    current = Case(case.id, case.image, case.label, _fresh_meta(case.meta))
    for step in steps:
        try:
            result = step.preprocess(current, training)
        except MiscoreError:
            raise
        except Exception as exc:
            raise PipelineError(
                f"case {case.id}: preprocessing step {step.state_key!r} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(result, Case):
            raise PipelineError(
                f"preprocessing step {step.state_key!r} returned {type(result).__name__}, "
                "not a Case"
            )
        _record_grid(step, current.image, result)
        current = result
    _check_finite(case, current)
    return current


def _check_finite(source: Case, ready: Case) -> None:
    """Refuse NaN/infinite image values: a network fed one gives NaN losses and predictions."""
    array = ready.image.array
    if array.dtype.kind not in "fc" or bool(np.isfinite(array).all()):
        return
    raw = source.image.array
    bad = int(np.count_nonzero(~np.isfinite(raw))) if raw.dtype.kind in "fc" else 0
    if bad:
        files = source.meta.get("source", {}).get("images") or []
        where = f" ({', '.join(map(str, files))})" if files else ""
        raise InputError(
            f"case {source.id}: the image{where} holds {bad} NaN or infinite voxels; replace "
            "them (e.g. with the background value) before training or predicting"
        )
    raise PipelineError(
        f"case {source.id}: preprocessing produced NaN or infinite image values; check the "
        "steps' params (e.g. a fixed zscore std or a resample of an empty image)"
    )


def postprocess_prediction(
    prediction: Volume, preprocessed_case: Case, steps: Sequence[Subfunction]
) -> Volume:
    """Undo ``steps`` (in reverse order) on a prediction made on the preprocessed grid.

    Args:
        prediction: class ids (one integer channel) or probabilities (C float channels) on
            the grid of ``preprocessed_case``.
        preprocessed_case: what ``preprocess_case`` returned; it holds each step's state.
        steps: the same steps, in the same order, as given to ``preprocess_case``.

    Raises:
        PipelineError: a step's inverse did not return the prediction to the grid (shape
            and affine) the step was given in ``preprocess_case``; the message names it.
    """
    current = prediction
    for index, step in reversed(list(enumerate(steps))):
        try:
            result = step.postprocess(current, preprocessed_case)
        except MiscoreError:
            raise
        except Exception as exc:
            raise PipelineError(
                f"case {preprocessed_case.id}: postprocessing step {step.state_key!r} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(result, Volume):
            raise PipelineError(
                f"postprocessing step {step.state_key!r} returned {type(result).__name__}, "
                "not a Volume"
            )
        _check_restored(step, result, preprocessed_case, first=index == 0)
        current = result
    return current


def one_hot(
    label: npt.NDArray[Any], n_classes: int, out: npt.NDArray[np.float32] | None = None
) -> npt.NDArray[np.float32]:
    """``(*spatial, 1)`` or ``(*spatial,)`` class ids -> ``(*spatial, n_classes)`` float32.

    Labels stay integer on disk and in the cache; batches are one-hot encoded here. ``out``
    (e.g. a sample's slot of a batch array) receives the result instead of a new array.
    """
    array = np.asarray(label)
    if array.ndim >= 1 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype.kind not in "iub":
        raise InputError(f"one_hot needs integer class ids; got dtype {array.dtype}")
    if n_classes < 1:
        raise InputError(f"one_hot needs n_classes >= 1; got {n_classes}")
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= n_classes:
            raise InputError(
                f"label holds class ids {low}..{high} but data.classes is {n_classes}; "
                "set data.classes to the number of classes, background included"
            )
    # One comparison per class straight into the output: 3x faster than indexing np.eye.
    shape = (*array.shape, n_classes)
    if out is not None and (out.shape != shape or out.dtype != np.float32):
        raise InputError(f"one_hot out is {out.dtype}{out.shape}; needs float32{shape}")
    encoded = np.empty(shape, dtype=np.float32) if out is None else out
    for cls in range(n_classes):
        np.equal(array, cls, out=encoded[..., cls])
    return encoded
