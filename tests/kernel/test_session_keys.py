"""Steps given to ``Pipeline`` as Python objects are keyed by their code.

Their names (``python_subfunction_0``...) repeat from run to run, so the session plugin's
version carries a hash of the code behind them: an edited step, or another step under the
same name, must not be served the entries of the old one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = """
import miscore
from miscore import Subfunction

FACTOR = {factor}


class Scale(Subfunction):
    name = "scale"

    def preprocess(self, case, training):
        case.image.array[...] *= FACTOR
        return case


import json

from miscore.cache.keys import pipeline_fingerprint
from miscore.core.registry import build_steps

pipeline = miscore.Pipeline(preprocessing=[Scale()])
steps = build_steps(pipeline.config.preprocessing, pipeline.plugins.registry)
fingerprint = pipeline_fingerprint(steps, pipeline.plugins, training=True)
print(json.dumps(fingerprint, sort_keys=True))
"""


def run(script: Path, factor: float) -> dict[str, Any]:
    """The cache fingerprint of the script's pipeline, computed in a new process."""
    script.write_text(SCRIPT.format(factor=factor))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True
    )
    fingerprint: dict[str, Any] = json.loads(result.stdout)
    return fingerprint


def test_session_steps_are_keyed_by_their_code(tmp_path: Path) -> None:
    script = tmp_path / "steps.py"
    first = run(script, 2.0)
    assert run(script, 2.0) == first  # the same code: the same key, its entries reused
    edited = run(script, 3.0)
    # The step has the same name in every run, but the edited code is another key.
    assert edited["preprocessing"] == first["preprocessing"] == [{"name": "python_subfunction_0"}]
    assert edited["plugins"] != first["plugins"]
    (version,) = first["plugins"].values()
    assert version.startswith("0+session.")
