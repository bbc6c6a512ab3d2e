"""The kernel's chain runner: unique state keys, order, inverse order, errors, one-hot."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import miscore
from miscore.data.preprocess import build_steps, one_hot, postprocess_prediction, preprocess_case
from miscore.testing import synthetic_case


class ShiftParams(miscore.Params):
    by: int = 1


class Shift(miscore.Subfunction):
    """Roll the arrays along axis 0 (a grid change with an exact inverse)."""

    name = "shift"
    Params = ShiftParams
    params: ShiftParams

    def preprocess(self, case: miscore.Case, training: bool) -> miscore.Case:
        meta = {**case.meta, "steps": dict(case.meta.get("steps", {}))}
        label = case.label
        if label is not None:
            label = label.with_array(np.roll(label.array, self.params.by, axis=0))
        out = miscore.Case(
            case.id,
            case.image.with_array(np.roll(case.image.array, self.params.by, axis=0)),
            label,
            meta,
        )
        order = [*case.meta.get("order", []), self.state_key]
        out.meta["order"] = order
        self.set_state(out, {"by": self.params.by})
        return out

    def postprocess(self, prediction: miscore.Volume, case: miscore.Case) -> miscore.Volume:
        by = self.get_state(case)["by"]
        return prediction.with_array(np.roll(prediction.array, -by, axis=0))


class Broken(miscore.Subfunction):
    """Raises a plain exception."""

    name = "broken"

    def preprocess(self, case: miscore.Case, training: bool) -> miscore.Case:
        raise ZeroDivisionError("division by zero")


@pytest.fixture
def registry(plugin_manager: miscore.PluginManager) -> miscore.Registry:
    plugin = SimpleNamespace(
        miscore_register_subfunctions=miscore.hookimpl(lambda: [Shift, Broken])
    )
    plugin_manager.register(plugin, name="test_steps")
    return plugin_manager.registry


def test_steps_get_unique_state_keys(registry: miscore.Registry) -> None:
    steps = build_steps(["shift", {"name": "shift", "by": 3}], registry)
    assert [s.state_key for s in steps] == ["0.shift", "1.shift"]
    assert [s.config() for s in steps] == [{"name": "shift", "by": 1}, {"name": "shift", "by": 3}]


def test_chain_runs_in_order_and_inverts_in_reverse(registry: miscore.Registry) -> None:
    case = synthetic_case()
    original = case.image.array.copy()
    steps = build_steps([{"name": "shift", "by": 2}, {"name": "shift", "by": 5}], registry)
    ready = preprocess_case(case, steps, training=True)
    assert ready.meta["order"] == ["0.shift", "1.shift"]
    assert ready.meta["steps"] == {"0.shift": {"by": 2}, "1.shift": {"by": 5}}
    assert np.array_equal(ready.image.array, np.roll(original, 7, axis=0))
    assert ready.label is not None
    back = postprocess_prediction(ready.label, ready, steps)
    assert case.label is not None
    assert np.array_equal(back.array, case.label.array)
    # the input case is untouched, meta included
    assert np.array_equal(case.image.array, original)
    assert case.meta == {}


def test_a_failing_step_is_named(registry: miscore.Registry) -> None:
    steps = build_steps(["shift", "broken"], registry)
    with pytest.raises(miscore.PipelineError, match=r"case_000: preprocessing step '1\.broken'"):
        preprocess_case(synthetic_case(), steps, training=False)


def test_unknown_step_names_the_entry(registry: miscore.Registry) -> None:
    with pytest.raises(miscore.ComponentNotFoundError, match=r"preprocessing\[1\]\.name.*shift"):
        build_steps(["shift", "shfit"], registry)
    with pytest.raises(miscore.ConfigError, match=r"preprocessing\[0\]\.shift\.by"):
        build_steps([{"name": "shift", "by": "x"}], registry)


def test_one_hot() -> None:
    label = np.array([[0, 1], [2, 1]], np.uint8)[..., None]
    encoded = one_hot(label, 3)
    assert encoded.shape == (2, 2, 3)
    assert encoded.dtype == np.float32
    assert np.array_equal(encoded.argmax(-1), label[..., 0])
    assert np.all(encoded.sum(-1) == 1)
    bad: Any = np.array([0, 3])
    with pytest.raises(miscore.InputError, match=r"data\.classes is 3"):
        one_hot(bad, 3)
    with pytest.raises(miscore.InputError, match="integer"):
        one_hot(np.zeros(3, np.float32), 3)


def test_one_hot_into_a_batch_slot() -> None:
    label = np.array([[0, 1], [2, 1]], np.uint8)[..., None]
    batch = np.full((2, 2, 2, 3), 7.0, np.float32)
    result = one_hot(label, 3, out=batch[1])
    assert np.shares_memory(result, batch)
    np.testing.assert_array_equal(batch[1], one_hot(label, 3))
    assert np.all(batch[0] == 7.0)  # the other slot is untouched
    with pytest.raises(miscore.InputError, match="out"):
        one_hot(label, 4, out=batch[1])
