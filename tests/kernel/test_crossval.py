"""Cross-validation without training: schemes, splits files, the report, the ensemble rule.

Training every fold is tested through the CLI in tests/cli/test_cv.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import miscore
from miscore import Case, Config, Evaluator, Fold, InputError, PluginManager, Volume
from miscore.pipeline.crossval import (
    CrossValidationReport,
    FoldResult,
    evaluator_spec,
    plan_splits,
    read_case_list,
)
from miscore.pipeline.evaluate import EvaluationRow, read_folds_file, summarize
from miscore.pipeline.inference import EnsemblePredictor, Predictor, probabilities
from miscore.pipeline.modeldir import ModelInfo, ensemble_members
from miscore.tools.synth import write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cvdata") / "data"
    write_dataset(root, PluginManager().registry, n_cases=7, shape=(8, 8, 8), classes=2, seed=3)
    return root


IDS = [f"case_{i:03d}" for i in range(7)]


def test_kfold_tests_every_case_once_and_is_seeded(dataset: Path, tmp_path: Path) -> None:
    folds, path = plan_splits(Config(), dataset, tmp_path / "a", folds=3)
    assert path == tmp_path / "a" / "splits.json"
    assert [len(f.test) for f in folds] == [3, 2, 2]
    assert sorted(c for f in folds for c in f.test) == IDS
    for fold in folds:
        assert sorted(fold.train + fold.test) == IDS
    again, _ = plan_splits(Config(), dataset, tmp_path / "b", folds=3)
    assert again == folds
    other = Config.model_validate({"training": {"seed": 5}})
    assert plan_splits(other, dataset, tmp_path / "c", folds=3)[0] != folds
    record = read_folds_file(path)
    assert record.evaluator == {"name": "kfold", "folds": 3, "shuffle": True}
    assert record.seed == 0 and record.case_ids == IDS


def test_a_splits_file_gives_back_its_folds(dataset: Path, tmp_path: Path) -> None:
    folds, path = plan_splits(Config(), dataset, tmp_path / "a", scheme="loo")
    assert len(folds) == 7
    reused, again = plan_splits(Config(), dataset, tmp_path / "b", splits_file=path, folds=2)
    assert reused == folds
    assert read_folds_file(again).evaluator == {"name": "loo"}


def test_a_splits_file_naming_unknown_cases_is_refused(dataset: Path, tmp_path: Path) -> None:
    _, path = plan_splits(Config(), dataset, tmp_path / "a", folds=2)
    edited = json.loads(path.read_text())
    edited["folds"][0]["test"].append("case_999")
    path.write_text(json.dumps(edited))
    with pytest.raises(InputError, match="case_999"):
        plan_splits(Config(), dataset, tmp_path / "b", splits_file=path)


def test_split_and_explicit_schemes(dataset: Path, tmp_path: Path) -> None:
    (fold,) = plan_splits(Config(), dataset, tmp_path / "a", scheme="split", split=0.3)[0]
    assert len(fold.test) == 2 and len(fold.train) == 5
    (fold,) = plan_splits(
        Config(), dataset, tmp_path / "b", scheme="explicit", test_list=["case_001", "case_004"]
    )[0]
    assert fold.test == ["case_001", "case_004"]
    assert fold.train == [c for c in IDS if c not in fold.test]
    with pytest.raises(InputError, match="not in the dataset: nope"):
        plan_splits(Config(), dataset, tmp_path / "c", scheme="explicit", train_list=["nope"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scheme": "bootstrap"}, "unknown scheme 'bootstrap'; installed evaluators: explicit, "),
        ({"scheme": "kfold", "test_list": ["a"]}, "add --scheme explicit"),
        ({"scheme": "loo", "train_list": ["a"]}, "add --scheme explicit"),
        ({"scheme": "kfold", "split": 0.3}, "add --scheme split"),
        ({"scheme": "explicit"}, "give 'train' and/or 'test' case ids.*--train-list, --test-list"),
    ],
)
def test_scheme_options_that_do_not_fit_are_refused(
    options: dict[str, object], message: str
) -> None:
    scheme = str(options.pop("scheme"))
    with pytest.raises(InputError, match=message):
        evaluator_spec(scheme, PluginManager().registry, **options)  # type: ignore[arg-type]


class StratifiedFolds(Evaluator):
    """A third-party scheme: folds by the first letter of the case id (any option: folds)."""

    name = "by_letter"

    class Params(miscore.Params):
        folds: int = 2

    def split(self, case_ids: Sequence[str], seed: int) -> list[Fold]:
        assert isinstance(self.params, StratifiedFolds.Params)
        ids = sorted(case_ids)
        return [
            Fold(
                name=f"fold_{i}",
                train=[c for j, c in enumerate(ids) if j % self.params.folds != i],
                test=[c for j, c in enumerate(ids) if j % self.params.folds == i],
            )
            for i in range(self.params.folds)
        ]


class ByLetterPlugin:
    @miscore.hookimpl
    def miscore_register_evaluators(self) -> list[type[Evaluator]]:
        return [StratifiedFolds]


def test_a_plugin_evaluator_is_a_scheme(dataset: Path, tmp_path: Path) -> None:
    plugins = PluginManager()
    plugins.register(ByLetterPlugin(), "by_letter")
    assert evaluator_spec("by_letter", plugins.registry, folds=3) == {
        "name": "by_letter",
        "folds": 3,
    }
    folds, path = plan_splits(
        Config(), dataset, tmp_path, scheme="by_letter", folds=3, plugins=plugins
    )
    assert [len(f.test) for f in folds] == [3, 2, 2]
    assert read_folds_file(path).evaluator == {"name": "by_letter", "folds": 3}


class DefaultsToByLetter(ByLetterPlugin):
    @miscore.hookimpl
    def miscore_defaults(self) -> dict[str, Any]:
        return {"evaluator": "by_letter"}


def test_the_default_scheme_comes_from_the_plugins(dataset: Path, tmp_path: Path) -> None:
    _, path = plan_splits(Config(), dataset, tmp_path / "bundled", folds=3)
    assert read_folds_file(path).evaluator["name"] == "kfold"  # the evaluation plugin's
    plugins = PluginManager()
    plugins.register(DefaultsToByLetter(), "by_letter")
    _, path = plan_splits(Config(), dataset, tmp_path / "plugin", folds=3, plugins=plugins)
    assert read_folds_file(path).evaluator == {"name": "by_letter", "folds": 3}


def test_kfold_with_more_folds_than_cases_is_refused(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="folds=8 needs at least 8 cases"):
        plan_splits(Config(), dataset, tmp_path, folds=8)


def test_case_lists_skip_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "test.txt"
    path.write_text("# held out\ncase_001\n\n  case_002  # bright one\n")
    assert read_case_list(path) == ["case_001", "case_002"]
    with pytest.raises(InputError, match="no such case list"):
        read_case_list(tmp_path / "missing.txt")


def _row(case: str, class_id: int, dice: float) -> EvaluationRow:
    return EvaluationRow(case=case, class_id=class_id, values={"dice": dice, "hd95": np.nan})


def test_the_report_round_trips_and_its_tsv_has_a_fold_column(tmp_path: Path) -> None:
    folds = [
        FoldResult(index=0, name="fold_0", train=["b"], test=["a"], model_dir="fold_0/model",
                   rows=[_row("a", 1, 0.5), _row("a", 2, 0.7)]),
        FoldResult(index=1, name="fold_1", train=["a"], test=["b"], model_dir="fold_1/model",
                   rows=[_row("b", 1, 0.9), _row("b", 2, 0.1)]),
    ]  # fmt: skip
    report = CrossValidationReport(
        seed=0, case_ids=["a", "b"], metrics=["dice", "hd95"], classes=[1, 2], folds=folds
    )
    report.summary = summarize(report.rows, report.metrics, report.classes)
    assert report.stats(1, "dice").mean == pytest.approx(0.7)
    assert report.stats(2, "hd95").n_nan == 2
    lines = [line.split("\t") for line in report.to_tsv().splitlines()]
    assert lines[0] == ["fold", "case", "class", "dice", "hd95", "empty"]
    assert lines[3] == ["fold_1", "b", "1", "0.9", "nan", ""]
    path = report.write_json(tmp_path / "report.json")
    assert json.loads(path.read_text())["folds"][0]["rows"][0]["values"]["hd95"] is None
    back = CrossValidationReport.read_json(path)
    assert back.stats(1, "dice").mean == pytest.approx(0.7)
    assert back.folds[1].test == ["b"]
    (tmp_path / "other.json").write_text('{"rows": []}')
    with pytest.raises(InputError, match="not a cross-validation report"):
        CrossValidationReport.read_json(tmp_path / "other.json")


def test_only_a_folder_with_the_marker_is_an_ensemble(tmp_path: Path) -> None:
    assert ensemble_members(tmp_path) is None
    (tmp_path / "crossval.json").write_text('{"models": ["fold_0/model", "fold_1/model"]}')
    assert ensemble_members(tmp_path) == [tmp_path / "fold_0/model", tmp_path / "fold_1/model"]
    (tmp_path / "crossval.json").write_text('{"models": []}')
    with pytest.raises(InputError, match="lists no fold models"):
        ensemble_members(tmp_path)
    (tmp_path / "crossval.json").write_text('{"folds": 3}')
    with pytest.raises(InputError, match="not a cross-validation marker"):
        ensemble_members(tmp_path)


class FixedScores(Predictor):
    """A member whose sliding window returns fixed scores (no Keras model)."""

    scores: np.ndarray

    def class_scores(
        self,
        image: np.ndarray,
        overlap: float | None = None,
        blend: str | None = None,
        tta: bool | None = None,
    ) -> np.ndarray:
        return self.scores


def test_the_ensemble_averages_the_members_probabilities(tmp_path: Path) -> None:
    config = Config.model_validate({"data": {"classes": 3}})
    info = ModelInfo(input_shape=[4, 4, 1], n_classes=3)
    plugins = PluginManager()
    rng = np.random.default_rng(0)
    members: list[Predictor] = []
    scores = []
    for _ in range(3):
        member = FixedScores(None, config, info, [], plugins, tmp_path)
        # unnormalised blended scores, as a sliding window returns them
        member.scores = rng.uniform(0.1, 2.0, size=(4, 4, 3)).astype(np.float32)
        members.append(member)
        scores.append(member.scores)
    ensemble = EnsemblePredictor(None, config, info, [], plugins, tmp_path, members)
    image = Volume(np.zeros((4, 4, 1), np.float32), np.diag([0.7, 0.7, 1.0, 1.0]))
    label, probs = ensemble.predict_case(Case("c", image), with_probabilities=True)
    mean = np.mean([probabilities(s) for s in scores], axis=0)
    assert probs is not None
    np.testing.assert_allclose(probs.array, mean, atol=1e-6)
    np.testing.assert_allclose(probs.array.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(label.array[..., 0], np.argmax(mean, axis=-1))
    assert np.array_equal(label.affine, image.affine)
