"""An example plugin that ships a trained model inside its package.

``miscore models`` lists it; ``miscore predict example-model INPUT --out OUT`` and
``miscore.load_model("example-model")`` use it by name. The weights travel in the wheel
(``model/`` beside this file); nothing is downloaded at run time.
"""

from __future__ import annotations

from importlib.resources import files

import miscore

__version__ = "0.3.0"


@miscore.hookimpl
def miscore_register_models() -> list[miscore.ModelEntry]:
    return [
        miscore.ModelEntry(
            name="example-model",
            path=files(__name__) / "model",
            card={
                "task": "organ segmentation in synthetic CT phantoms",
                "license": "CC0-1.0",
                "description": "a tiny 3D U-Net trained for one epoch: an example, not a tool",
            },
        )
    ]
