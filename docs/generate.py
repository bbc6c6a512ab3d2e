"""Generate the reference pages from the code: ``python docs/generate.py`` (``nox -s docs``).

- docs/plugins/hooks.md from the docstrings in ``miscore/core/hookspecs.py``;
- docs/reference/config.schema.json from the config models;
- docs/configuration.md, the configuration reference: every section and field of the config
  (type, default, description) from the models' JSON Schema, and the parameters of every
  component the bundled plugins register.
A test checks that the committed files equal what this script writes.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent


def hooks_markdown() -> str:
    from miscore.core import hookspecs

    lines = [
        "# Hook reference",
        "",
        "Generated from `miscore/core/hookspecs.py` by `python docs/generate.py`; do not edit.",
        "Hooks are called with keyword arguments: an implementation may take a subset.",
        "",
    ]
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        if not name.startswith("miscore_"):
            continue
        signature = str(inspect.signature(function)).replace("'", "")
        lines += [f"## `{name}`", "", "```python", f"def {name}{signature}", "```", ""]
        lines += [inspect.cleandoc(function.__doc__ or ""), ""]
    return "\n".join(lines).rstrip() + "\n"


def config_schema() -> str:
    from miscore.core.config import json_schema

    return json_schema() + "\n"


#: config section -> one line on what it is for (the section models' docstrings say the rest)
SECTION_TITLES = {
    "data": "where the data is and what it holds",
    "preprocessing": "the subfunctions run on every case before the cache",
    "patching": "how samples and inference windows are cut",
    "augmentation": "the augmentations applied to every training sample",
    "model": "the network, its loss and logged metrics",
    "training": "the fit loop",
    "inference": "sliding-window prediction",
    "cache": "the zarr cache of preprocessed cases",
}

#: component kind -> the config place its entries go, for the components part of the page
KIND_PLACES = {
    "subfunction": "`preprocessing` entries",
    "augmentation": "`augmentation` entries",
    "architecture": "`model.architecture`",
    "loss": "`model.loss`",
    "io": "`data.io` (by name; readers are picked by file name when it is null)",
    "evaluator": "`miscore cv --scheme` (parameters from `--folds`, `--split`, the lists)",
    "metric": "`evaluation.metrics` entries, `miscore evaluate --metric` and `miscore cv --metric`",
    "layout": "`data.layout` (by name; `auto` asks each layout's detect, highest priority first)",
    "sampler": "`patching.sampler` (training windows of the `random` and `slice` modes)",
    "lr_schedule": "`training.lr_schedule`",
    "callback": "`training.callbacks` entries",
    "postprocessor": "`inference.postprocessing` entries (after `keep_largest`, in order)",
}


def _schema_type(prop: dict[str, Any]) -> str:
    """A JSON Schema property as a short type: ``int >= 1``, ``list[int] | null``, ``"a" | "b"``."""
    if "anyOf" in prop:
        return " \\| ".join(_schema_type(p) for p in prop["anyOf"])
    if "$ref" in prop:
        return "{name, ...params}"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    kind = prop.get("type", "any")
    names = {"integer": "int", "number": "float", "boolean": "bool", "string": "str"}
    if kind == "array":
        items = prop.get("items", {})
        if "prefixItems" in prop:
            inner = ", ".join(_schema_type(p) for p in prop["prefixItems"])
            return f"[{inner}]"
        return f"list[{_schema_type(items) if items else 'any'}]"
    if kind == "object":
        return "mapping"
    text = names.get(kind, kind)
    bounds = [
        (">=", prop.get("minimum")),
        (">", prop.get("exclusiveMinimum")),
        ("<=", prop.get("maximum")),
        ("<", prop.get("exclusiveMaximum")),
    ]
    limits = [f"{op} {value}" for op, value in bounds if value is not None]
    return f"{text} {', '.join(limits)}" if limits else text


def _default(prop: dict[str, Any], fallback: Any) -> str:
    value = prop.get("default", fallback)
    if value is _REQUIRED:
        return "required"
    return f"`{json.dumps(value)}`"


_REQUIRED = object()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fields_table(schema: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """A markdown table of a model schema's properties: field, type, default, description."""
    required = set(schema.get("required", []))
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        fallback = _REQUIRED if name in required else defaults.get(name)
        description = _cell(prop.get("description", ""))
        kind = _schema_type(prop)
        lines.append(f"| `{name}` | {kind} | {_default(prop, fallback)} | {description} |")
    return lines


