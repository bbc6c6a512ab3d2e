"""``miscore info PATH``: what an image file, a series folder or a dataset folder holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from miscore.cli.state import print_json, state
from miscore.core.errors import InputError


def info(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            help="An image file, a DICOM folder, a dataset, a model folder or a .miscore package."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Show an image's format, shape, spacing, orientation, dtype and intensities.

    For a dataset folder, show its layout and how many cases (labelled, test) it holds; for
    a model folder or a package, its model card.
    """
    cli = state(ctx)
    registry = cli.plugins.registry
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if _is_model(path):
        report = model_report(path, cli.plugins)
        if as_json:
            print_json(report)
        else:
            _print_card(report)
        return
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


def _is_model(path: Path) -> bool:
    from miscore.pipeline.modeldir import CROSSVAL_FILE, INFO_FILE
    from miscore.pipeline.package import is_package

    if path.is_dir():
        return (path / INFO_FILE).is_file() or (path / CROSSVAL_FILE).is_file()
    return is_package(path)


def model_report(path: Path, plugins: Any) -> dict[str, Any]:
    """The card of a model folder or a package (its checksums verified), and what it needs."""
    import hashlib

    from miscore.pipeline.package import resolve_model

    with resolve_model(path, plugins) as source:
        report: dict[str, Any] = {"path": str(path)}
        if source.manifest is not None:
            digest = hashlib.sha256()
            with path.open("rb") as file:
                while chunk := file.read(1 << 20):
                    digest.update(chunk)
            report["package_sha256"] = digest.hexdigest()
            report["checksums"] = f"verified ({len(source.manifest.members)} files)"
            report["miscore_version"] = source.manifest.miscore_version
            report["plugins"] = source.manifest.plugins
        report["card"] = source.card().model_dump(mode="json", by_alias=True)
    return report


def _print_card(report: dict[str, Any]) -> None:
    card = report["card"]
    for key in ("path", "package_sha256", "checksums", "miscore_version"):
        if key in report:
            typer.echo(f"{key:<16} {report[key]}")
    for key, value in card.items():
        if key == "metrics" or value in (None, []):
            continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            typer.echo(f"{key:<16} {', '.join(value)}")
        else:
            typer.echo(f"{key:<16} {_human(value)}")
    if report.get("plugins"):
        plugins = ", ".join(f"{k} {v}" for k, v in sorted(report["plugins"].items()))
        typer.echo(f"{'plugins':<16} {plugins}")
    for row in card["metrics"]:
        mean = "nan" if row["mean"] is None else f"{row['mean']:.4g}"
        std = "nan" if row["std"] is None else f"{row['std']:.3g}"
        typer.echo(f"  class {row['class']:<3} {row['metric']:<16} mean {mean} (std {std}, "
                   f"n {row['n']})")  # fmt: skip


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
