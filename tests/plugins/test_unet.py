"""The U-Net family: every variant builds, trains a step, saves and reloads, in 2D and 3D."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import miscore_unet
import numpy as np
import pydantic
import pytest

import miscore
from miscore.testing import check_component

NAMES = [
    "unet",
    "unet_plain",
    "unet_residual",
    "unet_dense",
    "unet_multires",
    "unet_attention",
    "unet_compact",
]


def predict(model: Any, x: Any) -> Any:
    """Call the model eagerly: tracing a predict function costs more than these tiny nets."""
    outputs = model(x, training=False)
    if isinstance(outputs, list | tuple):
        return [np.asarray(o) for o in outputs]
    return np.asarray(outputs)


def architecture(
    installed_plugins: miscore.PluginManager, name: str, **params: Any
) -> miscore.Architecture:
    cls = installed_plugins.registry.get_architecture(name)
    return cls(**{"filters": 4, "depth": 2, **params})


def one_hot_batch(shape: tuple[int, ...], n_classes: int, seed: int) -> tuple[Any, Any]:
    """A random image batch and a one-hot label batch whose class follows the intensity."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype("float32")
    labels = np.digitize(x[..., 0], np.linspace(-0.5, 0.5, n_classes - 1))
    y = np.eye(n_classes, dtype="float32")[labels]
    return x, y


def test_importing_the_plugin_does_not_load_tensorflow() -> None:
    code = (
        "import sys, miscore_unet; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_every_architecture_is_registered(installed_plugins: miscore.PluginManager) -> None:
    assert set(NAMES) <= set(installed_plugins.registry.names("architecture"))
    for name in NAMES:
        cls = installed_plugins.registry.get_architecture(name)
        assert cls.__module__.startswith("miscore_unet.")
        component = check_component(cls)
        assert component.config()["name"] == name
        assert component.config()["deep_supervision"] is False


@pytest.mark.slow
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_builds_trains_saves_and_reloads(
    installed_plugins: miscore.PluginManager, name: str, ndim: int, tmp_path: Path
) -> None:
    import keras

    keras.utils.set_random_seed(0)
    # 2D with batch norm and dropout, 3D with instance norm: both paths of every block
    params: dict[str, Any] = (
        {"normalization": "batch", "dropout": 0.1}
        if ndim == 2
        else {"normalization": "instance", "activation": "leaky_relu"}
    )
    model = architecture(installed_plugins, name, **params).build((16,) * ndim + (2,), 3)
    x, y = one_hot_batch((2, *(16,) * ndim, 2), 3, seed=ndim)

    assert model.output_shape == (None, *(16,) * ndim, 3)
    probabilities = predict(model, x)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)

    before = [w.copy() for w in model.get_weights()]
    # eager: tracing the train step takes ~5x longer than one eager step on these tiny nets
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", run_eagerly=True
    )
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True)]
    assert sum(changed) > len(changed) // 2, "one training step left most weights unchanged"

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(predict(loaded, x), predict(model, x), rtol=1e-5, atol=1e-6)


