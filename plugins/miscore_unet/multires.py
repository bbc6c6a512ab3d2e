"""MultiResUNet (Ibtehaz & Rahman 2020): multi-scale blocks and residual skip paths."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from miscore_unet.base import UNetArchitecture, UNetParams
from miscore_unet.blocks import (
    BlockSpec,
    activate,
    add,
    concatenate,
    conv,
    conv_norm_act,
    dropout,
    encoder_decoder,
    normalize,
)


def multires_block(x: Any, filters: int, alpha: float, spec: BlockSpec) -> Any:
    """Three chained 3x3 convolutions (receptive fields 3, 5, 7) concatenated, plus a shortcut.

    The chain splits ``alpha * filters`` maps as 1/6, 1/3, 1/2 (the paper's W = 1.67 * U).
    """
    width = alpha * filters
    sizes = [max(int(width / 6), 1), max(int(width / 3), 1), max(int(width / 2), 1)]
    c1 = conv_norm_act(x, sizes[0], spec)
    c2 = conv_norm_act(c1, sizes[1], spec)
    c3 = conv_norm_act(c2, sizes[2], spec)
    shortcut = normalize(conv(x, sum(sizes), spec, kernel=1), spec)
    y = normalize(activate(add([concatenate([c1, c2, c3]), shortcut]), spec), spec)
    return dropout(y, spec)


def res_path(x: Any, filters: int, length: int, spec: BlockSpec) -> Any:
    """``length`` residual 3x3 convolutions on a skip connection (fewer for deeper levels)."""
    for _ in range(length):
        shortcut = normalize(conv(x, filters, spec, kernel=1), spec)
        y = conv_norm_act(x, filters, spec)
        x = normalize(activate(add([y, shortcut]), spec), spec)
    return x


class MultiResUNet(UNetArchitecture):
    """MultiResUNet: MultiRes blocks instead of double convolutions, ResPaths on the skips."""

    name = "unet_multires"

    class Params(UNetParams):
        alpha: float = Field(
            1.67, gt=0.0, description="width multiplier of the MultiRes blocks (paper: 1.67)"
        )

    params: Params

    def decoder_features(self, inputs: Any, spec: BlockSpec) -> list[Any]:
        depth = self.params.depth

        def block(x: Any, filters: int, level: int) -> Any:
            return multires_block(x, filters, self.params.alpha, spec)

        def path(skip: Any, upsampled: Any, level: int) -> Any:
            # The paper's ResPath lengths 4, 3, 2, 1 from the top level down.
            return res_path(skip, self.level_filters(level), depth - level, spec)

        return encoder_decoder(
            inputs,
            spec,
            depth,
            self.level_filters,
            encode=block,
            decode=block,
            skip=path,
        )
