"""Promises of the architecture that a test can keep."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import miscore
from miscore.core import hookspecs

ROOT = Path(__file__).resolve().parents[1]


def python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in (ROOT / folder).rglob("*.py")]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_kernel_never_imports_a_bundled_plugin() -> None:
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in python_files("miscore")
        for name in imported_modules(path)
        if name.split(".")[0].startswith("miscore_") or name.split(".")[0] == "plugins"
    }
    assert not offenders


def test_plugins_import_no_other_plugin() -> None:
    offenders = set()
    for path in python_files("plugins"):
        own = path.relative_to(ROOT / "plugins").parts[0]
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top.startswith("miscore_") and top != own:
                offenders.add(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders


def private_miscore_imports(path: Path) -> list[str]:
    """``file:line: statement`` for each import of ``miscore`` other than its public names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    public = set(miscore.__all__)
    where = path.relative_to(ROOT)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"{where}:{node.lineno}: import {alias.name}"
                for alias in node.names
                if alias.name.startswith("miscore.")
            ]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("miscore."):
                names = ", ".join(alias.name for alias in node.names)
                found.append(f"{where}:{node.lineno}: from {node.module} import {names}")
            elif node.module == "miscore":
                found += [
                    f"{where}:{node.lineno}: from miscore import {alias.name} (not in __all__)"
                    for alias in node.names
                    if alias.name not in public
                ]
    return found


@pytest.mark.parametrize("folder", ["plugins", "tests/thirdparty"])
def test_plugins_import_only_the_public_api(folder: str) -> None:
    """Bundled plugins, and the third-party example, use ``miscore`` and nothing below it.

    import-linter's ``public-api`` contract says the same for what runs; this scan also
    sees imports under ``TYPE_CHECKING`` and names that ``miscore`` does not export.
    """
    files = python_files(folder)
    assert files
    offenders = [line for path in files for line in private_miscore_imports(path)]
    assert not offenders, "import these from `miscore` instead:\n" + "\n".join(offenders)


def test_the_import_contracts_are_kept() -> None:
    """``lint-imports`` (layers, no cycles, plugins on the public API) passes; it takes ~1 s."""
    script = Path(sys.executable).parent / "lint-imports"
    if not script.is_file():
        pytest.skip("import-linter is not installed beside this Python")
    start = time.perf_counter()
    result = subprocess.run(
        [str(script), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    assert time.perf_counter() - start < 60, "lint-imports grew slow: move it to nox -s lint"


def test_every_hook_has_a_section_in_the_hook_reference() -> None:
    reference = (ROOT / "docs" / "plugins" / "hooks.md").read_text(encoding="utf-8")
    functions = inspect.getmembers(hookspecs, inspect.isfunction)
    specs = [name for name, _ in functions if name.startswith("miscore_")]
    assert specs
    missing = [name for name in specs if f"## `{name}`" not in reference]
    assert not missing, f"run `python docs/generate.py`: no section for {missing}"


def test_every_hook_spec_shows_an_example() -> None:
    functions = inspect.getmembers(hookspecs, inspect.isfunction)
    specs = {name: fn for name, fn in functions if name.startswith("miscore_")}
    assert specs
    missing = [name for name, fn in specs.items() if "Example::" not in (inspect.getdoc(fn) or "")]
    assert not missing, f"hookspecs.py: no 'Example::' in the docstring of {missing}"


def test_generated_reference_pages_are_up_to_date() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path, render in module.OUTPUTS.items():
        stale = path.read_text(encoding="utf-8") != render()
        assert not stale, f"run `python docs/generate.py`: {path} is out of date"


def test_no_pickle_anywhere() -> None:
    pattern = re.compile(
        r"\bimport (c?pickle|dill|joblib)\b|allow_pickle\s*=\s*True|safe_mode\s*=\s*False"
    )
    offenders = [
        str(path.relative_to(ROOT))
        for path in python_files("miscore", "plugins", "benchmarks")
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert not offenders


def test_the_hook_marker_is_public() -> None:
    assert miscore.hookimpl.project_name == "miscore"
