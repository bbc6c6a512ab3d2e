"""Fixtures and contract checks for plugin authors (a pytest plugin, loaded automatically).

The helpers work wherever miscore is installed; the fixtures ``plugin_manager`` and
``installed_plugins`` are defined when pytest can be imported.

In a plugin's tests::

    from miscore.testing import check_io_roundtrip, synthetic_volume

    def test_roundtrip(tmp_path):
        check_io_roundtrip(MyIO(), synthetic_volume(oblique=True), tmp_path)

    def test_registers(plugin_manager):          # an empty PluginManager
        plugin_manager.register(my_plugin_module)
        assert plugin_manager.registry.get_io("myformat") is MyIO
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from miscore.core.components import Component, ImageIO
from miscore.core.plugins import PluginManager
from miscore.core.registry import check_component_class
from miscore.core.volume import Case, Volume

__all__ = [
    "check_component",
    "check_io_roundtrip",
    "oblique_affine",
    "synthetic_case",
    "synthetic_volume",
]


def oblique_affine(
    spacing: Sequence[float] = (0.8, 0.8, 2.5),
    angles_deg: Sequence[float] = (10.0, -7.0, 25.0),
    origin: Sequence[float] = (-90.5, 120.25, -35.0),
    flip: Sequence[int] = (-1, -1, 1),
) -> npt.NDArray[np.float64]:
    """A rotated, anisotropic affine; the default flips x and y (an LPS-stored volume)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(np.asarray(flip, float) * np.asarray(spacing, float))
    affine[:3, 3] = origin
    return affine


def synthetic_volume(
    shape: Sequence[int] = (24, 20, 12),
    channels: int = 1,
    spacing: Sequence[float] = (0.8, 0.8, 2.5),
    oblique: bool = False,
    dtype: Any = np.float32,
    seed: int = 0,
) -> Volume:
    """A small image with a bright ellipsoid and noise, on a known geometry."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    blob = sum(g**2 for g in grids) < 0.5
    array = np.stack(
        [blob * (100.0 + 20 * c) + rng.normal(0, 5, size=tuple(shape)) for c in range(channels)],
        axis=-1,
    )
    if np.issubdtype(np.dtype(dtype), np.integer):
        array = np.round(array)
    if len(shape) == 2:
        affine = np.diag([*spacing[:2], 1.0, 1.0])
    elif oblique:
        affine = oblique_affine(spacing)
    else:
        affine = np.diag([*spacing, 1.0])
    return Volume(array.astype(dtype), affine)


def synthetic_case(
    case_id: str = "case_000",
    shape: Sequence[int] = (24, 20, 12),
    classes: int = 2,
    oblique: bool = False,
    seed: int = 0,
) -> Case:
    """A case whose label marks the image's ellipsoid (class 1) and its core (class 2...)."""
    image = synthetic_volume(shape, oblique=oblique, seed=seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    label = np.zeros(tuple(shape), np.uint8)
    for k in range(1, classes):
        label[radius < np.sqrt(0.5) * (1 - (k - 1) / classes)] = k
    return Case(case_id, image, image.with_array(label[..., None]))


def check_component(cls: type[Component], **params: Any) -> Component:
    """Check a component class against the contract and create it with ``params`` (the
    defaults of its ``Params`` where not given; pass the ones it requires)."""
    check_component_class(cls.kind, cls)
    return cls(params)


def check_io_roundtrip(
    io: ImageIO,
    volume: Volume,
    directory: Path,
    suffix: str | None = None,
    atol: float = 1e-5,
) -> Volume:
    """Write ``volume`` with ``io``, read it back, and check values and geometry.

    Returns the volume read back so that callers can check format-specific facts.
    """
    target = directory / f"roundtrip{suffix or io.write_suffix}"
    written = io.write(volume, target, reference=volume)
    assert written.exists(), f"{io.name}: write() returned {written}, which does not exist"
    leftovers = [p.name for p in directory.iterdir() if p.name.startswith(".miscore-tmp-")]
    assert not leftovers, f"{io.name}: temporary files left behind: {leftovers}"
    back = io.read(written)
    assert back.spatial_shape == volume.spatial_shape, (back.spatial_shape, volume.spatial_shape)
    assert back.channels == volume.channels
    np.testing.assert_allclose(back.affine, volume.affine, atol=atol)
    np.testing.assert_allclose(back.array, volume.array, atol=atol, rtol=1e-6)
    return back


try:
    import pytest
except ImportError:  # the helpers above work without pytest; only the fixtures need it
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def plugin_manager() -> Iterator[PluginManager]:
        """An empty plugin manager (no entry points loaded): register what the test needs."""
        yield PluginManager(load_entrypoints=False, disabled=(), trace=False)

    @pytest.fixture
    def installed_plugins() -> PluginManager:
        """A plugin manager with every installed plugin loaded, as the CLI has."""
        return PluginManager(disabled=(), trace=False)
