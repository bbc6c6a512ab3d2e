"""A pip-installed plugin that ships a trained model is listed and predicts by name.

The distribution (tests/thirdparty_model) registers, through ``miscore_register_models``,
``example-model`` (a model folder) and ``example-package`` (the same model as a ``.miscore``
package). Its weights are not in the repository: the module fixture trains
a tiny model (2 phantoms of 32^3, a U-Net of 2 filters and depth 1, one epoch of two steps),
copies the model folder into a copy of the distribution's source, and installs that with pip,
as a user installs a model package. A committed ``.keras`` file would tie the test to the
Keras version that wrote it and to the bundled plugins' versions recorded beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import miscore
from tests.cli.helpers import assert_one_line_error, run_cli

SOURCE = Path(__file__).parent / "thirdparty_model"
PACKAGE = "miscore_example_model"

CONFIG = """
data: {classes: 2}
preprocessing: [{name: clip, min: -150, max: 250}, zscore]
patching: {mode: random, patch_shape: [32, 32, 32]}
augmentation: []
model:
  architecture: {name: unet, filters: 2, depth: 1}
  loss: dice_ce
training: {epochs: 1, steps_per_epoch: 2, batch_size: 1}
cache: {path: cache}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained through the CLI: ``root/model``, its data in ``root/data``."""
    root = tmp_path_factory.mktemp("model_plugin")
    result = run_cli(
        "synth", root / "data", "--cases", "2", "--shape", "32", "32", "32",
        "--classes", "2", "--seed", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (root / "config.yaml").write_text(CONFIG)
    result = run_cli("train", "config.yaml", "--data", "data", "--out", "model", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def site(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/thirdparty_model with the trained model inside, installed by pip into a folder."""
    source = tmp_path_factory.mktemp("source") / "thirdparty_model"
    shutil.copytree(SOURCE, source, ignore=shutil.ignore_patterns("__pycache__"))
    # what a model package ships: the model and its description, not the resume checkpoint
    shutil.copytree(
        trained / "model",
        source / PACKAGE / "model",
        ignore=shutil.ignore_patterns("checkpoints", "curves.png", "history.tsv"),
    )
    package = source / PACKAGE / "example.miscore"
    result = run_cli(
        "export", trained / "model", "--out", package,
        "--task", "the organ, packaged", "--license", "CC-BY-4.0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-cache-dir", "--target", str(target), str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    assert (target / PACKAGE / "model" / "model.keras").is_file()
    assert (target / PACKAGE / "example.miscore").is_file()
    return target


def with_site(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_miscore_models_lists_the_shipped_model_with_its_card(site: Path) -> None:
    result = run_cli("models", "--json", env=with_site(site))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["failures"] == []
    entry = {m["name"]: m for m in data["models"]}["example-model"]
    assert entry["plugin"] == "example_model"
    assert entry["version"] == "0.3.0"
    assert Path(entry["path"]) == site / PACKAGE / "model"
    card = entry["card"]
    assert card["license"] == "CC0-1.0"
    assert card["task"] == "organ segmentation in synthetic CT phantoms"
    assert card["classes"] == 2  # recorded by the model folder, not the plugin's card
    packaged = {m["name"]: m for m in data["models"]}["example-package"]
    assert Path(packaged["path"]) == site / PACKAGE / "example.miscore"
    assert packaged["card"]["task"] == "the organ, packaged"  # the package's own card
    assert packaged["card"]["license"] == "CC-BY-4.0"
    assert packaged["card"]["classes"] == 2

    table = run_cli("models", env={**with_site(site), "COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if "example-model" in line)
    assert "example_model 0.3.0" in row and "CC0-1.0" in row and "organ segmentation" in row


def test_miscore_plugins_names_the_model_it_ships(site: Path) -> None:
    result = run_cli("plugins", "--json", env=with_site(site))
    assert result.returncode == 0, result.stderr
    entry = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}["example_model"]
    assert entry["models"] == ["example-model", "example-package"]
    assert entry["source"] == "entry point"


def labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def image(trained: Path) -> Path:
    return trained / "data" / "imagesTr" / "case_000_0000.nii.gz"


@pytest.fixture(scope="module")
def by_name(trained: Path, site: Path, image: Path) -> Path:
    """``miscore predict example-model IMAGE --out by_name``, the installed model read-only
    (a package folder in site-packages may well be)."""
    shipped = site / PACKAGE / "model"
    for path in [shipped, *shipped.iterdir()]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        result = run_cli(
            "predict", "example-model", image, "--out", "by_name", cwd=trained, env=with_site(site)
        )
    finally:
        for path in [shipped, *shipped.iterdir()]:
            path.chmod(path.stat().st_mode | 0o200)
    assert result.returncode == 0, result.stderr
    assert "case_000" in result.stdout + result.stderr
    return trained / "by_name" / "case_000.nii.gz"


def test_predict_and_load_model_by_name_give_the_labels_of_the_original_folder(
    trained: Path, site: Path, image: Path, by_name: Path
) -> None:
    # one interpreter for both loads (TensorFlow starts once): by name and from the folder
    code = f"""
        import json, miscore, numpy as np
        named = miscore.load_model("example-model")
        label = named.predict({str(image)!r}).array[..., 0]
        original = miscore.load_model({str(trained / "model")!r}).predict({str(image)!r})
        packaged = miscore.load_model("example-package").predict({str(image)!r})
        same = bool(np.array_equal(label, original.array[..., 0]))
        same = same and bool(np.array_equal(label, packaged.array[..., 0]))
        print(json.dumps([named.config.data.classes, list(label.shape), same]))
        np.save({str(trained / "api_labels.npy")!r}, label)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **with_site(site)},
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    classes, shape, same = json.loads(result.stdout.strip().splitlines()[-1])
    assert (classes, shape, same) == (2, [32, 32, 32], True)
    # the CLI's prediction by name is the model folder's prediction, voxel for voxel
    from_folder = np.load(trained / "api_labels.npy")
    assert np.array_equal(labels(by_name), from_folder)


def test_an_unknown_name_lists_the_registered_models(
    site: Path, image: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "predict", "exmaple-model", image, "--out", "out", cwd=tmp_path, env=with_site(site)
    )
    line = assert_one_line_error(result)
    assert line.startswith("miscore: error: exmaple-model: no such model folder or .miscore")
    assert "did you mean 'example-model'?" in line
    assert not (tmp_path / "out").exists()


# --- registration errors, in process (no TensorFlow) ---------------------------------------


class _Plugin:
    """A plugin object whose ``miscore_register_models`` returns ``models``."""

    def __init__(self, models: object) -> None:
        self.models = models

    @miscore.hookimpl
    def miscore_register_models(self) -> object:
        return self.models


def registry_of(**plugins: object) -> miscore.Registry:
    manager = miscore.PluginManager(load_entrypoints=False)
    for name, models in plugins.items():
        manager.register(_Plugin(models), name, version="1.0")
    return manager.registry


def test_entries_and_tuples_register_with_their_plugin(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b.miscore").write_bytes(b"")
    registry = registry_of(
        lab=[
            miscore.ModelEntry("model-a", tmp_path / "a", card={"licence": "MIT"}),
            ("model-b", str(tmp_path / "b.miscore")),
        ]
    )
    assert registry.failures == ()
    assert [(m.name, m.path, m.plugin, m.card) for m in registry.models()] == [
        ("model-a", tmp_path / "a", "lab", {"licence": "MIT"}),
        ("model-b", tmp_path / "b.miscore", "lab", {}),
    ]


def test_a_path_the_package_does_not_ship_is_the_plugins_failure(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    registry = registry_of(
        lab=[("gone", tmp_path / "missing"), ("good", tmp_path / "good")],
        other=[("rel", "model"), ("bad/name", tmp_path / "good")],
        broken="not a list",
    )
    assert [m.name for m in registry.models()] == ["good"]  # the others still register
    messages = sorted(str(f) for f in registry.failures)
    assert len(messages) == 4
    assert all("\n" not in m for m in messages)
    assert any(
        "plugin 'lab' failed at miscore_register_models" in m
        and f"{tmp_path / 'missing'} does not exist" in m
        for m in messages
    ), messages
    assert any("'rel'" in m and "relative path" in m for m in messages), messages
    assert any("'bad/name'" in m and "no '/'" in m for m in messages), messages
    assert any("plugin 'broken'" in m and "not a list" in m for m in messages), messages


def test_a_model_name_two_plugins_register_goes_to_the_one_called_first(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    # pluggy calls the plugin registered later first
    registry = registry_of(
        early=[("liver", tmp_path / "first")], late=[("liver", tmp_path / "second")]
    )
    assert registry.model("liver").plugin == "late"
    assert [(s.kind, s.name, s.plugin, s.by) for s in registry.shadowed] == [
        ("model", "liver", "early", "late")
    ]


def test_an_unknown_model_name_lists_the_registered_ones(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    registry = registry_of(lab=[("liver-ct", tmp_path / "m")])
    with pytest.raises(miscore.ComponentNotFoundError) as error:
        registry.model("livr-ct")
    assert str(error.value) == (
        "no model named 'livr-ct' (did you mean 'liver-ct'?); installed: liver-ct"
    )


def test_miscore_models_reports_a_broken_plugin_in_one_line(tmp_path: Path) -> None:
    plugin = tmp_path / "broken_models.py"
    plugin.write_text(
        textwrap.dedent(
            """
            import miscore

            @miscore.hookimpl
            def miscore_register_models():
                return [("gone", "/nonexistent/miscore/model")]
            """
        )
    )
    result = run_cli("--plugin", str(plugin), "models")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "broken_models" in line]
    assert lines == [
        "plugin 'broken_models' failed at miscore_register_models: ValueError: model 'gone': "
        "/nonexistent/miscore/model does not exist (not shipped in the package?)"
    ], result.stdout


def test_a_path_wins_over_a_registered_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = tmp_path / "site" / "liver-ct"
    shipped.mkdir(parents=True)
    manager = miscore.PluginManager(load_entrypoints=False)
    manager.register(_Plugin([("liver-ct", shipped)]), "lab", version="1.0")
    monkeypatch.chdir(tmp_path)
    assert miscore.resolve_model("liver-ct", manager).path == shipped
    (tmp_path / "liver-ct").mkdir()  # a folder of that name here now wins
    assert miscore.resolve_model("liver-ct", manager).path == Path("liver-ct")
    with pytest.raises(miscore.InputError) as error:
        miscore.resolve_model("liver-mr", manager)
    assert str(error.value).startswith(
        "liver-mr: no such model folder or .miscore package, and no model named 'liver-mr' "
        "(did you mean 'liver-ct'?); installed: liver-ct"
    )
    with pytest.raises(miscore.InputError) as error:  # a path is never taken for a name
        miscore.resolve_model("models/liver-ct", manager)
    assert str(error.value) == "models/liver-ct: no such model folder or .miscore package"
