"""The dense U-Net: every level is a densely connected block (Huang et al. 2017)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from miscore_unet.base import UNetArchitecture, UNetParams
from miscore_unet.blocks import BlockSpec, concatenate, conv_norm_act, dropout, encoder_decoder


def dense_block(x: Any, filters: int, layers: int, spec: BlockSpec) -> Any:
    """``layers`` convolutions, each fed the concatenation of all before it.

    A 1x1 transition convolution brings the concatenation back to ``filters`` maps, so memory
    per level stays that of ``layers + 1`` feature maps of ``filters`` channels.
    """
    features = [x]
    for _ in range(layers):
        source = features[0] if len(features) == 1 else concatenate(features)
        features.append(conv_norm_act(source, filters, spec))
    y = conv_norm_act(concatenate(features), filters, spec, kernel=1)
    return dropout(y, spec)


class DenseUNet(UNetArchitecture):
    """The dense U-Net: U-Net levels made of dense blocks with a 1x1 transition."""

    name = "unet_dense"

    class Params(UNetParams):
        block_layers: int = Field(3, ge=1, description="convolutions per dense block")

    params: Params

    def decoder_features(self, inputs: Any, spec: BlockSpec) -> list[Any]:
        def block(x: Any, filters: int, level: int) -> Any:
            return dense_block(x, filters, self.params.block_layers, spec)

        return encoder_decoder(
            inputs, spec, self.params.depth, self.level_filters, encode=block, decode=block
        )