def test_saved_model_loads_without_the_plugin(
    installed_plugins: miscore.PluginManager, tmp_path: Path
) -> None:
    """No custom layers: a fresh process with only Keras loads every variant in safe mode."""
    paths = []
    for name in NAMES:
        model = architecture(installed_plugins, name, deep_supervision=True).build((8, 8, 1), 2)
        paths.append(tmp_path / f"{name}.keras")
        model.save(paths[-1])
    code = (
        "import sys, keras\n"
        "for p in sys.argv[1:]:\n"
        "    keras.models.load_model(p, safe_mode=True)\n"
        "print('miscore_unet' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_any_spatial_size_when_shape_is_none(installed_plugins: miscore.PluginManager) -> None:
    model = architecture(installed_plugins, "unet", depth=3).build((None, None, 1), 2)
    for size in (16, 40):
        out = predict(model, np.zeros((1, size, size, 1), "float32"))
        assert out.shape == (1, size, size, 2)


@pytest.mark.slow
def test_deep_supervision_outputs(installed_plugins: miscore.PluginManager) -> None:
    import keras

    model = architecture(
        installed_plugins, "unet_plain", depth=3, deep_supervision=True, normalization="none"
    ).build((16, 16, 16, 1), 2)
    assert model.output_names == ["segmentation", "deep_supervision_1", "deep_supervision_2"]
    x, y = one_hot_batch((1, 16, 16, 16, 1), 2, seed=1)
    outputs = predict(model, x)
    assert [o.shape for o in outputs] == [(1, 16, 16, 16, 2)] * 3
    for output in outputs:
        np.testing.assert_allclose(output.sum(axis=-1), 1.0, atol=1e-5)
    # the coarsest head is upsampled from 4x4x4: constant on each 4x4x4 block
    coarse = outputs[2][0, ..., 1]
    np.testing.assert_allclose(coarse[:4, :4, :4], coarse[0, 0, 0], rtol=1e-6)
    # the documented way to keep only the prediction head
    single = keras.Model(model.input, model.get_layer("segmentation").output)
    np.testing.assert_allclose(predict(single, x), outputs[0], rtol=1e-6)

    weights = {"segmentation": 1.0, "deep_supervision_1": 0.5, "deep_supervision_2": 0.25}
    model.compile(
        optimizer="adam",
        loss={name: "categorical_crossentropy" for name in weights},
        loss_weights=weights,
        run_eagerly=True,
    )
    logs = model.fit(x, dict.fromkeys(weights, y), epochs=1, verbose=0).history
    total = sum(w * logs[f"{name}_loss"][0] for name, w in weights.items())
    assert logs["loss"][0] == pytest.approx(total, rel=1e-4)

    # one loss for every output, equal weights; the targets still one per output
    model.compile(optimizer="adam", loss="categorical_crossentropy", run_eagerly=True)
    logs = model.fit(x, (y, y, y), epochs=1, verbose=0).history
    total = sum(logs[f"{name}_loss"][0] for name in weights)
    assert logs["loss"][0] == pytest.approx(total, rel=1e-4)


def test_one_class_gives_a_sigmoid_channel(installed_plugins: miscore.PluginManager) -> None:
    model = architecture(installed_plugins, "unet_residual").build((16, 16, 1), 1)
    x, _ = one_hot_batch((2, 16, 16, 1), 2, seed=3)
    out = predict(model, x)
    assert out.shape == (2, 16, 16, 1)
    assert out.min() > 0.0 and out.max() < 1.0
    assert np.ptp(out) > 0  # a softmax over one channel would be constant 1


def test_feature_maps_double_per_level_up_to_the_cap(
    installed_plugins: miscore.PluginManager,
) -> None:
    def widest_conv(model: Any) -> int:
        return int(max(layer.filters for layer in model.layers if hasattr(layer, "filters")))

    plain = architecture(installed_plugins, "unet_plain", filters=4, depth=3, max_filters=8)
    assert widest_conv(plain.build((16, 16, 1), 2)) == 8
    standard = architecture(installed_plugins, "unet", filters=4, depth=3)
    assert widest_conv(standard.build((16, 16, 1), 2)) == 32  # 4 * 2**3 at the bottleneck


def test_params_change_the_network(installed_plugins: miscore.PluginManager) -> None:
    def count(name: str, **params: Any) -> int:
        model = architecture(installed_plugins, name, **params).build((16, 16, 1), 2)
        return int(model.count_params())

    assert count("unet_dense", block_layers=4) > count("unet_dense", block_layers=2)
    assert count("unet_multires", alpha=2.5) > count("unet_multires", alpha=1.0)
    assert count("unet", filters=8) > 3 * count("unet", filters=4)


def test_input_errors_say_what_to_do(installed_plugins: miscore.PluginManager) -> None:
    unet = architecture(installed_plugins, "unet", depth=3)
    with pytest.raises(miscore.InputError, match=r"20 .*multiple of 8 \(2\*\*depth"):
        unet.build((16, 20, 1), 2)
    with pytest.raises(miscore.InputError, match="2 or 3 spatial axes"):
        unet.build((16, 1), 2)
    with pytest.raises(miscore.InputError, match="channel count"):
        unet.build((16, 16, None), 2)
    with pytest.raises(miscore.InputError, match="n_classes"):
        unet.build((16, 16, 1), 0)


def test_params_are_validated() -> None:
    with pytest.raises(pydantic.ValidationError, match="normalization"):
        miscore_unet.UNet(normalization="layer")
    with pytest.raises(pydantic.ValidationError, match=r"unknown_field|Extra inputs"):
        miscore_unet.UNet(unknown_field=1)
    assert miscore_unet.PlainUNet().params.max_filters == 320
    assert miscore_unet.PlainUNet().params.normalization == "instance"


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu", "gelu", "swish", "mish"])
def test_every_activation_builds(installed_plugins: miscore.PluginManager, activation: str) -> None:
    model = architecture(installed_plugins, "unet", depth=1, activation=activation)
    out = predict(
        model.build((8, 8, 1), 2), np.linspace(-2, 2, 64, dtype="float32").reshape(1, 8, 8, 1)
    )
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-5)
