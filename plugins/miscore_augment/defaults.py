"""The default augmentation set: what ``augmentation: default`` stands for.

Close to nnU-Net's choice of probabilities. It reaches configs through the
``miscore_defaults`` hook (``trylast``), so another plugin can replace it.
"""

from __future__ import annotations

from typing import Any

DEFAULT_AUGMENTATION: tuple[dict[str, Any], ...] = (
    {"name": "flip", "p": 1.0},
    {"name": "rotate", "p": 0.2, "max_angle": 15.0},
    {"name": "scale", "p": 0.2, "min": 0.85, "max": 1.25},
    {"name": "elastic", "p": 0.1, "magnitude": 3.0, "spacing": 24},
    {"name": "gaussian_noise", "p": 0.1, "min_std": 0.0, "max_std": 0.1},
    {"name": "gaussian_blur", "p": 0.2, "min_sigma": 0.5, "max_sigma": 1.0},
    {"name": "brightness", "p": 0.15, "min": 0.75, "max": 1.25},
    {"name": "contrast", "p": 0.15, "min": 0.75, "max": 1.25},
    {"name": "low_resolution", "p": 0.25, "min_zoom": 0.5, "max_zoom": 1.0},
    {"name": "gamma", "p": 0.3, "min": 0.7, "max": 1.5},
)


def default_augmentation() -> list[dict[str, Any]]:
    """A fresh copy of ``DEFAULT_AUGMENTATION``: config entries ``{name, p, ...}``."""
    return [dict(entry) for entry in DEFAULT_AUGMENTATION]
