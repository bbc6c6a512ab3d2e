"""Steps given to ``Pipeline`` as Python objects are keyed by their code.

Their names (``python_subfunction_0``...) repeat from run to run, so the session plugin's
version carries a hash of the code behind them: an edited step, or another step under the
same name, must not be served the entries of the old one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = '''
import miscore
from miscore import Subfunction

FACTOR = {factor}


class Scale(Subfunction):
    name = "scale"

    def preprocess(self, case, training):
        case.image.array[...] *= FACTOR
        return case


pipeline = miscore.Pipeline(preprocessing=[Scale()])
name = pipeline.config.preprocessing[0].name
print(name, pipeline.plugins.plugin_of("subfunction", name).key_version)
'''


def run(script: Path, factor: float) -> tuple[str, str]:
    script.write_text(SCRIPT.format(factor=factor))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True
    )
    name, version = result.stdout.split()
    return name, version


def test_an_edited_session_step_gets_a_new_key_version(tmp_path: Path) -> None:
    script = tmp_path / "steps.py"
    name, first = run(script, 2.0)
    assert run(script, 2.0) == (name, first)  # unchanged code: the entries are reused
    other_name, edited = run(script, 3.0)
    assert other_name == name  # the same name in every run ...
    assert edited != first  # ... but not the same key
    assert first.startswith("0+session.")
