"""``reorient``: permute and flip array axes to a target orientation (RAS by default).

A pure index operation (no interpolation), so the inverse is exact: labels and predictions
come back voxel for voxel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

import miscore
from miscore import Case, Volume
from miscore_preprocessing.derive import check_prediction_grid, derive_case, grid_state


def _nio() -> Any:
    """nibabel.orientations, imported where used (its functions carry no type hints)."""
    import nibabel.orientations

    return nibabel.orientations


def _orient(array: npt.NDArray[Any], transform: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
    nio = _nio()
    return np.ascontiguousarray(nio.apply_orientation(array, transform))


class ReorientParams(miscore.Params):
    axcodes: str = Field(
        "RAS",
        description="where array axes 0, 1, 2 point: three letters from R/L, A/P, S/I, "
        "e.g. 'RAS' (nibabel's canonical) or 'LPS' (ITK's)",
    )

    @field_validator("axcodes")
    @classmethod
    def _valid(cls, value: str) -> str:
        value = value.upper()
        pairs = ("RL", "AP", "SI")
        used = sorted(next((i for i, p in enumerate(pairs) if c in p), -1) for c in value)
        if used != [0, 1, 2]:
            raise ValueError(
                f"{value!r} is not an orientation: use one letter of each pair R/L, A/P, S/I"
            )
        return value


class Reorient(miscore.Subfunction):
    """Reorient to RAS (or given axis codes) by axis permutation and flips: exact inverse."""

    name = "reorient"
    Params = ReorientParams
    params: ReorientParams

    def preprocess(self, case: Case, training: bool) -> Case:
        nio = _nio()
        image = case.image
        if image.ndim != 3:
            raise miscore.InputError(
                f"case {case.id}: reorient works on 3D volumes; drop it for 2D images"
            )
        start = nio.io_orientation(image.affine)
        end = nio.axcodes2ornt(tuple(self.params.axcodes))
        transform = nio.ornt_transform(start, end)
        affine = image.affine @ nio.inv_ornt_aff(transform, image.spatial_shape)
        new_image = Volume(_orient(image.array, transform), affine, dict(image.meta))
        new_label = None
        if case.label is not None:
            new_label = Volume(
                _orient(case.label.array, transform), affine.copy(), dict(case.label.meta)
            )
        out = derive_case(case, new_image, new_label)
        back = nio.ornt_transform(end, start)
        self.set_state(out, grid_state(image, new_image, inverse=back.tolist()))
        return out

    def postprocess(self, prediction: Volume, case: Case) -> Volume:
        state = self.get_state(case)
        check_prediction_grid(self.state_key, prediction, state)
        array = _orient(prediction.array, np.asarray(state["inverse"], float))
        return Volume(array, np.asarray(state["in_affine"], float), dict(prediction.meta))
