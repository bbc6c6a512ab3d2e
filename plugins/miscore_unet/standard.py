"""The standard U-Net (Ronneberger et al. 2015) and the plain, nnU-Net-style U-Net."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from miscore_unet.base import ActivationName, Normalization, UNetArchitecture, UNetParams
from miscore_unet.blocks import BlockSpec, conv_norm_act, double_conv, dropout, encoder_decoder


class UNet(UNetArchitecture):
    """The standard U-Net: two convolutions per level, max pooling, transposed convolutions."""

    name = "unet"

    class Params(UNetParams):
        pass

    def decoder_features(self, inputs: Any, spec: BlockSpec) -> list[Any]:
        def block(x: Any, filters: int, level: int) -> Any:
            return double_conv(x, filters, spec)

        return encoder_decoder(
            inputs, spec, self.params.depth, self.level_filters, encode=block, decode=block
        )


class PlainUNet(UNetArchitecture):
    """The plain U-Net of nnU-Net: strided-convolution downsampling, capped feature maps.

    Defaults follow nnU-Net: instance normalization, leaky ReLU, at most 320 feature maps.
    """

    name = "unet_plain"

    class Params(UNetParams):
        max_filters: int | None = Field(
            320, ge=1, description="cap on feature maps per level (None: no cap)"
        )
        normalization: Normalization = Field(
            "instance", description="batch, instance (GroupNormalization(groups=-1)) or none"
        )
        activation: ActivationName = Field(
            "leaky_relu", description="activation after each convolution (leaky_relu: 0.01)"
        )

    def decoder_features(self, inputs: Any, spec: BlockSpec) -> list[Any]:
        def encode(x: Any, filters: int, level: int) -> Any:
            # Every level below the first starts with a stride-2 convolution instead of pooling.
            x = conv_norm_act(x, filters, spec, strides=2 if level > 0 else 1)
            x = conv_norm_act(x, filters, spec)
            return dropout(x, spec)

        def decode(x: Any, filters: int, level: int) -> Any:
            return double_conv(x, filters, spec)

        return encoder_decoder(
            inputs,
            spec,
            self.params.depth,
            self.level_filters,
            encode=encode,
            decode=decode,
            pool=False,
        )
