"""A third-party plugin distribution, pip-installed as a user would, is discovered.

The distribution (tests/thirdparty) declares two plugins: ``example`` (one component of each
kind, a command, and its own default augmentation set) and ``example_nifti`` (a ``.nii.gz``
reader with ``priority = 10``). Both replace what miscore bundles without a line changed in
miscore, which is what a plugin contract is for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
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


def run_python(code: str, site: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that sees the installed distribution."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **with_site(site), **env},
        check=False,
        timeout=300,
    )


@pytest.fixture
def nifti_file(tmp_path: Path) -> Path:
    """A real gzipped NIfTI image with 2 mm x 1.5 mm x 3 mm voxels, written by nibabel."""
    import nibabel

    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 5.0]
    path = tmp_path / "case_001.nii.gz"
    nibabel.save(nibabel.Nifti1Image(array, affine), str(path))  # type: ignore[no-untyped-call]
    return path


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


def test_plugins_json_lists_the_second_plugin_of_the_distribution(site: Path) -> None:
    result = run_cli("plugins", "--json", env=with_site(site))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["failures"] == []
    entry = {p["name"]: p for p in data["plugins"]}["example_nifti"]
    assert entry["version"] == "1.2.3"
    assert entry["module"] == "miscore_example_thirdparty.nifti"
    assert entry["source"] == "entry point"
    assert entry["components"] == {"io": ["vendor_nifti"]}


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


# --- replacing what miscore bundles -----------------------------------------------------

DEFAULT_SET = """
    import miscore
    manager = miscore.PluginManager()
    config = miscore.apply_defaults(
        miscore.parse_config({"augmentation": "default"}), manager.registry
    )
    print(" ".join(f"{a.name}:{a.p}" for a in config.augmentation))
"""


def test_its_default_augmentation_set_replaces_the_bundled_one(site: Path) -> None:
    result = run_python(DEFAULT_SET, site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["flip:0.5", "example_invert:0.25"]


def test_without_it_the_bundled_default_set_comes_back(site: Path) -> None:
    result = run_python(DEFAULT_SET, site, MISCORE_DISABLE_PLUGINS="example")
    assert result.returncode == 0, result.stderr
    names = [entry.split(":")[0] for entry in result.stdout.split()]
    assert names[0] == "flip" and len(names) > 2
    assert "example_invert" not in names


def test_its_reader_wins_nii_gz_by_declared_priority(site: Path, nifti_file: Path) -> None:
    code = f"""
        import json
        from pathlib import Path
        import miscore
        path = Path({str(nifti_file)!r})
        registry = miscore.PluginManager().registry
        able = [i.name for i in registry.components("io") if i.cls().can_read(path)]
        io = registry.io_for(path)
        print(json.dumps([able, io.name, io.read(path).meta]))
    """
    result = run_python(code, site)
    assert result.returncode == 0, result.stderr
    able, chosen, meta = json.loads(result.stdout)
    # both can read the file, and the one whose name sorts last wins: priority, not the alphabet
    assert sorted(able) == ["nifti", "vendor_nifti"]
    assert chosen == "vendor_nifti"
    assert meta == {"reader": "vendor_nifti"}


def test_info_reads_nii_gz_with_it_and_with_the_bundled_reader_once_disabled(
    site: Path, nifti_file: Path
) -> None:
    ours = run_cli("info", nifti_file, "--json", env=with_site(site))
    assert ours.returncode == 0, ours.stderr
    bundled = run_cli(
        "info",
        nifti_file,
        "--json",
        env={**with_site(site), "MISCORE_DISABLE_PLUGINS": "example_nifti"},
    )
    assert bundled.returncode == 0, bundled.stderr
    ours_report, bundled_report = json.loads(ours.stdout), json.loads(bundled.stdout)
    assert ours_report["format"] == "vendor_nifti"
    assert ours_report["meta"] == {"reader": "vendor_nifti"}
    assert bundled_report["format"] == "nifti"
    assert bundled_report["meta"]["format"] == "nifti"
    # the same image either way: grid, geometry and intensities
    for key in ("shape", "channels", "spacing", "origin", "affine", "intensity"):
        assert ours_report[key] == bundled_report[key], key
    assert ours_report["shape"] == [4, 5, 6]
    assert ours_report["spacing"] == [2.0, 1.5, 3.0]
    assert ours_report["intensity"][0]["max"] == 119.0
