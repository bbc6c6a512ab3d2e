"""An example third-party plugin: one component of each kind, one CLI command, and its own
default augmentation set (``miscore_defaults``), which replaces the bundled one.

The distribution declares a second plugin, ``miscore_example_thirdparty.nifti``, that reads
``.nii.gz`` ahead of the bundled reader by declared priority.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

import miscore

if TYPE_CHECKING:
    import typer

__version__ = "1.2.3"


class TextIO(miscore.ImageIO):
    """Reads a whitespace-separated 2D text matrix as a one-channel image."""

    name = "example_text"
    suffixes = (".example.txt",)
    write_suffix = ".example.txt"

    def read(self, path: Path) -> miscore.Volume:
        try:
            array = np.loadtxt(path, ndmin=2)
        except ValueError as exc:
            raise miscore.InputError(f"{path}: not a text matrix: {exc}") from None
        return miscore.Volume(array[..., None], np.eye(4))

    def write(
        self, volume: miscore.Volume, path: Path, reference: miscore.Volume | None = None
    ) -> Path:
        with miscore.atomic_output(path) as temp:
            np.savetxt(temp, volume.array[..., 0])
        return path


class AddConstant(miscore.Subfunction):
    """Adds a constant to the image."""

    name = "example_add"

    class Params(miscore.Params):
        value: float = Field(1.0, description="what to add")

    params: Params

    def preprocess(self, case: miscore.Case, training: bool) -> miscore.Case:
        image = case.image.with_array(case.image.array + self.params.value)
        return miscore.Case(case.id, image, case.label, dict(case.meta))


class Invert(miscore.Augmentation):
    """Negates the image."""

    name = "example_invert"
    params: miscore.AugmentationParams

    def augment(
        self,
        image: npt.NDArray[np.floating[Any]],
        label: npt.NDArray[np.integer[Any]] | None,
        rng: np.random.Generator,
    ) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.integer[Any]] | None]:
        # the engine has already drawn ``p``: augment is called only when it applies
        return -image, label


class Identity(miscore.Architecture):
    """A 1x1 convolution: the smallest model there is."""

    name = "example_identity"

    def build(self, input_shape: Sequence[int | None], n_classes: int) -> Any:
        import keras

        inputs = keras.Input(tuple(input_shape))
        conv = keras.layers.Conv3D if len(input_shape) == 4 else keras.layers.Conv2D
        return keras.Model(inputs, conv(n_classes, 1, activation="softmax")(inputs))


class MeanSquared(miscore.Loss):
    """Mean squared error of the class probabilities."""

    name = "example_mse"

    def build(self, n_classes: int) -> Any:
        import keras

        return keras.losses.MeanSquaredError()


class VoxelAccuracy(miscore.Metric):
    """Share of voxels where prediction and truth agree."""

    name = "example_accuracy"

    def compute(
        self,
        prediction: npt.NDArray[np.bool_],
        truth: npt.NDArray[np.bool_],
        spacing: Sequence[float],
    ) -> float:
        return float(np.mean(prediction == truth))


class FirstHalf(miscore.Evaluator):
    """Tests on the first half of the cases, trains on the rest."""

    name = "example_halves"

    def split(self, case_ids: Sequence[str], seed: int) -> list[miscore.Fold]:
        half = len(case_ids) // 2
        return [miscore.Fold(name="fold0", train=list(case_ids[half:]), test=list(case_ids[:half]))]


@miscore.hookimpl
def miscore_register_io() -> list[type[miscore.ImageIO]]:
    return [TextIO]


@miscore.hookimpl
def miscore_register_subfunctions() -> list[type[miscore.Subfunction]]:
    return [AddConstant]


@miscore.hookimpl
def miscore_register_augmentations() -> list[type[miscore.Augmentation]]:
    return [Invert]


@miscore.hookimpl
def miscore_register_architectures() -> list[type[miscore.Architecture]]:
    return [Identity]


@miscore.hookimpl
def miscore_register_losses() -> list[type[miscore.Loss]]:
    return [MeanSquared]


@miscore.hookimpl
def miscore_register_metrics() -> list[type[miscore.Metric]]:
    return [VoxelAccuracy]


@miscore.hookimpl
def miscore_register_evaluators() -> list[type[miscore.Evaluator]]:
    return [FirstHalf]


#: what ``augmentation: default`` stands for while this plugin is installed
DEFAULT_AUGMENTATION: list[dict[str, Any]] = [
    {"name": "flip", "p": 0.5},
    {"name": "example_invert", "p": 0.25},
]


# A plain hookimpl is enough to replace the bundled defaults: the bundled plugins implement
# ``miscore_defaults`` with ``trylast=True``, pluggy calls trylast implementations after all
# others, and for each key the first implementation called wins.
@miscore.hookimpl
def miscore_defaults() -> dict[str, Any]:
    return {"augmentation": DEFAULT_AUGMENTATION}


@miscore.hookimpl
def miscore_register_commands(app: typer.Typer) -> None:
    @app.command("example-hello")
    def hello(name: str = "world") -> None:
        """Say hello (a command added by a third-party plugin)."""
        print(f"hello {name} from example")
