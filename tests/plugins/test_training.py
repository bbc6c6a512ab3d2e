"""The bundled training extras: learning-rate schedules and Keras callbacks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from miscore_training import (
    CALLBACKS,
    SCHEDULES,
    ConstantRate,
    CosineRate,
    EpochSnapshots,
    PolyRate,
    TimeLimit,
)

import miscore
from miscore.testing import check_component


def rate_at(schedule: Any, step: int) -> float:
    import keras

    if isinstance(schedule, float):
        return schedule
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_registered_through_the_entry_point(installed_plugins: miscore.PluginManager) -> None:
    registry = installed_plugins.registry
    assert {"constant", "poly", "cosine"} <= set(registry.names("lr_schedule"))
    assert {"time_limit", "epoch_snapshots"} <= set(registry.names("callback"))
    assert installed_plugins.plugin_of("lr_schedule", "poly").name == "training"


@pytest.mark.parametrize("cls", [*SCHEDULES, *[c for c in CALLBACKS if c is not TimeLimit]])
def test_components_meet_the_contract(cls: type[miscore.Component]) -> None:
    check_component(cls)


def test_constant_is_the_rate_itself() -> None:
    assert ConstantRate().build(0.01, 100) == 0.01


def test_poly_is_nnunets_schedule_and_survives_keras_serialisation() -> None:
    import keras

    schedule = PolyRate().build(0.01, 100)
    for step in (0, 25, 50, 99, 100):
        expected = 0.01 * (1 - step / 100) ** 0.9
        assert rate_at(schedule, step) == pytest.approx(expected, abs=1e-8)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert rate_at(again, 50) == pytest.approx(rate_at(schedule, 50))
    steeper = PolyRate(power=2.0, end_rate=0.001).build(0.01, 10)
    assert rate_at(steeper, 5) == pytest.approx(0.009 * 0.25 + 0.001, rel=1e-5)


def test_cosine_warms_up_then_decays_to_its_end_share() -> None:
    schedule = CosineRate(warmup=0.1, end_share=0.1).build(0.01, 100)
    rates = [rate_at(schedule, s) for s in (0, 5, 10, 55, 100)]
    assert rates[0] == pytest.approx(0.0, abs=1e-8)
    assert rates[1] == pytest.approx(0.005, rel=1e-4)  # halfway through the warm-up
    assert rates[2] == pytest.approx(0.01, rel=1e-4)
    assert rates[3] == pytest.approx(0.01 * (0.1 + 0.9 * 0.5), rel=1e-4)  # half the decay
    assert rates[4] == pytest.approx(0.001, rel=1e-4)
    plain = CosineRate().build(0.01, 100)
    assert rate_at(plain, 0) == pytest.approx(0.01) and rate_at(plain, 100) == pytest.approx(0)


def test_the_time_limit_stops_after_the_epoch_it_passes_in() -> None:
    callback = TimeLimit(minutes=0.0005).build(None)  # 30 ms

    class Model:
        stop_training = False

    callback.set_model(Model())
    callback.on_train_begin()
    callback.on_epoch_end(0, {})
    assert not callback.model.stop_training
    time.sleep(0.05)
    callback.on_epoch_end(1, {})
    assert callback.model.stop_training and callback.stopped_epoch == 2
    with pytest.raises(ValueError, match="minutes"):
        TimeLimit()


def test_epoch_snapshots_are_written_every_n_epochs(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    callback = EpochSnapshots(every=2).build(tmp_path)
    callback.set_model(model)
    for epoch in range(5):
        callback.on_epoch_end(epoch, {})
    names = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert names == ["epoch_0002.keras", "epoch_0004.keras"]
    loaded = keras.models.load_model(tmp_path / "snapshots" / "epoch_0004.keras")
    x = np.ones((1, 4, 4, 1), np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x))
    with pytest.raises(miscore.InputError, match="model folder"):
        EpochSnapshots().build(None)


def test_a_schedule_with_reduce_lr_patience_is_refused() -> None:
    with pytest.raises(miscore.ConfigError, match="reduce_lr_patience"):
        miscore.parse_config({"training": {"lr_schedule": "cosine", "reduce_lr_patience": 3}})
    config = miscore.parse_config(
        {"training": {"lr_schedule": "constant", "reduce_lr_patience": 3}}
    )
    assert config.training.lr_schedule is not None
    assert config.training.lr_schedule.name == "constant"
    assert miscore.parse_config({}).training.lr_schedule is None  # the initial rate throughout
    planned = miscore.parse_config({"training": {"lr_schedule": {"name": "poly", "power": 1.0}}})
    assert planned.training.lr_schedule is not None
    assert planned.training.lr_schedule.params == {"power": 1.0}
    assert "lr_schedule:\n    name: poly\n    power: 1.0" in planned.to_yaml()
    assert "lr_schedule: constant\n" in config.to_yaml()
