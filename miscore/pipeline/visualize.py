"""Pictures of a run: learning curves per fold, metric box plots, and case overlays.

Overlays show, side by side, the image, the image with the ground truth and the image with
the prediction. A 3D case becomes an animated GIF with one frame per slice along the last
spatial axis; a 2D case becomes a PNG::

    save_overlay(case.image, case.label, prediction, Path("case_001.gif"))

Colours are fixed per class so that pictures of different runs compare: class 1 red, 2 green,
3 blue, then the ten colours of matplotlib's ``tab10`` in turn (``class_colour``), painted at
``OVERLAY_ALPHA`` (0.4) over the image, which is windowed to its 0.5 and 99.5 percentiles.
A slice is shown with array axis 0 running left to right and axis 1 bottom to top, with the
voxel spacing's aspect ratio; nothing is reoriented.

Plots use matplotlib's Agg backend through ``Figure`` objects (no pyplot state); GIFs are
written with Pillow. Every file is written atomically.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from miscore.core.atomic import atomic_output
from miscore.core.errors import InputError
from miscore.core.volume import Volume

if TYPE_CHECKING:
    from PIL import Image

    from miscore.pipeline.evaluate import EvaluationReport

#: opacity of the class colours painted over the image
OVERLAY_ALPHA = 0.4
#: the image window: these percentiles of the whole volume map to black and white
WINDOW_PERCENTILES = (0.5, 99.5)
#: classes 1, 2, 3
BASE_COLOURS: tuple[tuple[int, int, int], ...] = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
#: matplotlib's tab10, for classes 4 and above (cycled)
TAB10: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
#: longest side of one panel in pixels (small images are enlarged to it, large ones reduced)
PANEL_SIZE = 256
_GAP = 4
_HEADER = 14


def class_colour(class_id: int) -> tuple[int, int, int]:
    """The RGB colour of a class in every overlay (class 0, background, is never painted)."""
    if class_id < 1:
        raise ValueError(f"class {class_id}: background has no overlay colour")
    if class_id <= len(BASE_COLOURS):
        return BASE_COLOURS[class_id - 1]
    return TAB10[(class_id - len(BASE_COLOURS) - 1) % len(TAB10)]


def intensity_window(
    image: npt.NDArray[Any], percentiles: tuple[float, float] = WINDOW_PERCENTILES
) -> tuple[float, float]:
    """The ``(low, high)`` grey values that map to black and white."""
    finite = np.asarray(image, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, percentiles))
    if high <= low:
        high = low + 1.0
    return low, high


def grey_rgb(plane: npt.NDArray[Any], low: float, high: float) -> npt.NDArray[np.uint8]:
    """A 2D plane windowed to ``[low, high]`` as an ``(H, W, 3)`` uint8 grey image."""
    scaled = (np.asarray(plane, dtype=np.float32) - low) / np.float32(high - low)
    grey = (np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def paint_labels(
    rgb: npt.NDArray[np.uint8], labels: npt.NDArray[Any], alpha: float = OVERLAY_ALPHA
) -> npt.NDArray[np.uint8]:
    """``rgb`` with every class > 0 of ``labels`` (same 2D shape) blended in its colour."""
    out = rgb.astype(np.float32)
    for class_id in np.unique(labels):
        if class_id <= 0:
            continue
        mask = labels == class_id
        colour = np.asarray(class_colour(int(class_id)), dtype=np.float32)
        out[mask] = (1.0 - alpha) * out[mask] + alpha * colour
    painted: npt.NDArray[np.uint8] = (out + 0.5).astype(np.uint8)
    return painted


def _display(plane: npt.NDArray[Any]) -> npt.NDArray[Any]:
    # array axis 0 left to right, axis 1 bottom to top
    return np.flipud(np.asarray(plane).T)


def _panel_size(shape: Sequence[int], spacing: Sequence[float], size: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of a plane of ``shape`` (axis 0, axis 1) and spacing."""
    width_mm, height_mm = shape[0] * spacing[0], shape[1] * spacing[1]
    scale = size / max(width_mm, height_mm)
    return max(1, round(width_mm * scale)), max(1, round(height_mm * scale))


