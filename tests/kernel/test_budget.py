"""``miscore plan --budget``: the parts that need no timing, and the planner run by a user."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from miscore.core.config import parse_config
from miscore.core.errors import InputError
from miscore.tools.budget import (
    MAX_STEPS_PER_EPOCH,
    MIN_EPOCHS,
    Candidate,
    candidates,
    min_steps,
    parse_budget,
    schedule,
)
from tests.cli.helpers import assert_one_line_error, run_cli


@pytest.mark.parametrize(
    ("text", "seconds"), [("20m", 1200), ("300s", 300), ("1.5h", 5400), (" 2M ", 120)]
)
def test_budgets_are_times_with_a_unit(text: str, seconds: float) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["20", "0m", "-5m", "ten minutes", "5d"])
def test_a_budget_without_a_unit_is_refused(text: str) -> None:
    with pytest.raises(InputError, match="--budget"):
        parse_budget(text)


@pytest.mark.parametrize(
    ("available", "step", "overhead"), [(300, 0.7, 1.3), (1200, 0.05, 0.5), (60, 1.0, 2.0)]
)
def test_the_schedule_fills_the_time_it_is_given(
    available: float, step: float, overhead: float
) -> None:
    epochs, per_epoch = schedule(available, step, overhead)
    assert epochs >= MIN_EPOCHS
    assert 1 <= per_epoch <= MAX_STEPS_PER_EPOCH
    spent = epochs * (per_epoch * step + overhead)
    assert spent <= available
    assert spent > available - epochs * step - 2 * overhead  # not much left over


def test_candidates_go_from_the_planned_patch_down_each_a_multiple_of_its_poolings() -> None:
    config = parse_config(
        {
            "patching": {"mode": "random", "patch_shape": [96, 96, 112]},
            "training": {"batch_size": 4},
        }
    )
    found = candidates(config)
    assert found[0] == Candidate(32, (96, 96, 112), 4, 2)  # planned patch, widest, batch 2
    assert [c.filters for c in found[:3]] == [32, 16, 8]
    sizes = [math.prod(c.patch) for c in found]
    assert sizes == sorted(sizes, reverse=True)
    for c in found:
        assert all(n % 2**c.depth == 0 and n // 2**c.depth >= 2 for n in c.patch)
    assert min(c.cost for c in found) == found[-1].cost


def test_fewer_steps_are_not_worth_a_budget() -> None:
    assert min_steps(60) == 1000
    assert min_steps(1200) == 2400
    assert min_steps(7200) == 5000


def test_plan_with_a_budget_times_networks_and_explains_the_schedule(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_cli("synth", data, "-n", "2", "--shape", "32", "32", "32", "--classes", "2")
    assert result.returncode == 0, result.stderr
    config = tmp_path / "config.yaml"
    planned = run_cli(
        "plan", data, "--out", config, "--budget", "2m", "--cache", tmp_path / "cache"
    )
    assert planned.returncode == 0, planned.stderr
    assert "s per step" in planned.stderr
    text = config.read_text()
    assert "Planned for a budget of 2 min of `miscore train`" in text
    assert "measured per step" in text
    assert "start-up" in text and "per epoch (inference-mode check" in text
    loaded = yaml.safe_load(text)
    training = loaded["training"]
    assert training["epochs"] >= MIN_EPOCHS
    assert training["lr_schedule"] == "poly"
    assert loaded["model"]["architecture"]["normalization"] == "instance"
    assert any((tmp_path / "cache").iterdir())  # training will find the cases there
    valid = run_cli("config", "validate", config)
    assert valid.returncode == 0, valid.stderr


def test_a_budget_that_is_not_a_time_is_one_line(tmp_path: Path) -> None:
    result = run_cli("plan", tmp_path, "--out", tmp_path / "c.yaml", "--budget", "20")
    assert "--budget" in assert_one_line_error(result)
