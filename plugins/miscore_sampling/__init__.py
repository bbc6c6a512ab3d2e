"""Patch samplers: which training windows the ``random`` and ``slice`` modes take.

- ``foreground`` (the default): random windows, a ``patching.foreground_ratio`` share of them
  centred near a voxel of ``foreground_class`` (or of any foreground class), as nnU-Net
  oversamples; with ``skip_blanks``, windows holding only background are redrawn.
"""

from __future__ import annotations

from typing import Any

import miscore
from miscore_sampling.foreground import ForegroundSampler

__all__ = ["ForegroundSampler"]


@miscore.hookimpl
def miscore_register_samplers() -> list[type[miscore.Sampler]]:
    return [ForegroundSampler]


@miscore.hookimpl(trylast=True)
def miscore_defaults() -> dict[str, Any]:
    return {"sampler": {"name": ForegroundSampler.name}}
