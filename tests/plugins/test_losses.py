"""Segmentation losses against hand-computed numbers and the formulas written in numpy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import miscore
from miscore.testing import check_component

NAMES = [
    "tversky",
    "dice",
    "dice_classwise",
    "dice_ce",
    "tversky_ce",
    "focal",
    "focal_tversky",
    "jaccard",
]
OVERLAP = ["tversky", "dice", "dice_classwise", "focal_tversky", "jaccard"]
EPS = 1e-7  # the probability clip of the cross-entropy terms


def build(plugins: miscore.PluginManager, name: str, n_classes: int, **params: Any) -> Any:
    return plugins.registry.get_loss(name)(**params).build(n_classes)


def value(loss: Any, y_true: Any, y_pred: Any) -> float:
    return float(loss(np.asarray(y_true, "float32"), np.asarray(y_pred, "float32")))


# --- the formulas, in numpy ------------------------------------------------------------


def reference(
    name: str,
    y: Any,
    p: Any,
    class_weights: list[float] | None = None,
    include_background: bool = True,
    smooth: float = 1e-5,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float | None = None,
    ce_weight: float = 1.0,
) -> float:
    """The loss of one-hot ``y`` and probabilities ``p`` (``(B, *spatial, C)``), batch mean."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    axes = tuple(range(1, y.ndim - 1))
    w = np.ones(y.shape[-1]) if class_weights is None else np.asarray(class_weights, float)
    w_overlap = w.copy()
    if not include_background:
        w_overlap[0] = 0.0
    tp = (y * p).sum(axes)
    fp = ((1 - y) * p).sum(axes)
    fn = (y * (1 - p)).sum(axes)

    def class_mean(scores: Any) -> Any:
        return (scores * w_overlap).sum(-1) / w_overlap.sum()

    def cross_entropy(focus: float) -> Any:
        q = np.clip(p, EPS, 1 - EPS)
        return (-(y * (1 - q) ** focus * np.log(q)) * w).sum(-1).mean(axis=axes)

    tversky = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth)
    per_sample = {
        "tversky": lambda: 1 - class_mean(tversky),
        "focal_tversky": lambda: class_mean((1 - tversky) ** (gamma or 0.75)),
        "tversky_ce": lambda: 1 - class_mean(tversky) + ce_weight * cross_entropy(0.0),
        "dice_classwise": lambda: 1 - class_mean(dice),
        "dice_ce": lambda: 1 - class_mean(dice) + ce_weight * cross_entropy(0.0),
        "jaccard": lambda: 1 - class_mean((tp + smooth) / (tp + fp + fn + smooth)),
        "focal": lambda: cross_entropy(2.0 if gamma is None else gamma),
        "dice": lambda: (
            1
            - (2 * (tp * w_overlap).sum(-1) + smooth)
            / (((2 * tp + fp + fn) * w_overlap).sum(-1) + smooth)
        ),
    }[name]()
    return float(np.mean(per_sample))


