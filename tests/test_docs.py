"""The user docs stay true: links resolve, the recipe validates, every command has a page,
and the generated configuration reference matches the code."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from miscore.cli.main import build_app
from miscore.core.plugins import PluginManager

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([*DOCS.rglob("*.md"), ROOT / "README.md"])
#: [text](target) outside code; images too. The target stops at whitespace or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def local_links(page: Path) -> list[str]:
    """The relative link targets of a markdown page, without anchors (code is skipped)."""
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, https:, mailto:, or an anchor on the same page
        targets.append(target.split("#", 1)[0])
    return targets


def generate_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_link_finder_sees_links_and_skips_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "See [a](a.md#x), ![b](img/b.png) and [web](https://x.org).\n"
        '`[not](code.md)`\n```\n[not](fenced.md)\n```\n[c](../c.md "title") [d](#here)\n',
        encoding="utf-8",
    )
    assert local_links(page) == ["a.md", "img/b.png", "../c.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_markdown_link_points_to_an_existing_file(page: Path) -> None:
    missing = [t for t in local_links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_the_docs_have_the_pages_the_index_promises() -> None:
    index = DOCS / "index.md"
    linked = {(DOCS / t).resolve() for t in local_links(index)}
    for name in ("getting-started.md", "concepts.md", "api.md", "configuration.md"):
        assert (DOCS / name).resolve() in linked, f"docs/index.md does not link {name}"
    assert (DOCS / "cli" / "index.md").resolve() in linked


def test_the_kits19_recipe_passes_config_validate() -> None:
    recipe = DOCS / "recipes" / "kits19.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "miscore", "config", "validate", str(recipe)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_the_kits19_recipe_is_the_papers_setup() -> None:
    from miscore.core.config import load_config

    config = load_config(DOCS / "recipes" / "kits19.yaml")
    assert config.patching.patch_shape == [80, 160, 160]  # slice axis first
    steps = {spec.name: spec.params for spec in config.preprocessing}
    assert steps["clip"] == {"min": -79, "max": 304}
    assert steps["resample"]["spacing"] == [3.22, 1.62, 1.62]
    assert "zscore" in steps
    assert config.model.architecture.name == "unet"
    assert config.model.architecture.params.get("normalization", "batch") == "batch"
    assert config.model.loss.name == "tversky"
    assert config.data.classes == 3
    assert config.data.layout == "cases"


def command_names() -> list[str]:
    app = build_app(PluginManager())
    names = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]
    assert all(names), "a command registered without an explicit name"
    return sorted(str(n) for n in names)


def test_every_cli_command_has_a_page_listed_in_the_cli_index() -> None:
    names = command_names()
    assert {"train", "predict", "cv", "demo", "cache"} <= set(names)
    missing = [n for n in names if not (DOCS / "cli" / f"{n}.md").is_file()]
    assert not missing, f"commands without a page in docs/cli/: {missing}"
    index = DOCS / "cli" / "index.md"
    listed = set(local_links(index))
    unlisted = [n for n in names if f"{n}.md" not in listed]
    assert not unlisted, f"docs/cli/index.md does not link: {unlisted}"


def test_the_configuration_reference_is_up_to_date() -> None:
    module = generate_module()
    page = DOCS / "configuration.md"
    assert page in module.OUTPUTS
    text = module.configuration_markdown()
    assert page.read_text(encoding="utf-8") == text, "run `python docs/generate.py`"
    for section in ("data", "preprocessing", "patching", "augmentation", "model", "training"):
        assert f"### `{section}`" in text
    for field in ("patch_shape", "learning_rate", "foreground_ratio", "content_hash"):
        assert f"| `{field}` |" in text
    # the components' own parameters, with defaults
    assert "#### `tversky`" in text
    assert "| `alpha` | float >= 0.0 | `0.3` |" in text


def test_the_mkdocs_nav_lists_only_existing_pages() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs"

    def walk(node: object) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in walk(item)]
        if isinstance(node, dict):
            return [p for value in node.values() for p in walk(value)]
        return []

    pages = walk(config["nav"])
    assert "index.md" in pages and "getting-started.md" in pages
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml nav lists missing pages: {missing}"
