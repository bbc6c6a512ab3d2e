"""Training extras: learning-rate schedules and Keras callbacks.

Schedules (``training.lr_schedule``): ``constant`` (the same numbers as leaving the schedule out),
``poly`` (nnU-Net's, what ``miscore plan`` writes: this plugin's plan choice), ``cosine``. Callbacks
(``training.callbacks``): ``time_limit`` (stop after N minutes, resumable) and ``epoch_snapshots``
(keep every N-th epoch's model).
"""

from __future__ import annotations

from typing import Any

import miscore
from miscore_training.callbacks import EpochSnapshots, TimeLimit
from miscore_training.schedules import ConstantRate, CosineRate, PolyRate

__version__ = miscore.__version__

SCHEDULES: list[type[miscore.LRSchedule]] = [ConstantRate, PolyRate, CosineRate]
CALLBACKS: list[type[miscore.Callback]] = [TimeLimit, EpochSnapshots]


@miscore.hookimpl
def miscore_register_lr_schedules() -> list[type[miscore.LRSchedule]]:
    return list(SCHEDULES)


@miscore.hookimpl
def miscore_register_callbacks() -> list[type[miscore.Callback]]:
    return list(CALLBACKS)


@miscore.hookimpl(trylast=True)
def miscore_plan_choices() -> dict[str, Any]:
    return {
        "lr_schedule": "poly",
        "reasons": {"training.lr_schedule": "(1 - step / all steps) ** 0.9, nnU-Net's schedule"},
    }


__all__ = [
    "CALLBACKS",
    "SCHEDULES",
    "ConstantRate",
    "CosineRate",
    "EpochSnapshots",
    "PolyRate",
    "TimeLimit",
]
