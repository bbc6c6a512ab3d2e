"""The evaluation plugin: k-fold, leave-one-out, split and explicit folds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import miscore
from miscore.pipeline.evaluate import read_folds, read_folds_file, write_folds
from miscore.testing import check_component

CASES = [f"case_{i:03d}" for i in range(23)]


@pytest.fixture(scope="module")
def registry() -> miscore.Registry:
    return miscore.PluginManager(disabled=(), trace=False).registry


def evaluator(registry: miscore.Registry, spec: object) -> miscore.Evaluator:
    created = registry.create("evaluator", spec)
    assert isinstance(created, miscore.Evaluator)
    return created


def assert_partition(folds: list[miscore.Fold], cases: list[str]) -> None:
    """Each fold's train and test are disjoint and together are every case."""
    for fold in folds:
        assert not set(fold.train) & set(fold.test), fold.name
        assert sorted(fold.train + fold.test) == sorted(cases), fold.name
        assert fold.test, fold.name


def test_registered(registry: miscore.Registry) -> None:
    assert {"kfold", "loo", "split", "explicit"} <= set(registry.names("evaluator"))
    for name in ("kfold", "loo", "split"):
        check_component(registry.get_evaluator(name))


@pytest.mark.parametrize("k", [2, 5, 23])
def test_kfold_tests_every_case_once_in_near_equal_folds(
    registry: miscore.Registry, k: int
) -> None:
    folds = evaluator(registry, {"name": "kfold", "folds": k}).split(CASES, seed=3)
    assert len(folds) == k
    assert_partition(folds, CASES)
    tested = [c for f in folds for c in f.test]
    assert sorted(tested) == CASES  # every case tested exactly once
    sizes = [len(f.test) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    assert [f.name for f in folds] == [f"fold_{i}" for i in range(k)]


def test_kfold_same_seed_same_folds_any_input_order(registry: miscore.Registry) -> None:
    kfold = evaluator(registry, {"name": "kfold", "folds": 4})
    first = kfold.split(CASES, seed=11)
    assert kfold.split(list(reversed(CASES)), seed=11) == first
    assert kfold.split(CASES, seed=12) != first
    unshuffled = evaluator(registry, {"name": "kfold", "folds": 4, "shuffle": False})
    assert unshuffled.split(CASES, seed=1)[0].test == CASES[:6]
    assert unshuffled.split(CASES, seed=1) == unshuffled.split(CASES, seed=2)


def test_kfold_refuses_more_folds_than_cases(registry: miscore.Registry) -> None:
    with pytest.raises(miscore.InputError, match="folds=5 needs at least 5 cases"):
        evaluator(registry, {"name": "kfold", "folds": 5}).split(CASES[:3], seed=0)
    with pytest.raises(miscore.ConfigError, match="folds"):
        evaluator(registry, {"name": "kfold", "folds": 1})
    with pytest.raises(miscore.InputError, match="given twice: case_001"):
        evaluator(registry, "kfold").split([*CASES, "case_001"], seed=0)


def test_leave_one_out(registry: miscore.Registry) -> None:
    folds = evaluator(registry, "loo").split(CASES[:6], seed=0)
    assert [f.test for f in folds] == [[c] for c in CASES[:6]]
    assert_partition(folds, CASES[:6])
    with pytest.raises(miscore.InputError, match="at least 2"):
        evaluator(registry, "loo").split(["only"], seed=0)


@pytest.mark.parametrize(("fraction", "n_test"), [(0.2, 5), (0.5, 12), (0.01, 1), (0.99, 22)])
def test_percentage_split(registry: miscore.Registry, fraction: float, n_test: int) -> None:
    split = evaluator(registry, {"name": "split", "test_fraction": fraction})
    (fold,) = split.split(CASES, seed=5)
    assert len(fold.test) == n_test
    assert_partition([fold], CASES)
    assert split.split(CASES, seed=5) == [fold]
    assert split.split(CASES, seed=6) != [fold]


def test_explicit_lists(registry: miscore.Registry) -> None:
    spec = {"name": "explicit", "train": CASES[:3], "test": CASES[3:5]}
    (fold,) = evaluator(registry, spec).split(CASES, seed=0)
    assert fold.train == CASES[:3]
    assert fold.test == CASES[3:5]
    (rest,) = evaluator(registry, {"name": "explicit", "test": ["case_010"]}).split(CASES, 0)
    assert rest.test == ["case_010"]
    assert len(rest.train) == 22
    with pytest.raises(miscore.InputError, match="not in the dataset: nope"):
        evaluator(registry, {"name": "explicit", "test": ["nope"]}).split(CASES, 0)
    with pytest.raises(miscore.InputError, match="both train and test: case_000"):
        both = {"name": "explicit", "train": CASES[:2], "test": CASES[:1]}
        evaluator(registry, both).split(CASES, 0)
    with pytest.raises(miscore.ConfigError, match="explicit"):
        evaluator(registry, {"name": "explicit"})


def test_folds_json_round_trip_reproduces_the_folds(
    registry: miscore.Registry, tmp_path: Path
) -> None:
    kfold = evaluator(registry, {"name": "kfold", "folds": 3})
    folds = kfold.split(CASES, seed=42)
    path = write_folds(folds, tmp_path / "folds.json", evaluator=kfold.config(), seed=42)
    assert read_folds(path) == folds
    record = read_folds_file(path)
    assert record.evaluator == {"name": "kfold", "folds": 3, "shuffle": True}
    assert record.case_ids == CASES
    data = json.loads(path.read_text())
    assert data["folds"][0]["test"] == folds[0].test
    # the recorded evaluator makes the same folds again, and 'explicit' reads the file back
    again = evaluator(registry, record.evaluator).split(record.case_ids, seed=record.seed or 0)
    assert again == folds
    explicit = evaluator(registry, {"name": "explicit", "file": str(path)})
    assert explicit.split(CASES, seed=0) == folds
    with pytest.raises(miscore.InputError, match=r"fold_0: .* not in the dataset"):
        explicit.split(CASES[:10], seed=0)


def test_bad_fold_files_are_input_errors(registry: miscore.Registry, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"folds": [{"name": "a", "train": ["x"]}]}')
    with pytest.raises(miscore.InputError, match=r"bad.json: not a fold file: folds.0.test"):
        read_folds(bad)
    bad.write_text("{nope")
    with pytest.raises(miscore.InputError, match="not JSON"):
        read_folds(bad)
    with pytest.raises(miscore.InputError, match="no such fold file"):
        evaluator(registry, {"name": "explicit", "file": str(tmp_path / "missing.json")}).split(
            CASES, 0
        )
