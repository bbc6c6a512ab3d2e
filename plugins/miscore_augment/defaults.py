"""The augmentation sets this plugin supplies: the default set and the planned set.

``DEFAULT_AUGMENTATION`` is what ``augmentation: default`` stands for, close to nnU-Net's
choice of probabilities; it reaches configs through the ``miscore_defaults`` hook.
``planned_augmentation`` is nnU-Net's set as ``miscore plan`` writes it, through the
``miscore_plan_choices`` hook. Both hooks are ``trylast``, so another plugin can replace
either. The two sets share the flip and every intensity entry; they differ in the spatial
ranges (the planned set rotates and scales further) and in elastic deformation (planned off).
"""

from __future__ import annotations

from typing import Any

FLIP: dict[str, Any] = {"name": "flip", "p": 1.0}

#: the intensity changes of both sets, in their order
INTENSITY_SET: tuple[dict[str, Any], ...] = (
    {"name": "gaussian_noise", "p": 0.1, "min_std": 0.0, "max_std": 0.1},
    {"name": "gaussian_blur", "p": 0.2, "min_sigma": 0.5, "max_sigma": 1.0},
    {"name": "brightness", "p": 0.15, "min": 0.75, "max": 1.25},
    {"name": "contrast", "p": 0.15, "min": 0.75, "max": 1.25},
    {"name": "low_resolution", "p": 0.25, "min_zoom": 0.5, "max_zoom": 1.0},
    {"name": "gamma", "p": 0.3, "min": 0.7, "max": 1.5},
)

DEFAULT_AUGMENTATION: tuple[dict[str, Any], ...] = (
    FLIP,
    {"name": "rotate", "p": 0.2, "max_angle": 15.0},
    {"name": "scale", "p": 0.2, "min": 0.85, "max": 1.25},
    {"name": "elastic", "p": 0.1, "magnitude": 3.0, "spacing": 24},
    *INTENSITY_SET,
)

#: the reason ``miscore plan`` writes beside the planned set
PLANNED_REASON = (
    "nnU-Net's set: mirroring, rotation and scaling{rotation}, noise, blur, brightness, "
    "contrast, low resolution, gamma; elastic off (slow, no gain in nnU-Net's ablations)"
)


def default_augmentation() -> list[dict[str, Any]]:
    """A fresh copy of ``DEFAULT_AUGMENTATION``: config entries ``{name, p, ...}``."""
    return [dict(entry) for entry in DEFAULT_AUGMENTATION]


def planned_augmentation(ndim: int, thick_axis: int | None = None) -> list[dict[str, Any]]:
    """nnU-Net's augmentation set as config entries, for ``ndim``-D samples.

    With a thick axis (anisotropic 3D data), rotation stays in the plane of the other two axes,
    as nnU-Net does for such data. The spatial ones come first, so that they are composed into
    one interpolation."""
    rotate: dict[str, Any] = {"name": "rotate", "p": 0.2, "max_angle": 30.0}
    if thick_axis is not None and ndim == 3:
        rotate["planes"] = [[a for a in range(3) if a != thick_axis]]
    return [
        rotate,
        {"name": "scale", "p": 0.2, "min": 0.7, "max": 1.4},
        dict(FLIP),
        *(dict(entry) for entry in INTENSITY_SET),
    ]


def planned_reason(ndim: int, thick_axis: int | None) -> str:
    """Why the planned set: nnU-Net's, with rotation in-plane when a 3D axis is thick."""
    in_plane = thick_axis is not None and ndim == 3
    rotation = f" (rotation in-plane only: axis {thick_axis} is thick)" if in_plane else ""
    return PLANNED_REASON.format(rotation=rotation)
