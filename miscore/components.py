"""The component kinds plugins register, one base class each.

A component is a class with a ``name`` (what configs use), a pydantic ``Params`` model (extra
fields forbidden) and the methods of its kind. The kernel creates components from config
entries such as ``{name: clip, min: -79, max: 304}``: ``name`` picks the class, the other keys
are validated by its ``Params``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from miscore.volume import Case, Volume

if TYPE_CHECKING:
    import keras

    from miscore.augmenting import SpatialTransform

KINDS: tuple[str, ...] = (
    "io",
    "subfunction",
    "augmentation",
    "architecture",
    "loss",
    "metric",
    "evaluator",
)


class Params(BaseModel):
    """Base of every component's parameter model: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_ParamsModel = Params


class Component:
    """Base of all components. Subclasses set ``name`` and, when they take any, ``Params``."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Params: ClassVar[type[_ParamsModel]] = _ParamsModel

    def __init__(
        self, params: _ParamsModel | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if isinstance(params, _ParamsModel):
            if kwargs:
                params = params.model_copy(update=kwargs)
            self.params = self.Params.model_validate(params.model_dump())
        else:
            values = {**dict(params or {}), **kwargs}
            self.params = self.Params.model_validate(values)

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring: what this component does."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def config(self) -> dict[str, Any]:
        """The config entry that recreates this component: ``{name, **params}``."""
        return {"name": self.name, **self.params.model_dump(mode="json")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({args})"


# --- io ---------------------------------------------------------------------------------


class ImageIO(Component):
    """Reads images and labels of one format into Volumes and writes predictions back.

    ``suffixes`` lists the file endings handled (lower case, with the dot); a reader of folders
    (DICOM) overrides ``can_read``. ``write`` must write atomically (``miscore.atomic_output``)
    and keep the geometry and header facts of ``reference`` (the input image) where given.
    """

    kind = "io"
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: the ending ``write`` uses for predictions when the caller does not choose one
    write_suffix: ClassVar[str] = ""

    def can_read(self, path: Path) -> bool:
        """True when ``path`` looks like a file of this format (by its name, cheaply)."""
        name = path.name.lower()
        return path.is_file() and any(name.endswith(s) for s in self.suffixes)

    def read(self, path: Path) -> Volume:
        """Read an image. Raise ``InputError`` naming ``path`` when it cannot be read."""
        raise NotImplementedError

    def read_label(self, path: Path, image: Volume) -> Volume:
        """Read a label map on the grid of ``image``; by default ``read`` then checked integers."""
        from miscore.labels import as_label_volume

        return as_label_volume(self.read(path), path)

    def write(self, volume: Volume, path: Path, reference: Volume | None = None) -> Path:
        """Write ``volume`` to ``path`` (atomically) and return the path written."""
        raise NotImplementedError

    def case_id(self, path: Path) -> str:
        """The case id a file name gives: the name without this format's suffix."""
        name = path.name
        for suffix in sorted(self.suffixes, key=len, reverse=True):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return path.stem


# --- preprocessing ----------------------------------------------------------------------


