"""Keras building blocks the U-Net variants share, for 2D and 3D alike.

Every function imports Keras when called, so that importing this plugin stays light. Only
built-in Keras layers are used (no Lambda, no custom layer), so a saved ``model.keras`` loads
with ``keras.models.load_model(path, safe_mode=True)`` without this plugin installed.
Tensors are typed ``Any``: Keras has no type stubs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Tensor = Any
#: ``block(x, filters, level) -> y``: one level's convolutions
Block = Callable[[Tensor, int, int], Tensor]


@dataclass(frozen=True)
class BlockSpec:
    """How the convolutions of one model are made."""

    ndim: int
    normalization: str = "batch"
    activation: str = "relu"
    dropout: float = 0.0


def conv(x: Tensor, filters: int, spec: BlockSpec, kernel: int = 3, strides: int = 1) -> Tensor:
    """A 'same'-padded convolution of the model's dimensionality, without activation."""
    import keras

    layer = keras.layers.Conv2D if spec.ndim == 2 else keras.layers.Conv3D
    return layer(filters, kernel, strides=strides, padding="same")(x)


def normalize(x: Tensor, spec: BlockSpec) -> Tensor:
    """Batch norm, instance norm (one group per channel) or nothing."""
    import keras

    if spec.normalization == "batch":
        return keras.layers.BatchNormalization()(x)
    if spec.normalization == "instance":
        return keras.layers.GroupNormalization(groups=-1)(x)
    return x


def activate(x: Tensor, spec: BlockSpec) -> Tensor:
    """The model's activation; ``leaky_relu`` uses nnU-Net's negative slope of 0.01."""
    import keras

    if spec.activation == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=0.01)(x)
    return keras.layers.Activation(spec.activation)(x)


def conv_norm_act(
    x: Tensor, filters: int, spec: BlockSpec, kernel: int = 3, strides: int = 1
) -> Tensor:
    """Convolution, then normalization, then activation."""
    return activate(normalize(conv(x, filters, spec, kernel, strides), spec), spec)


def dropout(x: Tensor, spec: BlockSpec) -> Tensor:
    """Dropout at the end of a block (only while training), when the rate is above 0."""
    import keras

    return keras.layers.Dropout(spec.dropout)(x) if spec.dropout > 0 else x


def concatenate(tensors: Sequence[Tensor]) -> Tensor:
    import keras

    return keras.layers.Concatenate(axis=-1)(list(tensors))


def add(tensors: Sequence[Tensor]) -> Tensor:
    import keras

    return keras.layers.Add()(list(tensors))


def max_pool(x: Tensor, spec: BlockSpec) -> Tensor:
    import keras

    layer = keras.layers.MaxPooling2D if spec.ndim == 2 else keras.layers.MaxPooling3D
    return layer(pool_size=2)(x)


def up_conv(x: Tensor, filters: int, spec: BlockSpec) -> Tensor:
    """2x upsampling by a transposed convolution (kernel 2, stride 2)."""
    import keras

    layer = keras.layers.Conv2DTranspose if spec.ndim == 2 else keras.layers.Conv3DTranspose
    return layer(filters, 2, strides=2, padding="same")(x)


def double_conv(x: Tensor, filters: int, spec: BlockSpec) -> Tensor:
    """Two convolution-normalization-activation steps, then dropout: the classic U-Net block."""
    x = conv_norm_act(x, filters, spec)
    x = conv_norm_act(x, filters, spec)
    return dropout(x, spec)


def encoder_decoder(
    inputs: Tensor,
    spec: BlockSpec,
    depth: int,
    level_filters: Callable[[int], int],
    encode: Block,
    decode: Block,
    pool: bool = True,
    skip: Callable[[Tensor, Tensor, int], Tensor] | None = None,
) -> list[Tensor]:
    """The U shape: ``depth`` encoder levels, a bottleneck, ``depth`` decoder levels.

    Args:
        encode: block of encoder level ``level`` (``depth`` is the bottleneck).
        decode: block applied to ``concat(upsampled, skip)`` at each decoder level.
        pool: downsample by max pooling between levels; False when ``encode`` itself
            downsamples (a strided first convolution for every level above 0).
        skip: transforms a skip connection before the concatenation, given the upsampled
            decoder tensor (attention gates, residual paths).

    Returns:
        The decoder's feature maps, level 0 (input resolution) first.
    """
    skips: list[Tensor] = []
    x = inputs
    for level in range(depth):
        x = encode(x, level_filters(level), level)
        skips.append(x)
        if pool:
            x = max_pool(x, spec)
    x = encode(x, level_filters(depth), depth)
    decoded: list[Tensor] = []
    for level in reversed(range(depth)):
        x = up_conv(x, level_filters(level), spec)
        bridge = skips[level] if skip is None else skip(skips[level], x, level)
        x = decode(concatenate([x, bridge]), level_filters(level), level)
        decoded.append(x)
    return decoded[::-1]


def output_heads(
    features: Sequence[Tensor], n_classes: int, spec: BlockSpec, deep_supervision: bool
) -> list[Tensor]:
    """1x1 convolutions to class probabilities: the segmentation, then coarser levels.

    The activation is a softmax over the classes (a sigmoid for one class), computed in
    float32. Deep-supervision outputs come from decoder levels 1..depth-1 and are upsampled
    (nearest) to the input size, so every output takes the same target.
    """
    import keras

    activation = "softmax" if n_classes > 1 else "sigmoid"
    logits = conv(features[0], n_classes, spec, kernel=1)
    heads = [keras.layers.Activation(activation, dtype="float32", name="segmentation")(logits)]
    if not deep_supervision:
        return heads
    upsampling = keras.layers.UpSampling2D if spec.ndim == 2 else keras.layers.UpSampling3D
    for level in range(1, len(features)):
        logits = conv(features[level], n_classes, spec, kernel=1)
        logits = upsampling(size=2**level)(logits)
        name = f"deep_supervision_{level}"
        heads.append(keras.layers.Activation(activation, dtype="float32", name=name)(logits))
    return heads