def softmax_case(shape: tuple[int, ...], n_classes: int, seed: int) -> tuple[Any, Any]:
    """One-hot targets and softmax predictions that partly agree with them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=shape)
    logits = rng.normal(size=(*shape, n_classes)) + 1.5 * np.eye(n_classes)[labels]
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return np.eye(n_classes)[labels], p


# --- tests -----------------------------------------------------------------------------


def test_importing_the_plugin_does_not_load_tensorflow() -> None:
    code = (
        "import sys, miscore_losses; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_every_loss_is_registered(installed_plugins: miscore.PluginManager) -> None:
    assert set(NAMES) <= set(installed_plugins.registry.names("loss"))
    for name in NAMES:
        component = check_component(installed_plugins.registry.get_loss(name))
        assert component.config()["name"] == name
    tversky = installed_plugins.registry.get_loss("tversky")()
    assert tversky.config()["alpha"] == 0.3 and tversky.config()["beta"] == 0.7


# A binary sigmoid output on four voxels: truth [1, 1, 0, 0], prediction [.8, .6, .3, .1].
# Foreground: TP = .8 + .6 = 1.4, FP = .3 + .1 = 0.4, FN = .2 + .4 = 0.6.
# Background (1 - p against 1 - y): TP = .7 + .9 = 1.6, FP = .2 + .4 = 0.6, FN = 0.4.
BINARY_TRUTH = [[[[1.0], [1.0]], [[0.0], [0.0]]]]
BINARY_PREDICTION = [[[[0.8], [0.6]], [[0.3], [0.1]]]]
CE = -(np.log(0.8) + np.log(0.6) + np.log(0.7) + np.log(0.9)) / 4
HAND_COMPUTED = [
    ("dice", {}, 1 - (2 * 3.0) / (2 * 3.0 + 1.0 + 1.0)),
    ("dice_classwise", {}, 1 - (2.8 / 3.8 + 3.2 / 4.2) / 2),
    ("dice_classwise", {"include_background": False}, 1 - 2.8 / 3.8),
    ("dice_classwise", {"class_weights": [1.0, 3.0]}, 1 - (2.8 / 3.8 * 3 + 3.2 / 4.2) / 4),
    ("tversky", {}, 1 - (1.4 / (1.4 + 0.3 * 0.4 + 0.7 * 0.6) + 1.6 / (1.6 + 0.18 + 0.28)) / 2),
    ("tversky", {"alpha": 0.5, "beta": 0.5}, 1 - (2.8 / 3.8 + 3.2 / 4.2) / 2),
    ("jaccard", {"include_background": False}, 1 - 1.4 / 2.4),
    ("focal_tversky", {"include_background": False}, (1 - 1.4 / 1.94) ** 0.75),
    ("dice_ce", {"include_background": False}, 1 - 2.8 / 3.8 + CE),
    ("tversky_ce", {"include_background": False, "ce_weight": 0.5}, 1 - 1.4 / 1.94 + CE / 2),
    (
        "focal",
        {},
        -(0.2**2 * np.log(0.8) + 0.4**2 * np.log(0.6) + 0.3**2 * np.log(0.7) + 0.1**2 * np.log(0.9))
        / 4,
    ),
    (
        "focal",
        {"gamma": 0.0, "class_weights": [2.0, 1.0]},
        -(np.log(0.8) + np.log(0.6) + 2 * np.log(0.7) + 2 * np.log(0.9)) / 4,
    ),
]


@pytest.mark.parametrize(("name", "params", "expected"), HAND_COMPUTED)
def test_hand_computed_binary_values(
    installed_plugins: miscore.PluginManager, name: str, params: dict[str, Any], expected: float
) -> None:
    loss = build(installed_plugins, name, 1, **params)
    assert value(loss, BINARY_TRUTH, BINARY_PREDICTION) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_multiclass_3d_values_match_the_formula(
    installed_plugins: miscore.PluginManager, name: str
) -> None:
    y, p = softmax_case((2, 6, 5, 4), 3, seed=1)
    plain = build(installed_plugins, name, 3)
    assert value(plain, y, p) == pytest.approx(reference(name, y, p), rel=1e-4)

    params: dict[str, Any] = {"class_weights": [0.2, 1.0, 2.5]}
    if name != "focal":
        params["include_background"] = False
    weighted = build(installed_plugins, name, 3, **params)
    expected = reference(name, y, p, **params)
    assert value(weighted, y, p) == pytest.approx(expected, rel=1e-4)
    assert expected != pytest.approx(reference(name, y, p), rel=1e-3)  # the params matter


@pytest.mark.parametrize("name", NAMES)
def test_perfect_and_worst_predictions(installed_plugins: miscore.PluginManager, name: str) -> None:
    y, _ = softmax_case((2, 4, 4), 3, seed=2)
    loss = build(installed_plugins, name, 3)
    worst = np.roll(y, 1, axis=-1)  # every voxel predicted as another class, with certainty
    ce_worst = -np.log(EPS)
    perfect_expected, worst_expected = {
        "dice_ce": (0.0, 1.0 + ce_worst),
        "tversky_ce": (0.0, 1.0 + ce_worst),
        "focal": (0.0, ce_worst),
    }.get(name, (0.0, 1.0))
    assert value(loss, y, y) == pytest.approx(perfect_expected, abs=1e-4)
    assert value(loss, y, worst) == pytest.approx(worst_expected, rel=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_binary_sigmoid_equals_two_class_softmax(
    installed_plugins: miscore.PluginManager, name: str
) -> None:
    y, p = softmax_case((2, 5, 7), 2, seed=3)
    two_class = value(build(installed_plugins, name, 2, class_weights=[0.5, 2.0]), y, p)
    binary = build(installed_plugins, name, 1, class_weights=[0.5, 2.0])
    assert value(binary, y[..., 1:], p[..., 1:]) == pytest.approx(two_class, rel=1e-5)


def test_integer_labels_equal_one_hot_targets(installed_plugins: miscore.PluginManager) -> None:
    y, p = softmax_case((2, 6, 6), 4, seed=4)
    labels = np.argmax(y, axis=-1)[..., None]
    for name in NAMES:
        loss = build(installed_plugins, name, 4)
        assert value(loss, labels, p) == pytest.approx(value(loss, y, p), rel=1e-6), name


def test_scores_per_sample_then_averages_the_batch(
    installed_plugins: miscore.PluginManager,
) -> None:
    y, p = softmax_case((3, 8, 8), 3, seed=5)
    p[1] = y[1]  # one perfect sample among imperfect ones
    loss = build(installed_plugins, "tversky", 3)
    per_sample = [value(loss, y[i : i + 1], p[i : i + 1]) for i in range(3)]
    assert per_sample[1] == pytest.approx(0.0, abs=1e-6)
    assert value(loss, y, p) == pytest.approx(np.mean(per_sample), rel=1e-5)


def test_wrong_class_weights_and_channels_are_refused(
    installed_plugins: miscore.PluginManager,
) -> None:
    with pytest.raises(miscore.InputError, match=r"class_weights has 2 entries.*3 classes"):
        build(installed_plugins, "tversky", 3, class_weights=[1.0, 1.0])
    with pytest.raises(miscore.InputError, match=r"class_weights has 1 entries.*2 classes"):
        build(installed_plugins, "dice", 1, class_weights=[1.0])
    with pytest.raises(miscore.InputError, match="positive weight"):
        build(installed_plugins, "dice", 2, class_weights=[1.0, 0.0], include_background=False)
    y, p = softmax_case((1, 4, 4), 3, seed=6)
    with pytest.raises(ValueError, match=r"built for 2 classes.*3 channels"):
        value(build(installed_plugins, "dice", 2), y, p)
    # what Keras passes when one target array is given to a two-output model
    with pytest.raises(ValueError, match="one target per output"):
        value(build(installed_plugins, "dice", 3), y[0], p)


def test_gradients_stay_finite_at_a_perfect_prediction(
    installed_plugins: miscore.PluginManager,
) -> None:
    import tensorflow as tf

    y, _ = softmax_case((2, 4, 4), 3, seed=7)
    logits = tf.Variable(30.0 * (y - 0.5), dtype=tf.float32)  # softmax ~ one-hot = y
    for name in NAMES:
        loss = build(installed_plugins, name, 3)
        with tf.GradientTape() as tape:
            out = loss(tf.constant(y, tf.float32), tf.nn.softmax(logits))
        gradient = tape.gradient(out, logits).numpy()
        assert np.isfinite(gradient).all(), name


def tiny_model(n_classes: int) -> Any:
    import keras

    activation = "softmax" if n_classes > 1 else "sigmoid"
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Conv2D(n_classes, 3, padding="same", activation=activation)(inputs)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("name", NAMES)
def test_compiled_model_trains_saves_and_reloads(
    installed_plugins: miscore.PluginManager, name: str, tmp_path: Path
) -> None:
    import keras

    keras.utils.set_random_seed(0)
    n_classes = 1 if name == "focal" else 3  # one binary model among them
    x = np.random.default_rng(8).normal(size=(4, 8, 8, 1)).astype("float32")
    labels = (x[..., 0] > 0).astype(int) + (x[..., 0] > 1).astype(int) * (n_classes > 1)
    y = labels[..., None] if n_classes == 1 else np.eye(n_classes)[labels]
    loss = build(
        installed_plugins, name, n_classes, class_weights=[1.0, 2.0, 3.0][: max(n_classes, 2)]
    )

    model = tiny_model(n_classes)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, run_eagerly=True)
    history = model.fit(x, y, epochs=3, batch_size=4, verbose=0).history["loss"]
    assert np.isfinite(history).all()
    assert history[-1] < history[0], f"{name} did not decrease in 3 steps: {history}"

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded.loss) is type(loss)
    assert loaded.loss.get_config() == loss.get_config()
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0))


def test_fresh_process_loads_a_compiled_model_with_custom_objects(
    installed_plugins: miscore.PluginManager, tmp_path: Path
) -> None:
    """Loading with compile=True needs the loss class: the component's custom_objects()."""
    component = installed_plugins.registry.get_loss("dice_ce")(ce_weight=0.5)
    assert list(component.custom_objects()) == ["miscore>DiceCEKerasLoss"]
    model = tiny_model(2)
    model.compile(loss=component.build(2))
    path = tmp_path / "model.keras"
    model.save(path)
    code = (
        "import sys, keras, miscore\n"
        "loss = miscore.PluginManager().registry.get_loss('dice_ce')()\n"
        "model = keras.models.load_model(\n"
        "    sys.argv[1], safe_mode=True, custom_objects=loss.custom_objects()\n"
        ")\n"
        "print(type(model.loss).__name__, model.loss.get_config()['ce_weight'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "DiceCEKerasLoss 0.5"
