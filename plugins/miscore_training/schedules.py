"""Learning-rate schedules for ``training.lr_schedule``.

``build(initial_rate, total_steps)`` returns a float (a constant rate) or a built-in Keras
``LearningRateSchedule``; built-in schedules are saved with the optimizer in ``model.keras``, so
``miscore train --resume`` continues them from the optimizer's step count. Keras is imported
only in ``build``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

import miscore


class ConstantRate(miscore.LRSchedule):
    """The rate stays ``training.learning_rate`` (``reduce_lr_patience`` may still halve it)."""

    name = "constant"

    def build(self, initial_rate: float, total_steps: int) -> float:
        return float(initial_rate)


class PolyParams(miscore.Params):
    """Parameters of the polynomial decay."""

    power: float = Field(0.9, gt=0.0, description="exponent of (1 - step / all steps)")
    end_rate: float = Field(0.0, ge=0.0, description="the rate reached at the last step")


class PolyRate(miscore.LRSchedule):
    """nnU-Net's poly schedule: ``rate * (1 - step / all steps) ** power`` down to ``end_rate``."""

    name = "poly"
    Params: ClassVar[type[miscore.Params]] = PolyParams

    def build(self, initial_rate: float, total_steps: int) -> Any:
        import keras

        params = self.params
        assert isinstance(params, PolyParams)
        return keras.optimizers.schedules.PolynomialDecay(
            initial_rate,
            decay_steps=max(1, total_steps),
            end_learning_rate=params.end_rate,
            power=params.power,
        )


class CosineParams(miscore.Params):
    """Parameters of the cosine schedule."""

    warmup: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="share of all steps over which the rate rises linearly from 0 first",
    )
    end_share: float = Field(
        0.0, ge=0.0, le=1.0, description="the last step's rate as a share of the initial rate"
    )


class CosineRate(miscore.LRSchedule):
    """Cosine decay to ``end_share`` of the rate at the last step, after an optional warm-up."""

    name = "cosine"
    Params: ClassVar[type[miscore.Params]] = CosineParams

    def build(self, initial_rate: float, total_steps: int) -> Any:
        import keras

        params = self.params
        assert isinstance(params, CosineParams)
        total = max(1, total_steps)
        warmup = round(total * params.warmup)
        if warmup == 0:
            return keras.optimizers.schedules.CosineDecay(
                initial_rate, decay_steps=total, alpha=params.end_share
            )
        return keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=max(1, total - warmup),
            alpha=params.end_share,
            warmup_target=initial_rate,
            warmup_steps=warmup,
        )
