"""The validation schemes: k-fold, leave-one-out, percentage split, explicit lists or file.

Every scheme sorts the case ids first, so the folds depend only on the set of ids, the
params and the seed, never on the order in which a folder listed the cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
from pydantic import Field, model_validator

import miscore
from miscore import read_folds_file


def sorted_unique(case_ids: Sequence[str]) -> list[str]:
    """The ids sorted; ``InputError`` on duplicates or an empty list."""
    ids = sorted(case_ids)
    duplicates = sorted({c for c, d in pairwise(ids) if c == d})
    if duplicates:
        raise miscore.InputError(f"case ids given twice: {', '.join(duplicates)}")
    if not ids:
        raise miscore.InputError("no cases to split; the dataset is empty")
    return ids


def ordered(ids: list[str], shuffle: bool, seed: int) -> list[str]:
    """``ids`` permuted by ``numpy.random.default_rng(seed)`` when ``shuffle``."""
    if not shuffle:
        return list(ids)
    rng = np.random.default_rng(seed)
    return [ids[i] for i in rng.permutation(len(ids))]


def fold_of(name: str, ids: list[str], test: Sequence[str]) -> miscore.Fold:
    """A fold testing on ``test`` and training on the rest, both in sorted order."""
    held = set(test)
    return miscore.Fold(
        name=name, train=[c for c in ids if c not in held], test=[c for c in ids if c in held]
    )


class KFold(miscore.Evaluator):
    """K-fold cross-validation: every case is tested once, in folds of near-equal size."""

    name = "kfold"

    class Params(miscore.Params):
        folds: int = Field(5, ge=2, description="number of folds")
        shuffle: bool = Field(True, description="shuffle the cases (seeded) before splitting")

    def split(self, case_ids: Sequence[str], seed: int) -> list[miscore.Fold]:
        assert isinstance(self.params, KFold.Params)
        ids = sorted_unique(case_ids)
        k = self.params.folds
        if k > len(ids):
            raise miscore.InputError(
                f"kfold: folds={k} needs at least {k} cases; got {len(ids)}; "
                f"lower 'folds' or use 'loo'"
            )
        chunks = np.array_split(np.array(ordered(ids, self.params.shuffle, seed)), k)
        return [fold_of(f"fold_{i}", ids, list(chunk)) for i, chunk in enumerate(chunks)]


class LeaveOneOut(miscore.Evaluator):
    """Leave-one-out: one fold per case, testing on that case alone (the seed is unused)."""

    name = "loo"

    def split(self, case_ids: Sequence[str], seed: int) -> list[miscore.Fold]:
        ids = sorted_unique(case_ids)
        if len(ids) < 2:
            raise miscore.InputError("loo: needs at least 2 cases to leave one out")
        return [fold_of(f"fold_{i}", ids, [case]) for i, case in enumerate(ids)]


class PercentageSplit(miscore.Evaluator):
    """One train/test split holding out ``test_fraction`` of the cases (at least one)."""

    name = "split"

    class Params(miscore.Params):
        test_fraction: float = Field(
            0.2, gt=0.0, lt=1.0, description="share of the cases in the test set"
        )
        shuffle: bool = Field(True, description="shuffle the cases (seeded) before splitting")

    def split(self, case_ids: Sequence[str], seed: int) -> list[miscore.Fold]:
        assert isinstance(self.params, PercentageSplit.Params)
        ids = sorted_unique(case_ids)
        if len(ids) < 2:
            raise miscore.InputError("split: needs at least 2 cases (one to train, one to test)")
        n_test = min(max(round(self.params.test_fraction * len(ids)), 1), len(ids) - 1)
        test = ordered(ids, self.params.shuffle, seed)[-n_test:]
        return [fold_of("split", ids, test)]


class ExplicitSplit(miscore.Evaluator):
    """Folds given by the user: train/test id lists, or a fold file written by write_folds."""

    name = "explicit"

    class Params(miscore.Params):
        train: list[str] | None = Field(
            None, description="training case ids; None: every case not in 'test'"
        )
        test: list[str] | None = Field(
            None, description="test case ids; None: every case not in 'train'"
        )
        file: str | None = Field(
            None,
            description="a fold file (JSON from miscore.pipeline.evaluate.write_folds) to reuse",
        )

        @model_validator(mode="after")
        def _one_source(self) -> ExplicitSplit.Params:
            lists = self.train is not None or self.test is not None
            if self.file is not None and lists:
                raise ValueError("give either 'file' or 'train'/'test' lists, not both")
            if self.file is None and not lists:
                raise ValueError("give 'train' and/or 'test' case ids, or a fold 'file'")
            return self

    def split(self, case_ids: Sequence[str], seed: int) -> list[miscore.Fold]:
        assert isinstance(self.params, ExplicitSplit.Params)
        ids = sorted_unique(case_ids)
        known = set(ids)
        if self.params.file is not None:
            folds = read_folds_file(self.params.file).folds
            where = self.params.file
            for fold in folds:
                self._check_known(fold.train + fold.test, known, f"{where} fold {fold.name}")
            return folds
        train, test = self.params.train, self.params.test
        for what, listed in (("train", train), ("test", test)):
            if listed is not None:
                self._check_known(listed, known, f"explicit.{what}")
        if train is not None and test is not None:
            both = sorted(set(train) & set(test))
            if both:
                raise miscore.InputError(
                    f"explicit: cases in both train and test: {', '.join(both)}"
                )
            return [
                miscore.Fold(
                    name="explicit",
                    train=[c for c in ids if c in set(train)],
                    test=[c for c in ids if c in set(test)],
                )
            ]
        if test is not None:
            return [fold_of("explicit", ids, test)]
        assert train is not None
        held = set(train)
        return [fold_of("explicit", ids, [c for c in ids if c not in held])]

    @staticmethod
    def _check_known(listed: Sequence[str], known: set[str], where: str) -> None:
        unknown = sorted(set(listed) - known)
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise miscore.InputError(
                f"{where}: {len(unknown)} case id(s) not in the dataset: {shown}"
            )
