"""What every step shares: a new Case from an old one, and the grid record of a step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

import miscore
from miscore import Case, Volume


def derive_case(case: Case, image: Volume, label: Volume | None) -> Case:
    """A new Case with ``case``'s id and meta; its ``steps`` record is a copy, so
    ``set_state`` on the result never writes into ``case``."""
    meta = dict(case.meta)
    meta["steps"] = {key: dict(value) for key, value in case.meta.get("steps", {}).items()}
    return Case(case.id, image, label, meta)


def is_class_ids(prediction: Volume) -> bool:
    """True for class-id predictions (integers: nearest), False for probabilities (linear)."""
    return prediction.array.dtype.kind in "iub"


def grid_state(before: Volume, after: Volume, **extra: Any) -> dict[str, Any]:
    """The JSON-able record an inverse needs: both grids' shapes and the input affine."""
    return {
        "in_shape": list(before.spatial_shape),
        "in_affine": before.affine.tolist(),
        "out_shape": list(after.spatial_shape),
        **extra,
    }


def check_prediction_grid(step: str, prediction: Volume, state: dict[str, Any]) -> None:
    """Raise ``PipelineError`` when a prediction is not on the grid a step produced."""
    if not state:
        raise miscore.PipelineError(
            f"{step}: the preprocessed case holds no state for this step; postprocess needs "
            "the case that preprocess returned, with the same steps"
        )
    if list(prediction.spatial_shape) != list(state["out_shape"]):
        raise miscore.PipelineError(
            f"{step}: prediction shape {prediction.spatial_shape} differs from the "
            f"preprocessed shape {tuple(state['out_shape'])}"
        )


def background_fill(prediction: Volume) -> npt.NDArray[Any]:
    """The value of one voxel of 'nothing found' for a prediction: class 0, or probability
    1 for the background channel and 0 for the others (0 for a single sigmoid channel)."""
    fill = np.zeros(prediction.channels, dtype=prediction.array.dtype)
    if not is_class_ids(prediction) and prediction.channels > 1:
        fill[0] = 1
    return fill


def per_channel(value: float | Sequence[float] | None, channels: int, field: str) -> list[Any]:
    """A scalar or a per-channel list as a list of ``channels`` values (None stays None)."""
    if value is None or isinstance(value, int | float):
        return [value] * channels
    values = list(value)
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise miscore.InputError(
            f"{field}: {len(values)} values given for an image of {channels} channels; "
            "give one value, or one per channel"
        )
    return values
