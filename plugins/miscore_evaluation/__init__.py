"""Validation schemes: k-fold, leave-one-out, percentage split, explicit lists.

Each is an ``Evaluator``: ``split(case_ids, seed) -> list[Fold]``, seeded and reproducible.
``miscore.pipeline.evaluate.write_folds`` records folds in a JSON file; the ``explicit``
scheme reads
such a file back (``{name: explicit, file: folds.json}``).
"""

from __future__ import annotations

from typing import Any

import miscore
from miscore_evaluation.schemes import ExplicitSplit, KFold, LeaveOneOut, PercentageSplit

__version__ = miscore.__version__

EVALUATORS: list[type[miscore.Evaluator]] = [KFold, LeaveOneOut, PercentageSplit, ExplicitSplit]


@miscore.hookimpl
def miscore_register_evaluators() -> list[type[miscore.Evaluator]]:
    return list(EVALUATORS)


@miscore.hookimpl(trylast=True)
def miscore_defaults() -> dict[str, Any]:
    return {"evaluator": "kfold"}


__all__ = ["EVALUATORS", "ExplicitSplit", "KFold", "LeaveOneOut", "PercentageSplit"]
