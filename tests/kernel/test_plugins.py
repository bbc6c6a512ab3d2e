"""The plugin manager and the registry: registration, lookups, failures, switches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import Field

import miscore
from miscore.core.plugins import PluginManager


class Clip(miscore.Subfunction):
    """Clips intensities."""

    name = "clip"

    class Params(miscore.Params):
        min: float = Field(0.0)
        max: float = Field(1.0)

    def preprocess(self, case: miscore.Case, training: bool) -> miscore.Case:
        image = case.image.with_array(np.clip(case.image.array, self.params.min, self.params.max))
        return miscore.Case(case.id, image, case.label)


class ZScore(miscore.Subfunction):
    """Normalises intensities."""

    name = "zscore"


class Steps:
    """A plugin object registering two subfunctions."""

    @miscore.hookimpl
    def miscore_register_subfunctions(self) -> list[type[miscore.Subfunction]]:
        return [Clip, ZScore]


class Broken:
    """A plugin whose registration raises."""

    @miscore.hookimpl
    def miscore_register_subfunctions(self) -> list[type[miscore.Subfunction]]:
        raise RuntimeError("database offline")


class Misspelled:
    @miscore.hookimpl
    def miscore_register_subfunction(self) -> list[type[miscore.Subfunction]]:
        return []


class WrongKind:
    @miscore.hookimpl
    def miscore_register_losses(self) -> list[type[Any]]:
        return [Clip]


class Duplicate:
    @miscore.hookimpl
    def miscore_register_subfunctions(self) -> list[type[miscore.Subfunction]]:
        return [Clip]


class Observer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @miscore.hookimpl
    def miscore_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.calls.append(("epoch_end", (epoch, logs)))

    @miscore.hookimpl
    def miscore_prediction_written(self, case_id: str, path: Path) -> None:
        self.calls.append(("prediction_written", (case_id, path)))

    @miscore.hookimpl
    def miscore_configure(self, config: miscore.Config) -> None:
        self.calls.append(("configure", config.training.epochs))


def test_registered_components_are_found_by_kind_and_name(plugin_manager: PluginManager) -> None:
    plugin_manager.register(Steps(), "steps", version="2.0")
    registry = plugin_manager.registry
    assert registry.names("subfunction") == ["clip", "zscore"]
    assert registry.get_subfunction("clip") is Clip
    info = registry.info("subfunction", "clip")
    assert (info.plugin, info.version) == ("steps", "2.0")
    [plugin] = plugin_manager.plugins()
    assert plugin.components == {"subfunction": ["clip", "zscore"]}


def test_missing_name_gives_kind_closest_match_and_installed_names(
    plugin_manager: PluginManager,
) -> None:
    plugin_manager.register(Steps(), "steps")
    with pytest.raises(miscore.ComponentNotFoundError) as caught:
        plugin_manager.registry.get_subfunction("zscroe")
    message = str(caught.value)
    assert "no subfunction named 'zscroe'" in message
    assert "did you mean 'zscore'" in message
    assert "installed: clip, zscore" in message
    assert caught.value.exit_code == 2


def test_a_plugin_that_raises_is_named_and_does_not_take_others_down(
    plugin_manager: PluginManager,
) -> None:
    plugin_manager.register(Broken(), "broken")
    plugin_manager.register(Steps(), "steps")
    registry = plugin_manager.registry
    assert registry.names("subfunction") == ["clip", "zscore"]
    [failure] = registry.failures
    assert failure.plugin == "broken"
    assert "database offline" in failure.message
    with pytest.raises(miscore.ComponentNotFoundError, match="plugin 'broken' failed"):
        registry.get_subfunction("normalize")


class BrokenOverLines:
    @miscore.hookimpl
    def miscore_register_subfunctions(self) -> list[Any]:
        raise ImportError("numpy failed to import:\n\n  libopenblas.so: not found\n")


def test_a_failure_over_several_lines_is_reported_in_one(plugin_manager: PluginManager) -> None:
    plugin_manager.register(BrokenOverLines(), "lines")
    [failure] = plugin_manager.registry.failures
    assert "\n" not in str(failure)
    assert str(failure).endswith("numpy failed to import:; libopenblas.so: not found")
    with pytest.raises(miscore.ComponentNotFoundError) as caught:
        plugin_manager.registry.get_subfunction("normalize")
    assert "\n" not in str(caught.value)


def test_a_misspelled_hook_is_refused_with_the_plugin_name(plugin_manager: PluginManager) -> None:
    with pytest.raises(miscore.PluginError, match="plugin 'typo' is invalid"):
        plugin_manager.register(Misspelled(), "typo")
    assert not plugin_manager.is_registered("typo")


def test_a_class_of_the_wrong_kind_is_a_registration_failure(plugin_manager: PluginManager) -> None:
    plugin_manager.register(WrongKind(), "wrong")
    registry = plugin_manager.registry
    assert registry.names("loss") == []
    assert "not a subclass of Loss" in registry.failures[0].message


def test_two_plugins_registering_one_name_is_reported(plugin_manager: PluginManager) -> None:
    plugin_manager.register(Steps(), "steps")
    plugin_manager.register(Duplicate(), "dupe")
    registry = plugin_manager.registry
    # pluggy calls the plugin registered later first, and the first call wins
    assert registry.info("subfunction", "clip").plugin == "dupe"
    assert registry.info("subfunction", "zscore").plugin == "steps"
    assert [str(s) for s in registry.shadowed] == [
        "subfunction 'clip' of plugin 'steps' is shadowed by plugin 'dupe' (called first by pluggy)"
    ]
    assert registry.failures == ()


def test_registering_one_plugin_name_twice_is_refused(plugin_manager: PluginManager) -> None:
    plugin_manager.register(Steps(), "steps")
    with pytest.raises(miscore.PluginError, match="'steps' is already registered"):
        plugin_manager.register(Duplicate(), "steps")


def test_the_typed_lookup_serves_every_kind(plugin_manager: PluginManager) -> None:
    plugin_manager.register(Steps(), "steps")
    registry = plugin_manager.registry
    assert registry.get_typed(miscore.Subfunction, "clip") is Clip
    with pytest.raises(miscore.ComponentNotFoundError, match="no sampler named 'clip'"):
        registry.get_typed(miscore.Sampler, "clip")


def test_unregister_removes_the_components(plugin_manager: PluginManager) -> None:
    plugin_manager.register(Steps(), "steps")
    assert plugin_manager.registry.names("subfunction")
    plugin_manager.unregister("steps")
    assert plugin_manager.registry.names("subfunction") == []


def test_disabled_plugins_are_blocked() -> None:
    manager = PluginManager(load_entrypoints=False, disabled=["steps"])
    manager.register(Steps(), "steps")
    assert not manager.is_registered("steps")
    assert manager.registry.names("subfunction") == []


def test_disable_switch_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISCORE_DISABLE_PLUGINS", "nifti, steps")
    manager = PluginManager(load_entrypoints=False)
    assert manager.disabled == {"nifti", "steps"}


def test_trace_switch_prints_hook_calls(capsys: pytest.CaptureFixture[str]) -> None:
    manager = PluginManager(load_entrypoints=False, trace=True)
    manager.register(Observer(), "observer")
    manager.epoch_end(epoch=1, logs={"loss": 0.5}, model_dir=None)
    assert "miscore_epoch_end" in capsys.readouterr().err


def test_lifecycle_hooks_reach_implementations_that_take_a_subset(
    plugin_manager: PluginManager, tmp_path: Path
) -> None:
    observer = Observer()
    plugin_manager.register(observer, "observer")
    plugin_manager.configure(miscore.parse_config({"training": {"epochs": 3}}))
    plugin_manager.epoch_end(epoch=2, logs={"loss": 0.25}, model_dir=tmp_path)
    volume = miscore.Volume(np.zeros((2, 2, 2, 1), np.uint8))
    plugin_manager.prediction_written(case_id="c1", path=tmp_path / "c1.nii.gz", prediction=volume)
    assert observer.calls == [
        ("configure", 3),
        ("epoch_end", (2, {"loss": 0.25})),
        ("prediction_written", ("c1", tmp_path / "c1.nii.gz")),
    ]


def test_create_validates_params_and_names_the_field(plugin_manager: PluginManager) -> None:
    plugin_manager.register(Steps(), "steps")
    registry = plugin_manager.registry
    clip = registry.create("subfunction", {"name": "clip", "min": -1, "max": 2})
    assert isinstance(clip, Clip) and clip.params.min == -1
    assert clip.config() == {"name": "clip", "min": -1.0, "max": 2.0}
    with pytest.raises(miscore.ConfigError, match=r"preprocessing\[1\]\.clip\.min: Input should"):
        registry.create("subfunction", {"name": "clip", "min": "low"}, "preprocessing[1]")
    with pytest.raises(miscore.ConfigError, match=r"preprocessing\[0\]\.clip\.maximum: Extra"):
        registry.create("subfunction", {"name": "clip", "maximum": 3}, "preprocessing[0]")


def test_create_passes_objects_through(plugin_manager: PluginManager) -> None:
    plugin_manager.register(Steps(), "steps")
    step = Clip(min=0.5)
    assert plugin_manager.registry.create("subfunction", step) is step

    def my_loss(y_true: Any, y_pred: Any) -> Any:
        return 0

    assert plugin_manager.registry.create("loss", my_loss) is my_loss


def test_installed_bundled_plugins_are_found_through_entry_points(
    installed_plugins: PluginManager,
) -> None:
    names = {info.name for info in installed_plugins.plugins()}
    bundled = {"nifti", "dicom", "sitk", "image2d", "preprocessing", "augment", "unet"}
    assert bundled | {"losses", "metrics", "evaluation"} <= names
    for info in installed_plugins.plugins():
        if info.name in bundled:
            assert info.module == f"miscore_{info.name}"
            assert info.source == "entry point"
