"""The config file: validation, field paths in errors, the schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import miscore
from miscore.core.config import json_schema
from miscore.core.plugins import PluginManager
from tests.kernel.test_plugins import Steps


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_a_full_config_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
data: {classes: 3, layout: msd}
preprocessing:
  - {name: clip, min: -79, max: 304}
  - zscore
patching: {mode: random, patch_shape: [32, 32, 16]}
training: {epochs: 2, batch_size: 1}
""",
    )
    config = miscore.load_config(path)
    assert config.data.classes == 3
    assert config.preprocessing[0].name == "clip"
    assert config.preprocessing[0].params == {"min": -79, "max": 304}
    assert config.preprocessing[1].name == "zscore"
    assert config.patching.patch_shape == [32, 32, 16]
    again = miscore.parse_config(__import__("yaml").safe_load(config.to_yaml()))
    assert again == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trainng: {epochs: 2}", r"trainng: Extra inputs are not permitted"),
        ("training: {epochs: many}", r"training\.epochs: Input should be a valid integer"),
        ("training: {epochs: 0}", r"training\.epochs: Input should be greater than or equal to 1"),
        ("inference: {overlap: 1.0}", r"inference\.overlap: Input should be less than 1"),
        ("preprocessing: [{min: 3}]", r"preprocessing\[0\]\.name: Field required"),
        ("patching: {mode: grid}", r"patching: Value error, patching mode 'grid' needs patch"),
        ("- a list", r"a config is a mapping"),
        ("data: {classes: 2, class_names: [bg]}", r"class_names has 1 names for 2 classes"),
        ("inference: {keep_largest: 1}", r"inference\.keep_largest: give true, false or a list"),
        ("inference: {keep_largest: [0, 1]}", r"inference\.keep_largest: class ids start at 1"),
        (
            "data: {classes: 3}\ninference: {keep_largest: [2, 3]}",
            r"inference\.keep_largest: the foreground classes of data\.classes 3 are 1 to 2; "
            r"got \[3\]",
        ),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(miscore.ConfigError, match=message) as caught:
        miscore.load_config(path)
    assert str(caught.value).startswith(str(path))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("value", "stored", "kept"),
    [("true", True, [1, 2, 3]), ("false", False, []), ("[3, 1, 3]", [1, 3], [1, 3])],
)
def test_keep_largest_is_true_false_or_a_list_of_classes(
    tmp_path: Path, value: str, stored: bool | list[int], kept: list[int]
) -> None:
    path = write(tmp_path, f"data: {{classes: 4}}\ninference: {{keep_largest: {value}}}")
    config = miscore.load_config(path)
    assert config.inference.keep_largest == stored
    assert config.inference.largest_component_classes(config.data.classes) == kept
    assert miscore.parse_config(__import__("yaml").safe_load(config.to_yaml())) == config


def test_yaml_syntax_errors_give_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "training:\n  epochs: 2\n bad: [\n")
    with pytest.raises(miscore.ConfigError, match=r"config.yaml: line \d+: not valid YAML"):
        miscore.load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(miscore.ConfigError, match="no such config file"):
        miscore.load_config(tmp_path / "nope.yaml")


def test_component_params_are_validated_by_the_component(
    plugin_manager: PluginManager, tmp_path: Path
) -> None:
    plugin_manager.register(Steps(), "steps")
    config = miscore.parse_config(
        {"preprocessing": [{"name": "zscore"}, {"name": "clip", "min": "low"}]}
    )
    with pytest.raises(miscore.ConfigError, match=r"preprocessing\[1\]\.clip\.min"):
        miscore.check_components(config, plugin_manager.registry)


def test_unknown_component_names_give_the_field_and_a_suggestion(
    plugin_manager: PluginManager,
) -> None:
    plugin_manager.register(Steps(), "steps")
    config = miscore.parse_config({"preprocessing": ["zscor"]})
    with pytest.raises(
        miscore.ComponentNotFoundError,
        match=r"preprocessing\[0\]\.name: no subfunction named 'zscor' \(did you mean 'zscore'",
    ):
        miscore.check_components(config, plugin_manager.registry)


class Model:
    """A plugin registering an architecture and a loss, and naming them the defaults."""

    class UNet(miscore.Architecture):
        name = "unet"

    class Tversky(miscore.Loss):
        name = "tversky"

    @miscore.hookimpl
    def miscore_register_architectures(self) -> list[type[miscore.Architecture]]:
        return [self.UNet]

    @miscore.hookimpl
    def miscore_register_losses(self) -> list[type[miscore.Loss]]:
        return [self.Tversky]

    @miscore.hookimpl
    def miscore_defaults(self) -> dict[str, Any]:
        return {"architecture": {"name": "unet"}, "loss": {"name": "tversky"}}


def test_check_components_creates_everything_with_unique_state_keys(
    plugin_manager: PluginManager,
) -> None:
    plugin_manager.register(Steps(), "steps")
    plugin_manager.register(Model(), "model")
    config = miscore.parse_config({"preprocessing": ["clip", {"name": "clip", "max": 9}]})
    created = miscore.check_components(config, plugin_manager.registry)
    first, second = created["preprocessing"]
    assert (first.state_key, second.state_key) == ("0.clip", "1.clip")
    assert second.params.max == 9
    assert isinstance(created["architecture"], Model.UNet)
    assert isinstance(created["loss"], Model.Tversky)


def test_schema_is_json_schema_with_every_section() -> None:
    schema = json.loads(json_schema())
    assert schema["type"] == "object"
    assert set(schema["properties"]) >= {
        "data",
        "preprocessing",
        "patching",
        "augmentation",
        "model",
        "training",
        "inference",
        "cache",
    }


def test_augmentation_default_is_the_set_a_plugin_supplies() -> None:
    from miscore_augment import default_augmentation

    registry = miscore.PluginManager().registry
    config = miscore.parse_config({"augmentation": "default"})
    assert [s.name for s in config.augmentation] == ["default"]  # resolved with plugins
    applied = miscore.apply_defaults(config, registry)
    assert [s.model_dump() for s in applied.augmentation] == default_augmentation()
    extended = miscore.parse_config({"augmentation": ["default", {"name": "shift"}]})
    applied = miscore.apply_defaults(extended, registry)
    assert [s.name for s in applied.augmentation][-1] == "shift"
    assert len(applied.augmentation) == len(default_augmentation()) + 1
    with pytest.raises(miscore.ConfigError, match=r"augmentation.*no parameters"):
        miscore.parse_config({"augmentation": [{"name": "default", "p": 1.0}]})


def test_architecture_and_loss_defaults_come_from_plugins() -> None:
    config = miscore.parse_config({})
    assert config.model.architecture is None and config.model.loss is None
    applied = miscore.apply_defaults(config, miscore.PluginManager().registry)
    assert applied.model.architecture_entry.name == "unet"
    assert applied.model.loss_entry.name == "tversky"
    bare = miscore.PluginManager(load_entrypoints=False).registry
    with pytest.raises(miscore.ConfigError, match=r"model\.architecture: not set"):
        miscore.apply_defaults(config, bare)
