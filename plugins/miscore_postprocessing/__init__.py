"""Postprocessors of label predictions (``inference.postprocessing``).

``fill_holes`` fills background enclosed by a class (in 3D, or slice by slice);
``remove_small`` turns components under a size (voxels or mm^3) into background. They run in
the listed order after ``inference.keep_largest``, before the prediction is written.
"""

from __future__ import annotations

import miscore
from miscore_postprocessing.components import FillHoles, RemoveSmall

__version__ = miscore.__version__

POSTPROCESSORS: list[type[miscore.Postprocessor]] = [FillHoles, RemoveSmall]


@miscore.hookimpl
def miscore_register_postprocessors() -> list[type[miscore.Postprocessor]]:
    return list(POSTPROCESSORS)


__all__ = ["POSTPROCESSORS", "FillHoles", "RemoveSmall"]
