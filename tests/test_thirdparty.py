"""A third-party plugin distribution, pip-installed as a user would, is discovered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli

SOURCE = Path(__file__).parent / "thirdparty"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install tests/thirdparty with pip into a folder of its own and return it."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "--target",
            str(target),
            str(SOURCE),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (target / "miscore_example_thirdparty").is_dir()
    return target


def with_site(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_plugins_json_lists_the_installed_plugin(site: Path) -> None:
    result = run_cli("plugins", "--json", env=with_site(site))
    assert result.returncode == 0, result.stderr
    entry = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}["example"]
    assert entry["version"] == "1.2.3"
    assert entry["module"] == "miscore_example_thirdparty"
    assert entry["source"] == "entry point"
    assert entry["components"] == {
        "io": ["example_text"],
        "subfunction": ["example_add"],
        "augmentation": ["example_invert"],
        "architecture": ["example_identity"],
        "loss": ["example_mse"],
        "metric": ["example_accuracy"],
        "evaluator": ["example_halves"],
    }


def test_the_registry_returns_its_components(site: Path) -> None:
    code = textwrap.dedent(
        """
        import miscore, numpy as np
        registry = miscore.PluginManager().registry
        step = registry.create("subfunction", {"name": "example_add", "value": 2.5})
        volume = miscore.Volume(np.zeros((2, 2, 2, 1)))
        case = step.preprocess(miscore.Case("c", volume), training=False)
        folds = registry.get_evaluator("example_halves")().split(["a", "b", "c", "d"], seed=0)
        print(float(case.image.array.max()), folds[0].test)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **with_site(site)},
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2.5", "['a',", "'b']"]


def test_its_command_is_added_to_the_cli(site: Path) -> None:
    result = run_cli("example-hello", "--name", "ada", env=with_site(site))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello ada from example"


def test_disable_switch_hides_it(site: Path) -> None:
    env = {**with_site(site), "MISCORE_DISABLE_PLUGINS": "example"}
    result = run_cli("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "example" not in {p["name"] for p in data["plugins"]}
    assert data["disabled"] == ["example"]
    assert run_cli("example-hello", env=env).returncode == 2
