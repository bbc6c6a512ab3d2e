"""miscore: medical image segmentation with deep learning, a small kernel and plugins.

Importing ``miscore`` is light: TensorFlow loads only where a model is built or run.
"""

from __future__ import annotations

__version__ = "0.1.0"

from miscore.api import Model, Pipeline, load_model, open_dataset, synthesize
from miscore.atomic import atomic_output
from miscore.components import (
    Architecture,
    Augmentation,
    AugmentationParams,
    Component,
    Evaluator,
    Fold,
    ImageIO,
    Loss,
    Metric,
    Params,
    Subfunction,
)
from miscore.config import ComponentSpec, Config, check_components, load_config, parse_config
from miscore.dataset import Dataset
from miscore.errors import (
    ComponentNotFoundError,
    ConfigError,
    InputError,
    MiscoreError,
    PipelineError,
    PluginError,
)
from miscore.hookspecs import hookimpl
from miscore.labels import as_label_volume
from miscore.plugins import PluginManager
from miscore.registry import Registry
from miscore.volume import Case, Volume, check_case_id


def cross_validate(*args: object, **kwargs: object) -> object:
    """Train and evaluate every fold of a validation scheme (``miscore.crossval``)."""
    import importlib

    return importlib.import_module("miscore.crossval").cross_validate(*args, **kwargs)


__all__ = [
    "Architecture",
    "Augmentation",
    "AugmentationParams",
    "Case",
    "Component",
    "ComponentNotFoundError",
    "ComponentSpec",
    "Config",
    "ConfigError",
    "Dataset",
    "Evaluator",
    "Fold",
    "ImageIO",
    "InputError",
    "Loss",
    "Metric",
    "MiscoreError",
    "Model",
    "Params",
    "Pipeline",
    "PipelineError",
    "PluginError",
    "PluginManager",
    "Registry",
    "Subfunction",
    "Volume",
    "__version__",
    "as_label_volume",
    "atomic_output",
    "check_case_id",
    "check_components",
    "cross_validate",
    "hookimpl",
    "load_config",
    "load_model",
    "open_dataset",
    "parse_config",
    "synthesize",
]
