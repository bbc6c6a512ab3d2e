"""A prediction is written only on the input's grid: a step whose inverse breaks it is named.

A local plugin (``--plugin steps.py``) crops one slice off each end of axis 0 in ``preprocess``;
its inverse pads the prediction back, unless ``FORGET_TO_PAD`` is set: then predicting must
stop with one line naming the step, and write no label.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.cli.helpers import assert_one_line_error, run_cli

STEPS = '''
import os

import numpy as np

import miscore


class MyCrop(miscore.Subfunction):
    """Crops one slice off each end of axis 0; the inverse pads them back with background."""

    name = "my_crop"

    def preprocess(self, case, training):
        def crop(volume):
            affine = volume.affine.copy()
            affine[:3, 3] += affine[:3, 0]  # the new first voxel is the old second one
            return miscore.Volume(volume.array[1:-1].copy(), affine, dict(volume.meta))

        label = None if case.label is None else crop(case.label)
        out = miscore.Case(case.id, crop(case.image), label, dict(case.meta))
        self.set_state(out, {"affine": case.image.affine.tolist()})
        return out

    def postprocess(self, prediction, case):
        if os.environ.get("FORGET_TO_PAD"):
            return prediction
        array = np.pad(prediction.array, [(1, 1)] + [(0, 0)] * (prediction.array.ndim - 1))
        affine = np.asarray(self.get_state(case)["affine"])
        return miscore.Volume(array, affine, dict(prediction.meta))


@miscore.hookimpl
def miscore_register_subfunctions():
    return [MyCrop]
'''

CONFIG = """
data: {classes: 2}
preprocessing: [my_crop, zscore]
patching: {mode: random, patch_shape: [16, 16, 16]}
augmentation: []
model:
  architecture: {name: unet, filters: 4, depth: 2}
  loss: dice_ce
training: {epochs: 1, steps_per_epoch: 1, batch_size: 1, inference_dice: false}
cache: {path: cache}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 32^3 case, the local plugin, and a model trained with its crop step."""
    root = tmp_path_factory.mktemp("grid")
    result = run_cli(
        "synth", root / "data", "--cases", "1", "--shape", "32", "32", "32",
        "--classes", "2", "--seed", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (root / "steps.py").write_text(STEPS)
    (root / "config.yaml").write_text(CONFIG)
    result = run_cli(
        "--plugin", "steps.py", "train", "config.yaml", "--data", "data", "--out", "model",
        cwd=root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root


def test_a_step_whose_inverse_restores_the_grid_predicts_on_the_image_grid(
    project: Path,
) -> None:
    result = run_cli(
        "--plugin", "steps.py", "predict", "model", "data", "--out", "good", cwd=project
    )
    assert result.returncode == 0, result.stderr
    (written,) = (project / "good").iterdir()
    image = project / "data" / "imagesTr" / "case_000_0000.nii.gz"
    assert nib.load(written).shape[:3] == (32, 32, 32)
    np.testing.assert_allclose(nib.load(written).affine, nib.load(image).affine)


def test_a_step_whose_inverse_drops_slices_is_named_and_nothing_is_written(
    project: Path,
) -> None:
    result = run_cli(
        "--plugin", "steps.py", "predict", "model", "data", "--out", "bad",
        cwd=project, env={"FORGET_TO_PAD": "1"},
    )  # fmt: skip
    line = assert_one_line_error(result, code=1)
    assert (
        "preprocessing step 'my_crop' did not restore the grid on inverse: "
        "got (30, 32, 32), the image is (32, 32, 32)"
    ) in line
    assert not list((project / "bad").iterdir())
