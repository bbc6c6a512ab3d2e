"""A dataset's cases in the cache: their key, and their entry, preprocessed on a miss.

``miscore cache build``, training and ``miscore bench`` all go through
``cache_dataset_case``, so that one's entries are the others' hits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from miscore.cache.entries import CachedCase
from miscore.cache.keys import CacheKey, pipeline_fingerprint
from miscore.cache.store import CaseStore
from miscore.core.errors import InputError
from miscore.core.volume import Case

if TYPE_CHECKING:
    from miscore.core.components import Subfunction
    from miscore.core.config import Config
    from miscore.core.plugins import PluginManager
    from miscore.data.dataset import Dataset


def dataset_key(
    store: CaseStore,
    dataset: Dataset,
    case_id: str,
    steps: Sequence[Subfunction],
    manager: PluginManager,
    config: Config,
    training: bool = True,
) -> CacheKey:
    """The key of a dataset's case: its image and label files, the steps, the readers."""
    source = dataset.source(case_id)
    label = [source.label] if source.label is not None else []
    inputs = [*source.images, *label]
    io_names = sorted({dataset.io_for(p).name for p in inputs})
    fingerprint = pipeline_fingerprint(
        steps, manager, training=training, classes=config.data.classes, io=io_names
    )
    return store.key(case_id, inputs, fingerprint)


def cache_dataset_case(
    store: CaseStore,
    dataset: Dataset,
    case_id: str,
    steps: Sequence[Subfunction],
    manager: PluginManager,
    config: Config,
    training: bool = True,
) -> tuple[CachedCase, bool]:
    """``(entry, hit)``: a dataset's case from the cache, read and preprocessed on a miss.

    Raises:
        InputError: the label holds class ids beyond ``data.classes``.
    """
    from miscore.data.preprocess import preprocess_case

    classes = config.data.classes
    built: list[Case] = []

    def build() -> Case:
        case = preprocess_case(dataset.load(case_id), steps, training=training)
        if case.label is not None and case.label.array.size:
            _check_classes(dataset, case_id, int(case.label.array.max()), classes)
        built.append(case)
        return case

    key = dataset_key(store, dataset, case_id, steps, manager, config, training)
    entry = store.get_or_build(key, build)
    if not built:
        # The key holds data.classes, so a hit was checked when it was built; this keeps
        # entries made by older versions honest.
        _check_classes(dataset, case_id, max(entry.class_voxels, default=0), classes)
    return entry, not built


def _check_classes(dataset: Dataset, case_id: str, top: int, classes: int) -> None:
    """Refuse a label whose highest class id ``top`` is beyond ``data.classes``."""
    if top >= classes:
        raise InputError(
            f"case {case_id}: the label {dataset.source(case_id).label} holds class id "
            f"{top} but data.classes is {classes}; set data.classes to the number of classes, "
            "background included"
        )
