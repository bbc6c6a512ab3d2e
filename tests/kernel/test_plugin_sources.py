"""Local and editable plugins are keyed by a hash of their source, not by their version.

Editing ``my_steps.py`` (or a package installed with ``pip install -e``) without bumping its
version must make new cache entries: nothing stale is served.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import numpy as np
import pytest

from miscore.core.plugins import PluginManager
from tests.cli.helpers import run_cli

STEP = """
import numpy as np
import miscore


class Fill(miscore.Subfunction):
    \"\"\"Sets every image voxel to one value.\"\"\"

    name = "fill"

    def preprocess(self, case, training):
        image = case.image.with_array(np.full_like(case.image.array, {value}))
        return miscore.Case(case.id, image, case.label, dict(case.meta))


@miscore.hookimpl
def miscore_register_subfunctions():
    return [Fill]
"""

CONFIG = """
data: {classes: 2}
preprocessing: [fill]
cache: {path: cache}
"""


def _entries(cache: Path) -> dict[str, float]:
    """Entry key -> the value its image holds (every voxel alike here)."""
    import zarr

    values = {}
    for folder in sorted((cache / "entries").iterdir()):
        array = zarr.open_group(str(folder / "case.zarr"), mode="r")["image"]
        assert isinstance(array, zarr.Array)
        image = np.asarray(array[...])
        assert np.all(image == image.flat[0])
        values[folder.name] = float(image.flat[0])
    return values


def test_editing_a_local_plugin_file_makes_new_cache_entries(tmp_path: Path) -> None:
    synth = run_cli(
        "synth", tmp_path / "data", "--cases", "2", "--shape", "8", "8", "8", "--classes", "2"
    )
    assert synth.returncode == 0, synth.stderr
    (tmp_path / "config.yaml").write_text(CONFIG)
    step = tmp_path / "my_steps.py"
    step.write_text(STEP.format(value=1.0))
    build = ("-q", "--plugin", "my_steps.py", "cache", "build", "config.yaml", "--data", "data")

    first = run_cli(*build, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert set(_entries(tmp_path / "cache").values()) == {1.0}

    again = run_cli(*build, cwd=tmp_path)  # unchanged source: the entries are reused
    assert again.returncode == 0, again.stderr
    assert len(_entries(tmp_path / "cache")) == 2

    step.write_text(STEP.format(value=7.0))  # same version ("0+local"), other output
    edited = run_cli(*build, cwd=tmp_path)
    assert edited.returncode == 0, edited.stderr
    entries = _entries(tmp_path / "cache")
    assert sorted(entries.values()) == [1.0, 1.0, 7.0, 7.0]  # two new keys, new results

    # What the key holds: the plugin's version with the hash of its source.
    new_folder = next(k for k, v in entries.items() if v == 7.0)
    marker = json.loads((tmp_path / "cache" / "entries" / new_folder / "complete.json").read_text())
    version = marker["key_material"]["pipeline"]["plugins"]["my_steps"]
    assert version.startswith("0+local.src.") and len(version.split(".src.")[1]) == 12


def _fake_distribution(site: Path, editable: bool) -> Path:
    """``tp_steps`` 0.1 installed in ``site`` (as ``pip install`` would, or with ``-e``)."""
    package = site / "tp_steps"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from tp_steps.steps import *  # noqa: F403\n")
    (package / "steps.py").write_text(STEP.format(value=1.0))
    dist = site / "tp_steps-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tp-steps\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[miscore]\ntp_steps = tp_steps\n")
    if editable:
        url = {"url": package.parent.as_uri(), "dir_info": {"editable": True}}
        (dist / "direct_url.json").write_text(json.dumps(url))
    return package


def _plugin(site: Path, name: str) -> dict[str, object]:
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = run_cli("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    [info] = [p for p in json.loads(result.stdout)["plugins"] if p["name"] == name]
    return dict(info)


def test_an_editable_install_is_keyed_by_its_package_source(tmp_path: Path) -> None:
    package = _fake_distribution(tmp_path / "site", editable=True)
    before = _plugin(tmp_path / "site", "tp_steps")
    assert before["version"] == "0.1" and isinstance(before["source_hash"], str)
    # A module the entry point does not name, but the package holds, counts too.
    (package / "steps.py").write_text(STEP.format(value=2.0))
    after = _plugin(tmp_path / "site", "tp_steps")
    assert after["version"] == "0.1" and after["source_hash"] != before["source_hash"]


def test_a_regular_install_is_keyed_by_its_version(tmp_path: Path) -> None:
    _fake_distribution(tmp_path / "site", editable=False)
    assert _plugin(tmp_path / "site", "tp_steps")["source_hash"] is None


def test_a_module_registered_in_python_is_keyed_by_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "api_steps.py").write_text(STEP.format(value=1.0))
    monkeypatch.syspath_prepend(str(tmp_path))
    import api_steps  # type: ignore[import-not-found]

    manager = PluginManager(load_entrypoints=False)
    manager.register(api_steps)
    [info] = manager.plugins()
    assert info.source_hash is not None
    assert manager.plugin_of("subfunction", "fill").key_version == (
        f"0+local.src.{info.source_hash}"
    )


def test_bundled_plugins_of_an_editable_checkout_have_a_stable_source_hash() -> None:
    first = {i.name: i.key_version for i in PluginManager().plugins()}
    second = {i.name: i.key_version for i in PluginManager().plugins()}
    assert first == second
    direct_url = importlib.metadata.distribution("miscore").read_text("direct_url.json")
    if direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"):
        assert "+src." in first["preprocessing"]  # this checkout, installed with pip install -e
