"""``miscore info PATH``: what an image file, a series folder or a dataset folder holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from miscore.cli.state import print_json, state
from miscore.core.errors import InputError


def info(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="An image file, a DICOM folder or a dataset.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Show an image's format, shape, spacing, orientation, dtype and intensities.

    For a dataset folder, show its layout and how many cases (labelled, test) it holds.
    """
    registry = state(ctx).plugins.registry
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        io = registry.io_for(path)
    except InputError:
        if not path.is_dir():
            raise
        report = dataset_report(path, registry)
    else:
        report = image_report(path, io)
    if as_json:
        print_json(report)
        return
    for key, value in report.items():
        if key != "meta":
            typer.echo(f"{key:<12} {_human(value)}")
    # the reader's short header facts (series description, codes, units...)
    for key, value in report.get("meta", {}).items():
        if isinstance(value, str | int | float | bool) and len(str(value)) <= 80:
            typer.echo(f"  {key:<24} {value}")


def image_report(path: Path, io: Any) -> dict[str, Any]:
    """The facts ``miscore info`` shows for one image."""
    import numpy as np
    from nibabel.orientations import aff2axcodes

    volume = io.read(path)
    ndim = volume.ndim
    spacing = volume.spacing
    direction = volume.affine[:3, :ndim] / np.asarray(spacing)
    axcodes = aff2axcodes(volume.affine)  # type: ignore[no-untyped-call]
    codes = "".join(str(c) for c in axcodes)[:ndim]
    array = volume.array
    channels = []
    for c in range(volume.channels):
        values = array[..., c]
        channels.append(
            {
                "min": float(values.min()),
                "max": float(values.max()),
                "mean": float(values.mean(dtype=np.float64)),
                "std": float(values.std(dtype=np.float64)),
            }
        )
    return {
        "path": str(path),
        "format": io.name,
        "shape": list(volume.spatial_shape),
        "channels": volume.channels,
        "dtype": array.dtype.name,
        "spacing": [round(s, 6) for s in spacing],
        "origin": [round(o, 6) for o in volume.origin],
        "orientation": codes,
        "direction": [[round(float(v), 6) for v in row] for row in direction.T],
        "intensity": channels,
        "affine": [[round(float(v), 6) for v in row] for row in volume.affine],
        "meta": volume.meta,
    }


def dataset_report(path: Path, registry: Any) -> dict[str, Any]:
    """The facts ``miscore info`` shows for a dataset folder (without reading images)."""
    from miscore.data.dataset import Dataset

    dataset = Dataset.discover(path, registry)
    return {
        "path": str(path),
        "layout": dataset.layout,
        "cases": len(dataset),
        "labelled": len(dataset.labelled_ids),
        "test": sum(1 for c in dataset.cases if c.test),
        "channels": max(len(c.images) for c in dataset.cases),
        "first": dataset.ids[0],
        "last": dataset.ids[-1],
    }


def _human(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "; ".join(", ".join(f"{k} {_human(v)}" for k, v in item.items()) for item in value)
    if isinstance(value, list) and value and isinstance(value[0], list):
        return " ".join("[" + " ".join(_human(v) for v in row) + "]" for row in value)
    if isinstance(value, list):
        return " x ".join(_human(v) for v in value) if value else "-"
    return str(value)
