"""The bundled postprocessors: hole filling and small-component removal, per class."""

from __future__ import annotations

import numpy as np
import pytest
from miscore_postprocessing import FillHoles, RemoveSmall

import miscore
from miscore.testing import check_component


def volume(label: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> miscore.Volume:
    return miscore.Volume(label[..., None], np.diag([*spacing, 1.0]))


def test_registered_through_the_entry_point(installed_plugins: miscore.PluginManager) -> None:
    registry = installed_plugins.registry
    assert {"fill_holes", "remove_small"} <= set(registry.names("postprocessor"))
    assert installed_plugins.plugin_of("postprocessor", "fill_holes").name == "postprocessing"
    check_component(FillHoles)


def test_fill_holes_fills_enclosed_background_and_keeps_other_classes() -> None:
    label = np.zeros((10, 10, 10), np.uint8)
    label[1:8, 1:8, 1:8] = 1
    label[3:6, 3:6, 3:6] = 0  # a hole
    label[4, 4, 4] = 2  # a class-2 voxel in it stays
    label[0, 9, 9] = 2
    out = FillHoles().apply(volume(label), 3).array[..., 0]
    assert out[4, 4, 4] == 2
    assert int((out == 1).sum()) == 7**3 - 1
    assert int((out == 2).sum()) == 2
    only_two = FillHoles(classes=[2]).apply(volume(label), 3).array[..., 0]
    np.testing.assert_array_equal(only_two, label)


def test_fill_holes_slice_by_slice_fills_a_tube() -> None:
    label = np.zeros((8, 8, 6), np.uint8)
    label[1:7, 1:7, :] = 1
    label[3:5, 3:5, :] = 0  # a tube open at both ends: no hole in 3D
    np.testing.assert_array_equal(FillHoles().apply(volume(label), 2).array[..., 0], label)
    filled = FillHoles(slice_axis=2).apply(volume(label), 2).array[..., 0]
    assert int((filled == 1).sum()) == 6 * 6 * 6
    with pytest.raises(miscore.InputError, match="slice_axis"):
        FillHoles(slice_axis=2).apply(miscore.Volume(label[:, :, :1]), 2)


def test_remove_small_by_voxels_and_by_volume() -> None:
    label = np.zeros((10, 10, 10), np.uint8)
    label[0:3, 0:3, 0:3] = 1  # 27 voxels
    label[8, 8, 8] = 1  # 1 voxel
    label[5:7, 5:7, 5:7] = 2  # 8 voxels
    out = RemoveSmall(min_voxels=10).apply(volume(label), 3).array[..., 0]
    assert int((out == 1).sum()) == 27 and int((out == 2).sum()) == 0
    kept_two = RemoveSmall(min_voxels=10, classes=[1]).apply(volume(label), 3).array[..., 0]
    assert int((kept_two == 2).sum()) == 8 and kept_two[8, 8, 8] == 0
    # 2 mm voxels: 8 mm^3 each; 60 mm^3 keeps the 8-voxel cube (64 mm^3), drops the speck
    by_volume = RemoveSmall(min_mm3=60).apply(volume(label, (2.0, 2.0, 2.0)), 3).array[..., 0]
    assert int((by_volume == 2).sum()) == 8 and by_volume[8, 8, 8] == 0


def test_remove_small_needs_exactly_one_size() -> None:
    for params in ({}, {"min_voxels": 5, "min_mm3": 3.0}):
        with pytest.raises(ValueError, match="one of min_voxels and min_mm3"):
            RemoveSmall(**params)