def configuration_markdown() -> str:
    from miscore.core.config import Config
    from miscore.core.plugins import PluginManager

    schema = Config.model_json_schema()
    definitions = schema["$defs"]
    defaults = Config().model_dump(mode="json")
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config models (`miscore/core/config.py`) and the bundled plugins'",
        "parameter models by `python docs/generate.py`; do not edit. A config is one YAML file;",
        "every section is optional and every unknown key is an error naming its path. Check a",
        "file with `miscore config validate FILE`; `miscore config schema` prints the JSON",
        "Schema ([reference/config.schema.json](reference/config.schema.json)). How the parts",
        "fit together: [concepts](concepts.md).",
        "",
        "Component entries (`preprocessing`, `augmentation`, `model.architecture`,",
        "`model.loss`) are a name, or a mapping of `name` and that component's parameters:",
        "",
        "```yaml",
        "preprocessing:",
        "  - zscore                             # just the name: default parameters",
        "  - {name: clip, min: -79, max: 304}   # the name and parameters",
        "```",
        "",
        "The parameters of every bundled component are listed [below](#components).",
        "",
        "## Sections",
        "",
        "| section | what it holds |",
        "|---|---|",
    ]
    for name in schema["properties"]:
        if name in SECTION_TITLES:
            lines.append(f"| [`{name}`](#{name}) | {SECTION_TITLES[name]} |")
    lines += ["", "`version` (`1`) is the format version of the file; leave it at 1.", ""]
    for name, prop in schema["properties"].items():
        if name not in SECTION_TITLES:
            continue
        lines += [f"### `{name}`", ""]
        if "$ref" in prop:
            definition = definitions[prop["$ref"].rsplit("/", 1)[-1]]
            lines += [definition.get("description", ""), ""]
            lines += _fields_table(definition, defaults[name])
            fields = definition.get("properties", {})
            changed = {
                key: value
                for key, value in defaults[name].items()
                if key in fields and "default" in fields[key] and fields[key]["default"] != value
            }
            if changed:
                shown = ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in changed.items())
                lines += ["", f"Without a `{name}` section in the file: {shown}."]
        else:
            kind = "subfunction" if name == "preprocessing" else "augmentation"
            lines += [
                f"A list of {kind} entries, run in order (default `{json.dumps(defaults[name])}`).",
            ]
            if name == "augmentation":
                lines += [
                    "`augmentation: default` expands to the set the installed plugins supply",
                    "through the `miscore_defaults` hook ([augmentation](augmentation.md)).",
                ]
        lines.append("")
    lines += _components_markdown(PluginManager())
    return "\n".join(lines).rstrip() + "\n"


def _components_markdown(plugins: Any) -> list[str]:
    """Every component of the bundled plugins with its parameters."""
    bundled = {p.name for p in (DOCS.parent / "plugins").iterdir() if p.name.startswith("miscore_")}
    modules = {info.name: info.module for info in plugins.plugins()}
    registry = plugins.registry
    lines = [
        "## Components",
        "",
        "The components the bundled plugins register, by kind, with their parameters",
        "(`miscore plugins` lists what is installed, third-party plugins included).",
        "",
    ]
    for kind, place in KIND_PLACES.items():
        infos = [i for i in registry.components(kind) if modules.get(i.plugin) in bundled]
        if not infos:
            continue
        lines += [f"### {kind}", "", f"Used in {place}.", ""]
        for info in sorted(infos, key=lambda i: i.name):
            doc = inspect.cleandoc(info.cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")
            lines += [f"#### `{info.name}`", "", f"{doc} (plugin `{info.plugin}`)", ""]
            params = info.cls.Params.model_json_schema()
            if params.get("properties"):
                lines += _fields_table(params, {})
            else:
                lines.append("No parameters.")
            lines.append("")
    return lines


OUTPUTS = {
    DOCS / "plugins" / "hooks.md": hooks_markdown,
    DOCS / "reference" / "config.schema.json": config_schema,
    DOCS / "configuration.md": configuration_markdown,
}


def main() -> int:
    for path, render in OUTPUTS.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(), encoding="utf-8")
        print(f"wrote {path.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
