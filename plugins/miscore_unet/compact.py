"""The compact U-Net (Kolarik et al. 2019, as in MIScnn): blocks concatenate their input."""

from __future__ import annotations

from typing import Any

from miscore_unet.base import UNetArchitecture, UNetParams
from miscore_unet.blocks import BlockSpec, concatenate, conv_norm_act, dropout, encoder_decoder


def compact_block(x: Any, filters: int, spec: BlockSpec) -> Any:
    """Two convolutions whose result is concatenated with the block's input."""
    y = conv_norm_act(x, filters, spec)
    y = conv_norm_act(y, filters, spec)
    return dropout(concatenate([x, y]), spec)


class CompactUNet(UNetArchitecture):
    """The compact U-Net: each block's output is its input concatenated with two convolutions.

    The short concatenations reuse features, so fewer base filters reach a given accuracy;
    the channel count per level is the block's input plus ``filters``.
    """

    name = "unet_compact"

    class Params(UNetParams):
        pass

    def decoder_features(self, inputs: Any, spec: BlockSpec) -> list[Any]:
        def block(x: Any, filters: int, level: int) -> Any:
            return compact_block(x, filters, spec)

        return encoder_decoder(
            inputs, spec, self.params.depth, self.level_filters, encode=block, decode=block
        )
