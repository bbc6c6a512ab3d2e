"""Overlap metrics from the confusion counts of two boolean masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

import miscore


@dataclass(frozen=True)
class Confusion:
    """Voxel counts of a prediction mask against a truth mask."""

    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def of(cls, prediction: npt.NDArray[Any], truth: npt.NDArray[Any]) -> Confusion:
        prediction = np.asarray(prediction, dtype=bool)
        truth = np.asarray(truth, dtype=bool)
        if prediction.shape != truth.shape:
            raise miscore.InputError(
                f"prediction mask shape {prediction.shape} differs from truth mask shape "
                f"{truth.shape}; resample one onto the other's grid first"
            )
        n_pred = int(np.count_nonzero(prediction))
        n_true = int(np.count_nonzero(truth))
        tp = int(np.count_nonzero(prediction & truth))
        fp = n_pred - tp
        fn = n_true - tp
        return cls(tp=tp, fp=fp, fn=fn, tn=int(prediction.size) - tp - fp - fn)

    @property
    def identical(self) -> bool:
        """True when the masks agree on every voxel."""
        return self.fp == 0 and self.fn == 0

    def ratio(self, numerator: int, denominator: int) -> float:
        """``numerator / denominator``; 1 when the denominator is 0 and the masks are identical,
        else 0 (the empty-mask rule of docs/metrics.md)."""
        if denominator == 0:
            return 1.0 if self.identical else 0.0
        return numerator / denominator


class _OverlapMetric(miscore.Metric):
    def compute(
        self,
        prediction: npt.NDArray[np.bool_],
        truth: npt.NDArray[np.bool_],
        spacing: Sequence[float],
    ) -> float:
        return self.score(Confusion.of(prediction, truth))

    def score(self, c: Confusion) -> float:
        raise NotImplementedError


class Dice(_OverlapMetric):
    """Dice similarity coefficient 2|P and T| / (|P|+|T|); 1 when both masks are empty."""

    name = "dice"

    def score(self, c: Confusion) -> float:
        return c.ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn)


class IoU(_OverlapMetric):
    """Intersection over union (Jaccard index) |P and T| / |P or T|; 1 when both masks are empty."""

    name = "iou"

    def score(self, c: Confusion) -> float:
        return c.ratio(c.tp, c.tp + c.fp + c.fn)


class Precision(_OverlapMetric):
    """Precision (positive predictive value) TP / (TP+FP)."""

    name = "precision"

    def score(self, c: Confusion) -> float:
        return c.ratio(c.tp, c.tp + c.fp)


class Recall(_OverlapMetric):
    """Recall (sensitivity, true positive rate) TP / (TP+FN)."""

    name = "recall"

    def score(self, c: Confusion) -> float:
        return c.ratio(c.tp, c.tp + c.fn)


class Specificity(_OverlapMetric):
    """Specificity (true negative rate) TN / (TN+FP)."""

    name = "specificity"

    def score(self, c: Confusion) -> float:
        return c.ratio(c.tn, c.tn + c.fp)
