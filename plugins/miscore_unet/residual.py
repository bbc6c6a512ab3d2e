"""The residual U-Net: every block adds its input (projected by a 1x1 convolution)."""

from __future__ import annotations

from typing import Any

from miscore_unet.base import UNetArchitecture, UNetParams
from miscore_unet.blocks import (
    BlockSpec,
    activate,
    add,
    conv,
    conv_norm_act,
    dropout,
    encoder_decoder,
    normalize,
)


def residual_block(x: Any, filters: int, spec: BlockSpec) -> Any:
    """conv-norm-act, conv-norm, plus a 1x1-projected shortcut, then activation."""
    shortcut = normalize(conv(x, filters, spec, kernel=1), spec)
    y = conv_norm_act(x, filters, spec)
    y = normalize(conv(y, filters, spec), spec)
    return dropout(activate(add([y, shortcut]), spec), spec)


class ResidualUNet(UNetArchitecture):
    """The residual U-Net: U-Net levels made of residual blocks (He et al. 2016)."""

    name = "unet_residual"

    class Params(UNetParams):
        pass

    def decoder_features(self, inputs: Any, spec: BlockSpec) -> list[Any]:
        def block(x: Any, filters: int, level: int) -> Any:
            return residual_block(x, filters, spec)

        return encoder_decoder(
            inputs, spec, self.params.depth, self.level_filters, encode=block, decode=block
        )