def _labels_of(volume: Volume | None, image: Volume, what: str) -> npt.NDArray[Any] | None:
    if volume is None:
        return None
    if volume.spatial_shape != image.spatial_shape:
        raise InputError(
            f"overlay: the {what} has shape {volume.spatial_shape} but the image has "
            f"{image.spatial_shape}; give both on the image's grid"
        )
    labels: npt.NDArray[Any] = volume.array[..., 0]
    return labels


def render_frame(
    planes: Sequence[tuple[str, npt.NDArray[np.uint8]]],
    panel: tuple[int, int],
    caption: str = "",
) -> Image.Image:
    """Panels ``(title, rgb)`` side by side under their titles, resized to ``panel``."""
    from PIL import Image, ImageDraw

    width, height = panel
    frame = Image.new("RGB", (len(planes) * (width + _GAP) - _GAP, height + _HEADER), "black")
    draw = ImageDraw.Draw(frame)
    for i, (title, rgb) in enumerate(planes):
        x = i * (width + _GAP)
        tile = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
        frame.paste(tile.resize((width, height), Image.Resampling.NEAREST), (x, _HEADER))
        text = f"{title}  {caption}" if i == 0 and caption else title
        draw.text((x + 2, 1), text, fill=(255, 255, 255))
    return frame


def overlay_suffix(image: Volume) -> str:
    """``.gif`` for a 3D image (one frame per slice), ``.png`` for a 2D one."""
    return ".gif" if image.ndim == 3 else ".png"


