"""The U-Net family in 2D and 3D as Keras 3 models.

Architectures: ``unet`` (standard), ``unet_plain`` (nnU-Net style), ``unet_residual``,
``unet_dense``, ``unet_multires``, ``unet_attention``, ``unet_compact``. Each ``build``s a
functional Keras model whose output has ``n_classes`` channels with a softmax. Keras is
imported only inside ``build``; see docs/models.md.
"""

from __future__ import annotations

from typing import Any

import miscore
from miscore_unet.attention import AttentionUNet
from miscore_unet.base import UNetArchitecture, UNetParams
from miscore_unet.compact import CompactUNet
from miscore_unet.dense import DenseUNet
from miscore_unet.multires import MultiResUNet
from miscore_unet.residual import ResidualUNet
from miscore_unet.standard import PlainUNet, UNet

ARCHITECTURES: list[type[miscore.Architecture]] = [
    UNet,
    PlainUNet,
    ResidualUNet,
    DenseUNet,
    MultiResUNet,
    AttentionUNet,
    CompactUNet,
]

__all__ = [
    "ARCHITECTURES",
    "AttentionUNet",
    "CompactUNet",
    "DenseUNet",
    "MultiResUNet",
    "PlainUNet",
    "ResidualUNet",
    "UNet",
    "UNetArchitecture",
    "UNetParams",
]


@miscore.hookimpl
def miscore_register_architectures() -> list[type[miscore.Architecture]]:
    return list(ARCHITECTURES)


@miscore.hookimpl(trylast=True)
def miscore_defaults() -> dict[str, Any]:
    return {"architecture": {"name": "unet"}}


#: why the planned U-Net is normalised and activated as it is (the planner adds its depth)
PLANNED_REASON = (
    "instance norm, leaky ReLU as nnU-Net (batch norm's moving statistics lag behind in short "
    "runs: a model good in training mode predicts one class everywhere)"
)


@miscore.hookimpl(trylast=True)
def miscore_plan_choices() -> dict[str, Any]:
    return {
        "architecture": {"name": "unet", "normalization": "instance", "activation": "leaky_relu"},
        "reasons": {"model.architecture": PLANNED_REASON},
    }
