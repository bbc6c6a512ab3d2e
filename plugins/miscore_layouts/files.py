"""The catch-all layout: one image, or a flat folder of images, without labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import miscore
from miscore_layouts.channels import channel_cases


class FilesLayout(miscore.DatasetLayout):
    """One image (a file or a series folder) or a flat folder of images: for prediction."""

    name = "files"
    #: last: a folder holding images is this layout only when no other recognises it
    detect_priority: ClassVar[int] = -10
    looks_like: ClassVar[str] = "image files"

    def detect(self, root: Path, finder: miscore.DatasetFinder) -> bool:
        return finder.is_image(root) or bool(finder.images_in(root))

    def find(
        self, root: Path, finder: miscore.DatasetFinder
    ) -> tuple[list[miscore.CaseSource], dict[str, Any]]:
        single = finder.reader(root)
        if root.is_file() or single is not None:
            if single is None:
                raise miscore.InputError(f"{root}: no installed reader handles this file")
            case_id = finder.case_id(finder.file_stem(root, single), root)
            return [miscore.CaseSource(case_id, (root,))], {}
        # nnU-Net channel files (<case>_0000, <case>_0001...) are one case, as in imagesTs
        return channel_cases(finder, root, None, test=False), {}
