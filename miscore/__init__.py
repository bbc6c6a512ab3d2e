"""miscore: medical image segmentation with deep learning, a small kernel and plugins.

This module is the one public API, for users and for plugins alike: a plugin imports
``miscore`` and nothing below it (``miscore.core``, ``miscore.pipeline``... are the kernel's
own rooms and may change). ``PLUGIN_API_VERSION`` says which contract this is; a plugin
that needs a newer one declares it (``MISCORE_PLUGIN_API = "1.0"`` in its module) and is
refused, with a clear message, by an older miscore.

Importing ``miscore`` is light: TensorFlow loads only where a model is built or run.
"""

from __future__ import annotations

from miscore.api import Model, Pipeline, export_model, load_model, open_dataset, synthesize
from miscore.core.atomic import atomic_output
from miscore.core.components import (
    Architecture,
    Augmentation,
    AugmentationParams,
    Callback,
    Component,
    DatasetLayout,
    Evaluator,
    Fold,
    ImageIO,
    Loss,
    LRSchedule,
    Metric,
    Params,
    Postprocessor,
    Sampler,
    Subfunction,
)
from miscore.core.config import (
    ComponentSpec,
    Config,
    PatchingConfig,
    apply_defaults,
    check_components,
    load_config,
    parse_config,
)
from miscore.core.errors import (
    CacheError,
    ComponentNotFoundError,
    ConfigError,
    InputError,
    MiscoreError,
    PipelineError,
    PluginError,
)
from miscore.core.hookspecs import hookimpl
from miscore.core.labels import as_label_volume, label_dtype
from miscore.core.plugins import PluginManager
from miscore.core.registry import ModelEntry, Registry
from miscore.core.spatial import SpatialTransform
from miscore.core.version import PLUGIN_API_VERSION, __version__
from miscore.core.volume import Case, CaseSource, Volume, check_case_id
from miscore.data.dataset import Dataset, DatasetFinder
from miscore.pipeline.augmenting import apply_spatial_transforms
from miscore.pipeline.crossval import cross_validate
from miscore.pipeline.evaluate import read_folds_file
from miscore.pipeline.package import ModelCard, ModelSource, resolve_model
from miscore.pipeline.patching import centred_window, is_blank, pick_foreground, random_window

__all__ = [
    "PLUGIN_API_VERSION",
    "Architecture",
    "Augmentation",
    "AugmentationParams",
    "CacheError",
    "Callback",
    "Case",
    "CaseSource",
    "Component",
    "ComponentNotFoundError",
    "ComponentSpec",
    "Config",
    "ConfigError",
    "Dataset",
    "DatasetFinder",
    "DatasetLayout",
    "Evaluator",
    "Fold",
    "ImageIO",
    "InputError",
    "LRSchedule",
    "Loss",
    "Metric",
    "MiscoreError",
    "Model",
    "ModelCard",
    "ModelEntry",
    "ModelSource",
    "Params",
    "PatchingConfig",
    "Pipeline",
    "PipelineError",
    "PluginError",
    "PluginManager",
    "Postprocessor",
    "Registry",
    "Sampler",
    "SpatialTransform",
    "Subfunction",
    "Volume",
    "__version__",
    "apply_defaults",
    "apply_spatial_transforms",
    "as_label_volume",
    "atomic_output",
    "centred_window",
    "check_case_id",
    "check_components",
    "cross_validate",
    "export_model",
    "hookimpl",
    "is_blank",
    "label_dtype",
    "load_config",
    "load_model",
    "open_dataset",
    "parse_config",
    "pick_foreground",
    "random_window",
    "read_folds_file",
    "resolve_model",
    "synthesize",
]
