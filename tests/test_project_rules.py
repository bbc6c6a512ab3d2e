"""Promises of the architecture that a test can keep."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

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


def test_every_hook_has_a_section_in_the_hook_reference() -> None:
    reference = (ROOT / "docs" / "plugins" / "hooks.md").read_text(encoding="utf-8")
    functions = inspect.getmembers(hookspecs, inspect.isfunction)
    specs = [name for name, _ in functions if name.startswith("miscore_")]
    assert specs
    missing = [name for name in specs if f"## `{name}`" not in reference]
    assert not missing, f"run `python docs/generate.py`: no section for {missing}"


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
