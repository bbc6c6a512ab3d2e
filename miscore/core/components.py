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

from miscore.core.volume import Case, CaseSource, Volume

if TYPE_CHECKING:
    import keras

    from miscore.core.config import PatchingConfig
    from miscore.core.spatial import SpatialTransform
    from miscore.data.dataset import DatasetFinder


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
    #: which reader wins a file several can read: the highest priority, ties by name; the
    #: bundled readers use 0 (their endings do not overlap), so a plugin that sets 10
    #: reads ``.nii.gz`` before the bundled ``nifti`` reader
    priority: ClassVar[int] = 0
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
        from miscore.core.labels import as_label_volume

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

        A spatial augmentation returns a ``miscore.SpatialTransform`` for an output of spatial
        ``shape``; the augmentation engine composes consecutive ones and interpolates once.
        The default, None, marks a non-spatial augmentation.
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


# --- dataset layouts, sampling, training extras, postprocessing ------------------------


class DatasetLayout(Component):
    """How one kind of dataset folder is organised: which files make which case.

    ``data.layout: NAME`` picks a layout; ``auto`` asks every installed layout's ``detect``,
    highest ``detect_priority`` first (ties by name), and takes the first that says yes. The
    bundled layouts use msd 40, image2d 30, cases 20, dicom 10 and files -10 (the catch-all:
    a single image, or a folder of images), so a plugin layout at the default 0 is asked after
    the specific ones and before ``files``. ``root`` may be a single image file or series
    folder (``finder.is_image(root)``): a layout of dataset folders says no to it.

    Both methods get a ``miscore.DatasetFinder``, the kernel's file helpers: ``reader(path)``,
    ``is_image(path)``, ``images_in(folder)``, ``entries(folder)``, ``named(folder, stems)``,
    ``case_id(id, path)``, ``file_stem(path)``, ``confined(relative, where)``.
    """

    kind = "layout"
    #: the order ``auto`` tries layouts in (higher first; ties by name)
    detect_priority: ClassVar[int] = 0
    #: what ``auto`` looks for, for the error when no layout recognises a folder, e.g.
    #: ``"imagesTr/"`` (shown as ``imagesTr/ (msd)``); empty: not mentioned
    looks_like: ClassVar[str] = ""

    def detect(self, root: Path, finder: DatasetFinder) -> bool:
        """True when ``root`` looks like a dataset of this layout (cheap: names only)."""
        raise NotImplementedError

    def find(self, root: Path, finder: DatasetFinder) -> tuple[list[CaseSource], dict[str, Any]]:
        """The cases of ``root`` (``miscore.CaseSource`` each) and dataset facts (may be ``{}``).

        The facts become ``Dataset.info`` (the ``msd`` layout gives ``dataset.json``). Check
        case ids with ``finder.case_id``; the kernel refuses duplicated ids and an empty list.
        Raise ``InputError`` naming the file or folder that is wrong.
        """
        raise NotImplementedError


class Sampler(Component):
    """Chooses the training windows of one case for an epoch (``patching.sampler``).

    A sampler drives the training windows of the ``random`` and ``slice`` modes (in ``slice``
    mode the patch is 1 long on ``slice_axis``). It does not drive ``grid`` and ``full``
    training (every grid window, shuffled: coverage, not a choice) nor inference windows
    (the sliding window): the kernel keeps those.

    Windows are drawn in the loader's main process from ``(seed, epoch, case)``, so the same
    seed gives the same windows whatever the number of loader workers; ``rng`` is the only
    source of randomness a sampler may use. ``None`` in ``patching.sampler`` is the plugins'
    default (``miscore_defaults`` key ``sampler``; bundled: ``foreground``, nnU-Net's
    foreground oversampling). Helpers: ``miscore.random_window``, ``miscore.centred_window``,
    ``miscore.pick_foreground``, ``miscore.is_blank``.
    """

    kind = "sampler"

    def windows(
        self,
        shape: tuple[int, ...],
        patch_shape: tuple[int, ...],
        count: int,
        foreground: Mapping[int, npt.NDArray[np.int64]],
        rng: np.random.Generator,
        *,
        label: Any,
        patching: PatchingConfig,
    ) -> list[tuple[slice, ...]]:
        """``count`` windows (a slice per spatial axis, each ``patch_shape`` long) in ``shape``.

        Args:
            shape: the case's spatial shape.
            patch_shape: the window shape (1 on the slice axis in ``slice`` mode).
            count: how many windows (``patching.samples_per_case``).
            foreground: voxel coordinates per foreground class (``{class: (n, ndim) array}``,
                a random subset, as the cache stores them); ``{}`` when the case has none or
                when neither ``foreground_ratio`` nor ``skip_blanks`` asked for them.
            rng: every random choice comes from it.
            label: the case's label, numpy or zarr (read a window with ``miscore.is_blank``),
                or None.
            patching: the ``patching`` section (``foreground_ratio``, ``foreground_class``,
                ``skip_blanks``...).

        Returns:
            The windows. They may reach outside the volume (the loader pads) but must overlap
            it. Fewer than ``count`` (even none) skips that share of the case this epoch, as
            ``skip_blanks`` does for a case without foreground.
        """
        raise NotImplementedError


class Callback(Component):
    """Builds a Keras callback that training adds to ``model.fit`` (``training.callbacks``)."""

    kind = "callback"

    def build(self, model_dir: Path | None) -> Any:
        """A ``keras.callbacks.Callback``; ``model_dir`` is where the model is saved, if any."""
        raise NotImplementedError


class LRSchedule(Component):
    """Builds the learning rate of every step (``training.lr_schedule``)."""

    kind = "lr_schedule"

    def build(self, initial_rate: float, total_steps: int) -> Any:
        """A float (constant rate) or a ``keras.optimizers.schedules.LearningRateSchedule``.

        A schedule class must be Keras-serialisable (registered) so ``--resume`` continues it.
        """
        raise NotImplementedError


class Postprocessor(Component):
    """Changes a label prediction after inference (``inference.postprocessing``)."""

    kind = "postprocessor"

    def apply(self, prediction: Volume, n_classes: int) -> Volume:
        """The changed prediction (integer labels on the prediction's grid)."""
        raise NotImplementedError


# --- the one table of kinds -------------------------------------------------------------

#: every component kind: its base class and the hook plugins register it with; a new kind is a
#: base class here plus its hookspec in ``hookspecs.py``
KIND_TABLE: tuple[tuple[type[Component], str], ...] = (
    (ImageIO, "miscore_register_io"),
    (Subfunction, "miscore_register_subfunctions"),
    (Augmentation, "miscore_register_augmentations"),
    (Architecture, "miscore_register_architectures"),
    (Loss, "miscore_register_losses"),
    (Metric, "miscore_register_metrics"),
    (Evaluator, "miscore_register_evaluators"),
    (DatasetLayout, "miscore_register_layouts"),
    (Sampler, "miscore_register_samplers"),
    (Callback, "miscore_register_callbacks"),
    (LRSchedule, "miscore_register_lr_schedules"),
    (Postprocessor, "miscore_register_postprocessors"),
)
KINDS: tuple[str, ...] = tuple(base.kind for base, _ in KIND_TABLE)
BASES: dict[str, type[Component]] = {base.kind: base for base, _ in KIND_TABLE}
REGISTRATION_HOOKS: dict[str, str] = {base.kind: hook for base, hook in KIND_TABLE}