def save_overlay(
    image: Volume,
    truth: Volume | None,
    prediction: Volume | None,
    path: Path | str,
    *,
    duration_ms: int = 120,
    size: int = PANEL_SIZE,
) -> Path:
    """Write image | truth overlay | prediction overlay: a GIF walking through the slices
    along the last axis (3D, one frame per slice), or a PNG (2D).

    Args:
        image: the case's image (channel 0 is shown), windowed to its 0.5/99.5 percentiles.
        truth: the ground-truth label map on the image's grid, or None (panel left out).
        prediction: the predicted label map on the image's grid, or None (panel left out).
        path: the file to write; its suffix must be ``overlay_suffix(image)``.
        duration_ms: how long each GIF frame shows.
        size: longest side of one panel in pixels.
    Returns:
        ``path``.
    """
    path = Path(path)
    if image.ndim not in (2, 3):
        raise InputError(f"{path}: overlays need a 2D or 3D image; got {image.ndim}D")
    wanted = overlay_suffix(image)
    if path.suffix.lower() != wanted:
        raise InputError(f"{path}: a {image.ndim}D overlay is written as {wanted}")
    grey = image.array[..., 0]
    low, high = intensity_window(grey)
    layers = [
        (title, labels)
        for title, labels in (
            ("truth", _labels_of(truth, image, "ground truth")),
            ("prediction", _labels_of(prediction, image, "prediction")),
        )
        if labels is not None
    ]
    spacing = image.spacing
    panel = _panel_size(grey.shape[:2], spacing[:2], size)

    def frame(index: int | None) -> Image.Image:
        def cut(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return _display(array if index is None else array[..., index])

        base = grey_rgb(cut(grey), low, high)
        planes = [("image", base)] + [(t, paint_labels(base, cut(a))) for t, a in layers]
        caption = "" if index is None else f"slice {index + 1}/{grey.shape[-1]}"
        return render_frame(planes, panel, caption)

    if image.ndim == 2:
        with atomic_output(path) as temp:
            frame(None).save(temp, format="PNG")
        return path
    from PIL import Image

    # Each frame carries its slice number, so no two frames are equal and Pillow keeps
    # them all (it merges identical consecutive frames). Paletted at once: a third of RGB.
    frames = [
        frame(k).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        for k in range(grey.shape[-1])
    ]
    with atomic_output(path) as temp:
        frames[0].save(
            temp,
            format="GIF",
            save_all=True,
            append_images=frames[1:],
            duration=duration_ms,
            loop=0,
        )
    return path


# --- plots -----------------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _save_figure(figure: Any, path: Path) -> Path:
    with atomic_output(path) as temp:
        figure.savefig(temp, format="png", dpi=90)
    return path


def curve_names(histories: Mapping[str, Sequence[Mapping[str, float]]]) -> list[str]:
    """The metrics logged in any history, without the ``val_`` prefix, ``loss`` first."""
    names = {k.removeprefix("val_") for rows in histories.values() for row in rows for k in row}
    names -= {"epoch", "learning_rate", "lr"}
    return sorted(names, key=lambda n: (n != "loss", n))


def fold_curves_figure(histories: Mapping[str, Sequence[Mapping[str, float]]], name: str) -> Any:
    """A matplotlib ``Figure`` of metric ``name`` against the epoch, a line per fold (and a
    dashed one per fold for ``val_<name>`` when logged)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6, 4))
    ax = figure.add_subplot()
    for i, (fold, rows) in enumerate(histories.items()):
        colour = f"C{i % 10}"
        epochs = [row["epoch"] for row in rows]
        for key, style, label in ((name, "-", fold), (f"val_{name}", "--", f"{fold} val")):
            if any(key in row for row in rows):
                values = [row.get(key, np.nan) for row in rows]
                ax.plot(epochs, values, style, color=colour, label=label, marker=".")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(name)
    ax.set_title(f"{name} per fold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_fold_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]], folder: Path | str
) -> list[Path]:
    """One PNG per logged metric, ``curves_<metric>.png``, with a line per fold.

    Args:
        histories: fold name -> its history rows (``epoch`` and metric values, as in
            ``history.tsv``); training values are drawn solid, ``val_`` values dashed.
        folder: where the PNGs go.
    Returns:
        The paths written, ``loss`` first.
    """
    folder = Path(folder)
    return [
        _save_figure(fold_curves_figure(histories, name), folder / f"curves_{_safe_name(name)}.png")
        for name in curve_names(histories)
    ]


def plot_metric_boxes(
    report: EvaluationReport,
    metric: str,
    path: Path | str,
    class_names: Sequence[str] | None = None,
) -> Path:
    """A box plot of ``metric`` per class over the report's cases, each case a dot.

    Args:
        report: an evaluation report (rows per case and class).
        metric: one of ``report.metrics``.
        path: the PNG to write.
        class_names: a name per class id, background first (``data.class_names``).
    """
    from matplotlib.figure import Figure

    if metric not in report.metrics:
        raise InputError(f"box plot: no metric {metric!r}; the report has {report.metrics}")
    figure = Figure(figsize=(max(4.0, 1.2 * len(report.classes) + 2), 4))
    ax = figure.add_subplot()
    data = []
    for class_id in report.classes:
        values = report.column(metric, class_id)
        data.append(values[~np.isnan(values)])
    positions = list(range(1, len(data) + 1))
    ax.boxplot([d if d.size else np.array([np.nan]) for d in data], positions=positions)
    for x, values in zip(positions, data, strict=True):
        offsets = np.linspace(-0.12, 0.12, values.size) if values.size > 1 else np.zeros(1)
        ax.plot(x + offsets[: values.size], values, "o", color="C0", alpha=0.6, markersize=4)
    labels = []
    for class_id, values in zip(report.classes, data, strict=True):
        named = class_names[class_id] if class_names and class_id < len(class_names) else ""
        labels.append(f"{class_id} {named}".strip() + f"\n(n={values.size})")
    ax.set_xticks(positions)
    ax.set_xticklabels(labels)
    ax.set_xlabel("class")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per class over {len({r.case for r in report.rows})} cases")
    ax.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    return _save_figure(figure, Path(path))
