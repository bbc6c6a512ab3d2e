"""miscore: medical image segmentation with deep learning, a small kernel and plugins.

Importing ``miscore`` is light: TensorFlow loads only where a model is built or run.
"""

from __future__ import annotations

import pluggy

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
from miscore.errors import (
    ComponentNotFoundError,
    ConfigError,
    InputError,
    MiscoreError,
    PipelineError,
    PluginError,
)
from miscore.labels import as_label_volume
from miscore.plugins import PluginManager
from miscore.registry import Registry
from miscore.volume import Case, Volume, check_case_id

__version__ = "0.1.0"

#: The marker plugin authors put on their hook implementations.
hookimpl = pluggy.HookimplMarker("miscore")

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
    "Evaluator",
    "Fold",
    "ImageIO",
    "InputError",
    "Loss",
    "Metric",
    "MiscoreError",
    "Params",
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
    "hookimpl",
    "load_config",
    "parse_config",
]