class Subfunction(Component):
    """A deterministic preprocessing step with its inverse for predictions.

    ``preprocess`` returns a new Case. A step that changes the grid records what its inverse
    needs with ``set_state(case, {...})`` (JSON-able values) on the case it returns;
    ``postprocess`` receives the fully preprocessed case and reads it back with
    ``get_state(case)``. The pipeline gives each step a unique ``state_key``.
    """

    kind = "subfunction"
    #: False for steps whose output depends on more than the case and the params
    deterministic: ClassVar[bool] = True

    def __init__(
        self, params: _ParamsModel | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(params, **kwargs)
        self.state_key = self.name

    def preprocess(self, case: Case, training: bool) -> Case:
        raise NotImplementedError

    def postprocess(self, prediction: Volume, case: Case) -> Volume:
        """Map a prediction on this step's output grid back to its input grid."""
        return prediction

    def set_state(self, case: Case, state: Mapping[str, Any]) -> None:
        case.meta.setdefault("steps", {})[self.state_key] = dict(state)

    def get_state(self, case: Case) -> dict[str, Any]:
        state: dict[str, Any] = case.meta.get("steps", {}).get(self.state_key, {})
        return state


# --- augmentation -----------------------------------------------------------------------


class AugmentationParams(Params):
    """Parameters every augmentation has: the probability it is applied to a sample."""

    p: float = Field(0.5, ge=0.0, le=1.0, description="probability of applying it to a sample")


class Augmentation(Component):
    """A random transform of a training sample, image and label together.

    Arrays are channels last, ``(*spatial, C)``. Every random draw comes from ``rng``.
    """

    kind = "augmentation"
    Params: ClassVar[type[_ParamsModel]] = AugmentationParams

    def augment(
        self,
        image: npt.NDArray[np.floating[Any]],
        label: npt.NDArray[np.integer[Any]] | None,
        rng: np.random.Generator,
    ) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.integer[Any]] | None]:
        raise NotImplementedError

    def spatial_transform(
        self, shape: tuple[int, ...], rng: np.random.Generator
    ) -> SpatialTransform | None:
        """Optional: draw this sample's coordinate map instead of transforming arrays.

        A spatial augmentation returns a ``miscore.augmenting.SpatialTransform`` for an output
        of spatial ``shape``; ``miscore.augmenting.augment_sample`` composes consecutive ones
        and interpolates once. The default, None, marks a non-spatial augmentation.
        """
        return None

    def augment_inplace(self, image: npt.NDArray[np.float32], rng: np.random.Generator) -> bool:
        """Optional: change ``image`` (float32, owned by the caller) in place; True when done.

        An intensity-only augmentation implements it to spare a copy per sample; the default,
        False, makes ``augment_sample`` call ``augment`` instead.
        """
        return False


# --- model ------------------------------------------------------------------------------


class Architecture(Component):
    """Builds a Keras model: input ``(*spatial, channels)``, output ``(*spatial, n_classes)``."""

    kind = "architecture"
    #: spatial dimensions the architecture supports
    dims: ClassVar[tuple[int, ...]] = (2, 3)

    def build(self, input_shape: Sequence[int | None], n_classes: int) -> keras.Model:
        raise NotImplementedError

    def custom_objects(self) -> dict[str, Any]:
        """Keras objects a saved model of this architecture needs to load (custom layers).

        Layers registered with ``keras.saving.register_keras_serializable`` only need their
        module imported: do that here and return ``{}``.
        """
        return {}


class Loss(Component):
    """Builds a Keras loss for one-hot targets and per-class probability outputs."""

    kind = "loss"

    def build(self, n_classes: int) -> Any:
        raise NotImplementedError

    def custom_objects(self) -> dict[str, Any]:
        """Keras objects a model compiled with this loss needs to load; see Architecture."""
        return {}


# --- evaluation -------------------------------------------------------------------------


class Metric(Component):
    """A per-class score of a prediction mask against a truth mask, spacing aware."""

    kind = "metric"
    higher_is_better: ClassVar[bool] = True

    def compute(
        self,
        prediction: npt.NDArray[np.bool_],
        truth: npt.NDArray[np.bool_],
        spacing: Sequence[float],
    ) -> float:
        raise NotImplementedError


class Fold(BaseModel):
    """One train/test split of case ids."""

    model_config = ConfigDict(extra="forbid")

    name: str
    train: list[str]
    test: list[str]


class Evaluator(Component):
    """A validation scheme: splits case ids into folds, seeded and reproducible."""

    kind = "evaluator"

    def split(self, case_ids: Sequence[str], seed: int) -> list[Fold]:
        raise NotImplementedError


BASES: dict[str, type[Component]] = {
    "io": ImageIO,
    "subfunction": Subfunction,
    "augmentation": Augmentation,
    "architecture": Architecture,
    "loss": Loss,
    "metric": Metric,
    "evaluator": Evaluator,
}
