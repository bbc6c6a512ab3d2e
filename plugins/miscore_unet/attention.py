"""The attention U-Net (Oktay et al. 2018): gates weigh the skip connections."""

from __future__ import annotations

from typing import Any

from miscore_unet.base import UNetArchitecture, UNetParams
from miscore_unet.blocks import BlockSpec, add, conv, double_conv, encoder_decoder, normalize


def attention_gate(skip: Any, gating: Any, spec: BlockSpec) -> Any:
    """Additive attention: ``skip * sigmoid(psi(relu(theta(skip) + phi(gating))))``.

    ``gating`` is the upsampled decoder tensor, at the skip's resolution. The coefficient map
    has one channel and is broadcast over the skip's channels.
    """
    import keras

    inter = max(int(skip.shape[-1]) // 2, 1)
    theta = conv(skip, inter, spec, kernel=1)
    phi = conv(gating, inter, spec, kernel=1)
    joined = keras.layers.Activation("relu")(normalize(add([theta, phi]), spec))
    psi = keras.layers.Activation("sigmoid")(conv(joined, 1, spec, kernel=1))
    return keras.layers.Multiply()([skip, psi])


class AttentionUNet(UNetArchitecture):
    """The attention U-Net: the standard U-Net with attention gates on every skip connection."""

    name = "unet_attention"

    class Params(UNetParams):
        pass

    def decoder_features(self, inputs: Any, spec: BlockSpec) -> list[Any]:
        def block(x: Any, filters: int, level: int) -> Any:
            return double_conv(x, filters, spec)

        def gate(skip: Any, upsampled: Any, level: int) -> Any:
            return attention_gate(skip, upsampled, spec)

        return encoder_decoder(
            inputs,
            spec,
            self.params.depth,
            self.level_filters,
            encode=block,
            decode=block,
            skip=gate,
        )
