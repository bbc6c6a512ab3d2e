"""An example plugin that ships trained models inside its package.

``miscore models`` lists them; ``miscore predict example-model INPUT --out OUT`` and
``miscore.load_model("example-model")`` use one by name. The weights travel in the wheel,
as a model folder (``model/`` beside this file) and as a ``.miscore`` package
(``example.miscore``, written by ``miscore export``); nothing is downloaded at run time.
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
        ),
        # the package carries its own card (miscore export --task --license)
        miscore.ModelEntry("example-package", files(__name__) / "example.miscore"),
    ]
