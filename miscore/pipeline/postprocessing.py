"""Keeping the largest connected component of a class, and deciding from data where it helps.

``keep_largest_component(label, classes)`` removes every component of each listed class but
its largest (face connectivity); the removed voxels become background. ``inference.keep_largest``
says which classes ``Predictor.predict_case`` does this for, on the case's own grid.

``miscore cv`` decides that setting from the validation folds (nnU-Net's rule, per class)::

    trial = LargestComponentTrial([1, 2])
    for case_id, prediction, truth in scored_cases:  # label arrays on the same grid
        trial.add(case_id, prediction, truth)
    decision = trial.decide()
    decision.keep_largest  # e.g. [1]: write it into inference.keep_largest

For each foreground class, the mean Dice over the test cases is computed as predicted and with
only that class's largest component kept. A class keeps its largest component when that mean
is strictly higher. Removing components of one class only turns its voxels into background, so
no other class's Dice can change: a class that gets worse is never chosen, and no class gets
worse through another's choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from miscore.core.errors import InputError
from miscore.pipeline.evaluate import MetricValue

#: the metric the decision compares (as the report's ``dice``: 1 when both masks are empty)
DECISION_METRIC: Literal["dice"] = "dice"


def largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The largest face-connected component of a boolean mask (the mask when it has <= 1)."""
    from scipy import ndimage

    components, count = ndimage.label(mask)
    if count <= 1:
        return np.asarray(mask, dtype=bool)
    sizes = np.bincount(components.ravel())[1:]
    kept: npt.NDArray[np.bool_] = components == int(np.argmax(sizes)) + 1
    return kept


def keep_largest_component(
    label: npt.NDArray[np.integer], classes: Iterable[int] | None = None
) -> npt.NDArray[np.integer]:
    """Keep only the largest connected component of each class in ``classes`` (default: every
    foreground class present); the other components become background (0)."""
    out = label.copy()
    wanted = [int(c) for c in np.unique(label) if c != 0] if classes is None else list(classes)
    for class_id in wanted:
        mask = label == class_id
        out[mask & ~largest_component(mask)] = 0
    return out


def dice(prediction: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> float:
    """Dice of two boolean masks; 1 when both are empty (the report's ``dice``)."""
    overlap = int(np.count_nonzero(prediction & truth))
    total = int(np.count_nonzero(prediction)) + int(np.count_nonzero(truth))
    return 1.0 if total == 0 else 2.0 * overlap / total


def keep_largest_setting(kept: Sequence[int], classes: Sequence[int]) -> bool | list[int]:
    """The ``inference.keep_largest`` value for the ``kept`` classes of the foreground
    ``classes``: false for none, true for all, else the list."""
    chosen = sorted(set(kept))
    if not chosen:
        return False
    return True if chosen == sorted(set(classes)) else chosen


class ClassTrial(BaseModel):
    """One class of the decision: its mean Dice as predicted and with its largest component."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_id: int = Field(alias="class")
    dice_before: MetricValue = Field(description="mean Dice over the test cases, as predicted")
    dice_largest: MetricValue = Field(description="mean Dice with only its largest component")
    dice_after: MetricValue = Field(description="mean Dice with the decided setting")
    changed: int = Field(description="test cases where keeping the largest component changed it")
    keep: bool = Field(description="keep only the largest component of this class")


class PostprocessingDecision(BaseModel):
    """``report.json``'s ``postprocessing``: which classes keep only their largest component."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["dice"] = DECISION_METRIC
    cases: int = Field(description="test cases the decision is computed on")
    keep_largest: bool | list[int] = Field(description="the decided inference.keep_largest")
    classes: list[ClassTrial]
    applied: bool = Field(
        False, description="written into the fold models' config.yaml (inference.keep_largest)"
    )

    def describe(self) -> str:
        """One line: the decision and each class's mean Dice before -> after."""
        parts = [
            f"class {c.class_id} {c.dice_before:.4f} -> {c.dice_after:.4f}"
            + ("" if c.keep else f" (largest only: {c.dice_largest:.4f}, not kept)")
            for c in self.classes
        ]
        where = "written into the fold models" if self.applied else "not written into the models"
        return (
            f"postprocessing: inference.keep_largest = {_yaml(self.keep_largest)} "
            f"(mean {self.metric} over {self.cases} test cases: {'; '.join(parts)}; {where})"
        )


def _yaml(value: bool | list[int]) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class LargestComponentTrial:
    """Dice of each class with and without its largest component kept, case by case.

    Only numbers are kept per case, so any number of cases streams through.
    """

    def __init__(self, classes: Sequence[int]) -> None:
        self.classes = [int(c) for c in classes]
        self.before: dict[int, list[float]] = {c: [] for c in self.classes}
        self.largest: dict[int, list[float]] = {c: [] for c in self.classes}
        self.changed: dict[int, int] = dict.fromkeys(self.classes, 0)
        self.cases = 0

    def add(
        self, case_id: str, prediction: npt.NDArray[np.integer], truth: npt.NDArray[np.integer]
    ) -> None:
        """Score one case: label maps (class ids) of the same shape."""
        if prediction.shape != truth.shape:
            raise InputError(
                f"case {case_id}: the prediction's shape {prediction.shape} differs from the "
                f"ground truth's {truth.shape}"
            )
        for class_id in self.classes:
            predicted = prediction == class_id
            expected = truth == class_id
            kept = largest_component(predicted)
            self.before[class_id].append(dice(predicted, expected))
            self.largest[class_id].append(dice(kept, expected))
            self.changed[class_id] += int(not np.array_equal(kept, predicted))
        self.cases += 1

    def decide(self) -> PostprocessingDecision:
        """Keep a class's largest component where it raises that class's mean Dice."""
        trials = []
        for class_id in self.classes:
            before = float(np.mean(self.before[class_id])) if self.cases else float("nan")
            largest = float(np.mean(self.largest[class_id])) if self.cases else float("nan")
            keep = bool(largest > before)  # NaN (no cases) compares False: nothing is kept
            trials.append(
                ClassTrial(
                    class_id=class_id,
                    dice_before=before,
                    dice_largest=largest,
                    # a class's setting changes no other class's Dice (see the module docstring)
                    dice_after=largest if keep else before,
                    changed=self.changed[class_id],
                    keep=keep,
                )
            )
        kept = [t.class_id for t in trials if t.keep]
        return PostprocessingDecision(
            cases=self.cases,
            keep_largest=keep_largest_setting(kept, self.classes),
            classes=trials,
        )
