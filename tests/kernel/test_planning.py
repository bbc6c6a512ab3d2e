"""Planning a config from a fingerprint: spacing, intensity scheme, patch, batch, depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

import miscore
from miscore.core.config import check_components, load_config
from miscore.data.dataset import Dataset
from miscore.tools.analysis import analyze_dataset
from miscore.tools.planning import estimate_memory_bytes, plan_config, target_spacing
from miscore.tools.synth import write_dataset
from tests.kernel.test_analysis import write_mr_dataset


@pytest.fixture
def plugins(installed_plugins: miscore.PluginManager) -> miscore.PluginManager:
    return installed_plugins


@pytest.fixture
def registry(plugins: miscore.PluginManager) -> miscore.Registry:
    return plugins.registry


def test_target_spacing_median_and_anisotropy_rule() -> None:
    assert target_spacing([[1, 1, 1], [2, 2, 2], [3, 3, 3]]) == [2, 2, 2]
    spacings = [[0.7, 0.7, s] for s in (1.5, 2.5, 3.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0)]
    # median 0.7 x 0.7 x 5: anisotropic, the thick axis takes its 10th percentile
    assert target_spacing(spacings) == [0.7, 0.7, pytest.approx(2.4, abs=1e-3)]


def test_memory_estimate_grows_with_the_patch() -> None:
    small, large = estimate_memory_bytes([64, 64, 64]), estimate_memory_bytes([128, 128, 128])
    assert large == pytest.approx(8 * small)
    assert 4e9 < large < 8e9  # about 5.7 GB, as documented


def test_plan_for_ct_phantoms(
    tmp_path: Path, plugins: miscore.PluginManager, registry: miscore.Registry
) -> None:
    write_dataset(tmp_path / "data", registry, n_cases=3, shape=(40, 36, 20), seed=1)
    fingerprint = analyze_dataset(Dataset.discover(tmp_path / "data", registry))
    plan = plan_config(fingerprint, plugins, memory_gb=8)
    config = plan.config
    names = [s.name for s in config.preprocessing]
    assert names[-2:] == ["clip", "zscore"]
    clip, zscore = config.preprocessing[-2].params, config.preprocessing[-1].params
    fg = fingerprint.intensity[0].foreground
    assert clip["min"] == [pytest.approx(fg.percentile_00_5, abs=0.01)]
    assert clip["max"] == [pytest.approx(fg.percentile_99_5, abs=0.01)]
    assert zscore["mean"] == [pytest.approx(fg.mean, abs=1e-3)]
    assert config.data.classes == 3
    patch = config.patching.patch_shape
    assert patch is not None
    depth = config.model.architecture_entry.params["depth"]
    assert all(p % 2**depth == 0 for p in patch)
    assert min(patch) / 2**depth >= 4
    text = plan.to_yaml()
    assert "# CT: the 0.5/99.5 percentiles" in text
    assert yaml.safe_load(text)["patching"]["patch_shape"] == patch


def test_plan_shrinks_the_patch_to_the_memory(
    tmp_path: Path, plugins: miscore.PluginManager, registry: miscore.Registry
) -> None:
    write_dataset(tmp_path / "data", registry, n_cases=2, shape=(64, 64, 48), seed=2)
    fingerprint = analyze_dataset(Dataset.discover(tmp_path / "data", registry))
    roomy = plan_config(fingerprint, plugins, memory_gb=80).config
    tight = plan_config(fingerprint, plugins, memory_gb=0.5).config
    assert roomy.patching.patch_shape is not None and tight.patching.patch_shape is not None
    assert np.prod(tight.patching.patch_shape) < np.prod(roomy.patching.patch_shape)
    budget = 0.5e9 * 0.75
    assert 2 * estimate_memory_bytes(tight.patching.patch_shape) <= budget
    assert tight.training.batch_size >= 2
    assert roomy.training.batch_size >= tight.training.batch_size


def test_plan_for_mr_and_2d(
    tmp_path: Path, plugins: miscore.PluginManager, registry: miscore.Registry
) -> None:
    write_mr_dataset(tmp_path / "mr", [(1.0, 1.0, 3.0), (0.9, 0.9, 3.3), (1.1, 1.1, 2.7)])
    fingerprint = analyze_dataset(Dataset.discover(tmp_path / "mr", registry))
    plan = plan_config(fingerprint, plugins, two_d=True)
    config = plan.config
    assert [s.model_dump() for s in config.preprocessing][-1] == {"name": "zscore"}
    assert config.preprocessing[0].name == "resample"
    assert config.patching.mode == "slice"
    assert config.patching.slice_axis == 2
    assert config.patching.patch_shape is not None and len(config.patching.patch_shape) == 2
    assert config.data.classes == 2


def test_planned_config_passes_validation(
    tmp_path: Path, plugins: miscore.PluginManager, registry: miscore.Registry
) -> None:
    write_dataset(tmp_path / "data", registry, n_cases=2, shape=(32, 32, 16), seed=4)
    fingerprint = analyze_dataset(Dataset.discover(tmp_path / "data", registry))
    path = tmp_path / "config.yaml"
    path.write_text(plan_config(fingerprint, plugins).to_yaml())
    config = load_config(path)
    created = check_components(config, registry)  # needs the 'unet' and 'tversky' plugins
    assert created["architecture"].name == "unet"
    assert [s.name for s in created["preprocessing"]] == [s.name for s in config.preprocessing]


def test_the_recipe_is_nnunets_and_each_value_says_why(
    tmp_path: Path, plugins: miscore.PluginManager, registry: miscore.Registry
) -> None:
    write_dataset(tmp_path / "data", registry, n_cases=2, shape=(32, 32, 16), seed=4)
    fingerprint = analyze_dataset(Dataset.discover(tmp_path / "data", registry))
    plan = plan_config(fingerprint, plugins)
    config = plan.config
    architecture = config.model.architecture_entry.params
    assert architecture["normalization"] == "instance"  # batch norm's pitfall: planning.md
    assert config.model.loss_entry.name == "dice_ce"
    assert (config.training.epochs, config.training.steps_per_epoch) == (1000, 250)
    assert config.training.model_dump(mode="json")["lr_schedule"] == "poly"
    names = [a.name for a in config.augmentation]
    assert names[:3] == ["rotate", "scale", "flip"]  # spatial first: one interpolation
    assert "elastic" not in names and {"gamma", "low_resolution"} <= set(names)
    # one organ and one tumour per phantom: stray islands are errors
    assert [c.one_object_cases for c in fingerprint.classes[1:]] == [2, 2]
    assert config.inference.keep_largest == [1, 2]
    text = plan.to_yaml()
    for field in ("augmentation:", "steps_per_epoch:", "lr_schedule:", "keep_largest:"):
        line = next(row for row in text.splitlines() if row.strip().startswith(field))
        assert "  # " in line, line


def test_anisotropy_keeps_rotation_in_plane_and_isotropic_data_rotates_freely(
    plugins: miscore.PluginManager,
) -> None:
    def rotate(ndim: int, thick_axis: int | None) -> dict[str, object]:
        entry: dict[str, object] = plugins.plan_choices(ndim, thick_axis)["augmentation"][0]
        return entry

    assert rotate(3, thick_axis=0)["planes"] == [[1, 2]]
    assert "planes" not in rotate(3, None)
    assert "planes" not in rotate(2, thick_axis=0)


class FocalPlanner:
    """A third-party plugin that plans a focal loss and a plain U-Net of its own width."""

    @miscore.hookimpl(tryfirst=True)
    def miscore_plan_choices(self, ndim: int) -> dict[str, object]:
        return {
            "loss": {"name": "focal"},
            "architecture": {"name": "unet_plain", "filters": 8},
            "reasons": {"model.loss": f"sparse lesions ({ndim}D)"},
        }


class NoDepthNet(miscore.Architecture):
    """An architecture without depth or width parameters."""

    name = "no_depth_net"

    def build(self, input_shape: object, n_classes: int) -> object:
        raise NotImplementedError


class NoDepthPlanner:
    @miscore.hookimpl
    def miscore_register_architectures(self) -> list[type[miscore.Architecture]]:
        return [NoDepthNet]

    @miscore.hookimpl(tryfirst=True)
    def miscore_plan_choices(self) -> dict[str, object]:
        return {"architecture": {"name": "no_depth_net"}}


def test_a_plugin_replaces_the_planned_choices(tmp_path: Path) -> None:
    plugins = miscore.PluginManager(disabled=(), trace=False)
    plugins.register(FocalPlanner(), "focal_planner")
    write_dataset(tmp_path / "data", plugins.registry, n_cases=2, shape=(32, 32, 16), seed=4)
    fingerprint = analyze_dataset(Dataset.discover(tmp_path / "data", plugins.registry))
    plan = plan_config(fingerprint, plugins)
    model = plan.config.model
    assert model.loss_entry.name == "focal"
    assert plan.reasons["model.loss"] == "sparse lesions (3D)"
    assert model.architecture_entry.name == "unet_plain"
    # the planner sizes the depth; the plugin's width stays; the bundled U-Net's
    # normalization (a choice overridden with it) and its reason are gone
    params = model.architecture_entry.params
    assert params == {"depth": params["depth"], "filters": 8}
    assert "instance norm" not in plan.reasons["model.architecture"]
    assert plan.reasons["model.architecture"].startswith("depth ")
    assert [a.name for a in plan.config.augmentation][:3] == ["rotate", "scale", "flip"]


def test_the_planner_sizes_only_what_the_architecture_takes(tmp_path: Path) -> None:
    plugins = miscore.PluginManager(disabled=(), trace=False)
    plugins.register(NoDepthPlanner(), "no_depth")
    write_dataset(tmp_path / "data", plugins.registry, n_cases=2, shape=(32, 32, 16), seed=4)
    fingerprint = analyze_dataset(Dataset.discover(tmp_path / "data", plugins.registry))
    plan = plan_config(fingerprint, plugins)
    assert plan.config.model.architecture_entry.name == "no_depth_net"
    assert plan.config.model.architecture_entry.params == {}
    assert "model.architecture" not in plan.reasons
    assert "no_depth_net}\n" in plan.to_yaml()


def test_planning_without_an_architecture_plugin_says_so(tmp_path: Path) -> None:
    plugins = miscore.PluginManager(disabled=("unet",), trace=False)
    write_dataset(tmp_path / "data", plugins.registry, n_cases=2, shape=(32, 32, 16), seed=4)
    fingerprint = analyze_dataset(Dataset.discover(tmp_path / "data", plugins.registry))
    with pytest.raises(miscore.PipelineError, match="no installed plugin chooses the architecture"):
        plan_config(fingerprint, plugins)
