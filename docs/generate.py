"""Generate the reference pages from the code: ``python docs/generate.py`` (``nox -s docs``).

- docs/plugins/hooks.md from the docstrings in ``miscore/hookspecs.py``;
- docs/reference/config.schema.json from the config models.
A test checks that the committed files equal what this script writes.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def hooks_markdown() -> str:
    from miscore import hookspecs

    lines = [
        "# Hook reference",
        "",
        "Generated from `miscore/hookspecs.py` by `python docs/generate.py`; do not edit.",
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
    from miscore.config import json_schema

    return json_schema() + "\n"


OUTPUTS = {
    DOCS / "plugins" / "hooks.md": hooks_markdown,
    DOCS / "reference" / "config.schema.json": config_schema,
}


def main() -> int:
    for path, render in OUTPUTS.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(), encoding="utf-8")
        print(f"wrote {path.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
