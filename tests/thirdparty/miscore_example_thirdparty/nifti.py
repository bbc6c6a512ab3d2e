"""A second plugin of the example distribution: a NIfTI reader that wins by priority.

It is its own entry point (``example_nifti``) so that a user, or a test, can switch it off
with ``MISCORE_DISABLE_PLUGINS=example_nifti`` and keep the rest of the example plugin. It
reads ``.nii.gz`` as the bundled ``nifti`` reader does, but declares ``priority = 10`` (the
bundled readers use 0), so the registry hands every ``.nii.gz`` file to it. Whatever it reads
carries ``meta["reader"] == "vendor_nifti"``, so its winning can be seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import miscore

__version__ = "1.2.3"


def _nibabel() -> Any:
    """nibabel, imported where it is used (the plugin loads with the CLI, nibabel need not)."""
    import nibabel

    return nibabel


class ExampleNifti(miscore.ImageIO):
    """Reads and writes gzipped NIfTI with nibabel, ahead of the bundled reader."""

    # the name sorts after the bundled ``nifti`` and ``sitk`` readers on purpose: only the
    # declared priority can make it win, never the alphabet
    name = "vendor_nifti"
    priority = 10
    suffixes = (".nii.gz",)
    write_suffix = ".nii.gz"

    def read(self, path: Path) -> miscore.Volume:
        try:
            img = _nibabel().load(str(path))
            array = np.asanyarray(img.dataobj)
        except Exception as exc:
            raise miscore.InputError(f"{path}: not a readable NIfTI file: {exc}") from None
        if array.ndim == 3:  # one channel; a 4th axis already holds the channels
            array = array[..., None]
        return miscore.Volume(array, np.asarray(img.affine), {"reader": self.name})

    def write(
        self, volume: miscore.Volume, path: Path, reference: miscore.Volume | None = None
    ) -> Path:
        array = volume.array[..., 0] if volume.channels == 1 else volume.array
        with miscore.atomic_output(path) as temp:
            _nibabel().save(_nibabel().Nifti1Image(array, volume.affine), str(temp))
        return path


@miscore.hookimpl
def miscore_register_io() -> list[type[miscore.ImageIO]]:
    return [ExampleNifti]
