"""What every U-Net of this plugin shares: its parameters, input checks and output heads.

A family module subclasses ``UNetArchitecture`` and implements ``decoder_features``: the
network from the input tensor to the decoder's feature maps, finest level first. This base
adds the softmax head (and the deep-supervision heads) and makes the Keras model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

import miscore
from miscore_unet.blocks import BlockSpec, output_heads

Normalization = Literal["batch", "instance", "none"]
ActivationName = Literal["relu", "leaky_relu", "elu", "gelu", "swish", "mish"]


class UNetParams(miscore.Params):
    """Parameters every U-Net variant takes."""

    filters: int = Field(32, ge=1, description="feature maps of the first level; doubled per level")
    depth: int = Field(4, ge=1, le=8, description="number of downsamplings (2x each)")
    max_filters: int | None = Field(
        None, ge=1, description="cap on feature maps per level (None: no cap)"
    )
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="dropout rate at the end of every block (0: none)"
    )
    normalization: Normalization = Field(
        "batch", description="batch, instance (GroupNormalization(groups=-1)) or none"
    )
    activation: ActivationName = Field(
        "relu", description="activation after each convolution (leaky_relu: slope 0.01)"
    )
    deep_supervision: bool = Field(
        False,
        description="add one extra softmax output per coarser decoder level, upsampled to the "
        "input size (outputs: segmentation, deep_supervision_1, ...)",
    )


class UNetArchitecture(miscore.Architecture):
    """Base of the U-Net family: checks the input, builds the body, adds the heads."""

    Params = UNetParams
    params: UNetParams

    def build(self, input_shape: Sequence[int | None], n_classes: int) -> Any:
        """Build the Keras model for ``(*spatial, channels)`` inputs and ``n_classes`` outputs.

        The output has ``n_classes`` channels with a softmax over them (a sigmoid when
        ``n_classes`` is 1). With ``deep_supervision`` the model has several outputs, the full
        resolution segmentation first.
        """
        import keras

        ndim = self.check_input(input_shape, n_classes)
        spec = BlockSpec(
            ndim=ndim,
            normalization=self.params.normalization,
            activation=self.params.activation,
            dropout=self.params.dropout,
        )
        inputs = keras.Input(shape=tuple(input_shape), name="image")
        features = self.decoder_features(inputs, spec)
        heads = output_heads(features, n_classes, spec, self.params.deep_supervision)
        outputs = heads if len(heads) > 1 else heads[0]
        return keras.Model(inputs, outputs, name=f"{self.name}_{ndim}d")

    def decoder_features(self, inputs: Any, spec: BlockSpec) -> list[Any]:
        """The decoder's output feature maps, level 0 (input resolution) first."""
        raise NotImplementedError

    def level_filters(self, level: int) -> int:
        """Feature maps at ``level`` (0 = input resolution): doubled per level, capped."""
        filters = self.params.filters * (1 << level)
        cap = self.params.max_filters
        return min(filters, cap) if cap is not None else filters

    def check_input(self, input_shape: Sequence[int | None], n_classes: int) -> int:
        """Validate the build arguments; return the number of spatial dimensions."""
        shape = tuple(input_shape)
        ndim = len(shape) - 1
        if ndim not in self.dims:
            raise miscore.InputError(
                f"{self.name}: input_shape {shape} must be (*spatial, channels) with "
                f"{' or '.join(map(str, self.dims))} spatial axes"
            )
        channels = shape[-1]
        if channels is None or channels < 1:
            raise miscore.InputError(
                f"{self.name}: input_shape {shape} needs a known channel count (last entry)"
            )
        if n_classes < 1:
            raise miscore.InputError(f"{self.name}: n_classes is {n_classes}; it must be >= 1")
        step = 2**self.params.depth
        for size in shape[:-1]:
            if size is not None and size % step:
                raise miscore.InputError(
                    f"{self.name}: spatial size {size} in input_shape {shape} is not a "
                    f"multiple of {step} (2**depth, depth={self.params.depth}); choose a patch "
                    f"size divisible by {step} or a smaller depth"
                )
        return ndim
