"""Apply augmentation components to a training sample; test-time augmentation helpers.

Composition rule (``augment_sample``): consecutive spatial augmentations (those whose
``spatial_transform`` returns a ``SpatialTransform``) are composed into one coordinate map and
the image is interpolated once; intensity augmentations then change the image in place. When
the composed map only flips and permutes axes (flips, 90-degree rotations), the result is a
view of the input: no interpolation and no copy.

Coordinates are voxel indices measured from the centre of their grid, so a transform's matrix
maps an output voxel (centred on the output patch) to an input voxel (centred on the given
region). A loader can hand over a region larger than the patch with ``out_shape``: the patch is
then cut from real data around it instead of being padded. Outside the region, edge voxels are
repeated (edge duplication).
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from miscore.core.components import Augmentation
from miscore.core.errors import InputError
from miscore.core.spatial import SpatialTransform

__all__ = [
    "SpatialTransform",
    "TTATransform",
    "apply_spatial_transforms",
    "augment_sample",
    "compose",
    "tta_predict",
    "tta_transforms",
]

FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.integer[Any]]


# --- composing -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ComposedTransform:
    """Several ``SpatialTransform`` composed: a matrix plus a sum of displacement fields."""

    matrix: npt.NDArray[np.float64]
    fields: tuple[npt.NDArray[np.float32], ...] = ()
    order: int = 1

    @property
    def ndim(self) -> int:
        return int(self.matrix.shape[0] - 1)


def compose(transforms: Sequence[SpatialTransform]) -> ComposedTransform:
    """Compose transforms listed in the order they are applied to the sample.

    Applying ``T1`` then ``T2`` reads the input at ``T1(T2(x))`` for output voxel ``x``. A
    displacement field is evaluated at the output voxel ``x``; that is exact when the field's
    transform is the last spatial one in the list (the default set puts ``elastic`` there) and
    otherwise differs only in where the random field is sampled.
    """
    if not transforms:
        raise ValueError("compose needs at least one transform")
    ndim = transforms[0].ndim
    matrix = np.eye(ndim + 1)
    fields: list[npt.NDArray[np.float32]] = []
    order = 1
    for transform in reversed(transforms):
        if transform.ndim != ndim:
            raise ValueError("cannot compose 2D and 3D transforms")
        linear = transform.matrix[:ndim, :ndim]
        if fields and not np.allclose(linear, np.eye(ndim)):
            lin32 = linear.astype(np.float32)
            fields = [np.tensordot(lin32, f, axes=(1, 0)).astype(np.float32) for f in fields]
        matrix = transform.matrix @ matrix
        if transform.displacement is not None:
            fields.append(transform.displacement)
        order = max(order, transform.order)
    return ComposedTransform(matrix, tuple(fields), order)


# --- applying a coordinate map -----------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _bspline_weights(n: int, control: int) -> npt.NDArray[np.float32]:
    """``(n, control)`` cubic B-spline weights of control points spread over ``n`` voxels."""
    if control == 1:
        weights = np.ones((n, 1), np.float32)
    else:
        u = np.linspace(0.0, control - 1.0, n)[:, None] - np.arange(control)[None, :]
        t = np.abs(u)
        w = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
        weights = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
    weights.setflags(write=False)
    return weights


def _add_upsampled_field(
    control: npt.NDArray[np.float32],
    shape: tuple[int, ...],
    rows: tuple[int, int],
    out: npt.NDArray[np.float32],
) -> None:
    """Add one displacement component, evaluated on rows ``rows`` of the full grid, to ``out``.

    Separable: the control grid is upsampled along the later axes while it is small, then
    the first axis adds one pass per control plane. No BLAS call, on purpose: its threads
    spin after each call and slow down the single-threaded gathers that follow.
    """
    current: npt.NDArray[np.float32] = control
    for axis in range(len(shape) - 1, 0, -1):
        weights = _bspline_weights(shape[axis], control.shape[axis])
        current = np.moveaxis(
            np.einsum("kj,...j->...k", weights, np.moveaxis(current, axis, -1)), -1, axis
        )
    first = _bspline_weights(shape[0], control.shape[0])[rows[0] : rows[1]]
    planes = current.reshape(current.shape[0], 1, -1)
    flat = out.reshape(rows[1] - rows[0], -1)
    for k in range(planes.shape[0]):
        flat += first[:, k : k + 1] * planes[k]


class _Workspace(threading.local):
    """Scratch buffers reused between samples: fresh large arrays cost page faults."""

    def __init__(self) -> None:
        self.key: tuple[Any, ...] = ()
        self.buffers: dict[str, npt.NDArray[Any]] = {}

    def get(self, key: tuple[Any, ...], specs: dict[str, tuple[tuple[int, ...], Any]]) -> Any:
        if key != self.key:
            self.buffers = {}
            self.key = key
        for name, (shape, dtype) in specs.items():
            buf = self.buffers.get(name)
            if buf is None or buf.shape != shape or buf.dtype != dtype:
                self.buffers[name] = np.empty(shape, dtype)
        return self.buffers


_WORKSPACE = _Workspace()


def _region_centre(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> npt.NDArray[np.float64]:
    """Where the output's centre sits in the region: the centre of the centre crop.

    The region's own centre when the sizes differ by an even number; half a voxel lower when
    odd, so that an identity map reads whole voxels (the crop ``_crop`` cuts) instead of
    averaging neighbours.
    """
    region, out = np.asarray(in_shape), np.asarray(out_shape)
    return np.asarray((region - out) // 2 + (out - 1) / 2, dtype=np.float64)


def _signed_permutation(
    composed: ComposedTransform,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
) -> list[tuple[int, int, int]] | None:
    """``[(input axis, sign, start)]`` per output axis when the map is an exact view."""
    if composed.fields:
        return None
    n = composed.ndim
    linear = composed.matrix[:n, :n]
    rounded = np.rint(linear)
    if not np.allclose(linear, rounded, atol=1e-9) or np.any(np.abs(rounded) > 1):
        return None
    if not (np.all(np.abs(rounded).sum(axis=0) == 1) and np.all(np.abs(rounded).sum(axis=1) == 1)):
        return None
    c_in = _region_centre(in_shape, out_shape)
    c_out = (np.asarray(out_shape) - 1) / 2
    result = []
    for j in range(n):
        a = int(np.flatnonzero(rounded[:, j])[0])
        sign = int(rounded[a, j])
        # input index along axis a = sign * (i_j - c_out_j) + offset, i_j in [0, out_j)
        offset = composed.matrix[a, n] + c_in[a]
        first = offset - sign * c_out[j]
        if abs(first - round(first)) > 1e-6:
            return None
        first_i = round(first)
        last_i = first_i + sign * (out_shape[j] - 1)
        if min(first_i, last_i) < 0 or max(first_i, last_i) > in_shape[a] - 1:
            return None
        result.append((a, sign, first_i))
    return result


def _view(
    array: npt.NDArray[Any], plan: list[tuple[int, int, int]], out_shape: tuple[int, ...]
) -> npt.NDArray[Any]:
    """Apply a signed-permutation plan as a view: transpose, flip, slice."""
    n = len(plan)
    view = array.transpose([a for a, _, _ in plan] + [n])
    index: list[slice] = []
    for j, (a, sign, first) in enumerate(plan):
        size = out_shape[j]
        if sign > 0:
            index.append(slice(first, first + size))
        else:
            start = array.shape[a] - 1 - first
            view = np.flip(view, axis=j)
            index.append(slice(start, start + size))
    return view[tuple(index)]


def _coordinates(
    composed: ComposedTransform,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    rows: tuple[int, int],
    coords: npt.NDArray[np.float32],
) -> None:
    """Fill ``coords`` ``(ndim, rows, *out_shape[1:])`` with input voxel coordinates.

    ``rows`` is the ``[start, stop)`` range of output indices along axis 0 (a slab).
    """
    n = composed.ndim
    c_in = _region_centre(in_shape, out_shape)
    ranges = [rows, *[(0, size) for size in out_shape[1:]]]
    grids = [
        (np.arange(*ranges[j], dtype=np.float64) - (size - 1) / 2).reshape(
            [ranges[j][1] - ranges[j][0] if k == j else 1 for k in range(n)]
        )
        for j, size in enumerate(out_shape)
    ]
    for a in range(n):
        row = composed.matrix[a]
        partial = row[0] * grids[0] + (row[n] + c_in[a])
        for j in range(1, n - 1):
            partial = partial + row[j] * grids[j]
        np.add(
            partial.astype(np.float32),
            (row[n - 1] * grids[n - 1]).astype(np.float32),
            out=coords[a],
        )
        for control in composed.fields:
            _add_upsampled_field(control[a], out_shape, rows, coords[a])


def apply_spatial_transforms(
    transforms: Sequence[SpatialTransform],
    image: npt.NDArray[Any],
    label: LabelArray | None = None,
    out_shape: Sequence[int] | None = None,
) -> tuple[FloatArray, LabelArray | None]:
    """Compose ``transforms`` and resample image (and label) once.

    Args:
        transforms: in the order they are applied to the sample.
        image: ``(*spatial, C)``; all channels share the map.
        label: ``(*spatial, 1)`` integer classes, resampled by nearest neighbour.
        out_shape: spatial output shape; defaults to the input's. A smaller output is cut
            around the centre of the input, after transforming.

    Returns:
        The float32 image and the label; both may be views of the inputs when the map only
        flips and permutes axes.
    """
    image = np.asarray(image)
    in_shape = tuple(int(s) for s in image.shape[:-1])
    out = _check_shapes(image, label, out_shape)
    if not transforms:
        return _crop(image, label, out)
    composed = compose(transforms)
    if composed.ndim != len(in_shape):
        raise InputError(
            f"a {composed.ndim}D spatial transform cannot apply to a {len(in_shape)}D image "
            f"of shape {image.shape}; check the augmentation's axes/planes"
        )
    plan = _signed_permutation(composed, in_shape, out)
    if plan is not None:
        image_view = _view(image, plan, out)
        label_view = None if label is None else _view(label, plan, out)
        if image_view.dtype != np.float32:
            image_view = image_view.astype(np.float32)
        return image_view, label_view
    return _interpolate(composed, image, label, out)


def _interpolate(
    composed: ComposedTransform,
    image: npt.NDArray[Any],
    label: LabelArray | None,
    out_shape: tuple[int, ...],
) -> tuple[FloatArray, LabelArray | None]:
    src = np.ascontiguousarray(image, dtype=np.float32)
    lab = None if label is None else np.ascontiguousarray(label)
    # an axis of one voxel gets a duplicate so that every voxel has an upper neighbour
    for axis, size in enumerate(src.shape[:-1]):
        if size == 1:
            src = np.concatenate([src, src], axis=axis)
            if lab is not None:
                lab = np.concatenate([lab, lab], axis=axis)
    in_shape = tuple(int(s) for s in src.shape[:-1])
    n = len(in_shape)
    channels = int(src.shape[-1])
    # the output is made in slabs along axis 0: bounded scratch memory that stays in cache
    inner = int(np.prod(out_shape[1:]))
    slab = max(1, min(out_shape[0], _SLAB_VOXELS // (inner * channels)))
    count = slab * inner
    # flat indices are summed in float32 (exact below 2**24 voxels), then cast once
    exact = np.float32 if int(np.prod(in_shape)) < 2**24 else np.float64
    ws = _WORKSPACE.get(
        (in_shape, out_shape, channels),
        {
            "coords": ((n, count), np.float32),
            "scratch": ((count,), exact),
            "sum": ((count,), exact),
            "index": ((count,), np.intp),
            **{f"tmp{k}": ((count, channels), np.float32) for k in range(n)},
        },
    )
    strides = [int(np.prod(in_shape[a + 1 :])) for a in range(n)]
    table = src.reshape(-1) if channels == 1 else src.reshape(-1, channels)
    out_image = np.empty((*out_shape, channels), np.float32)
    image_rows = out_image.reshape(out_shape[0], inner * channels)
    out_label = None if lab is None else np.empty((*out_shape, 1), lab.dtype)
    for start in range(0, out_shape[0], slab):
        stop = min(start + slab, out_shape[0])
        size = (stop - start) * inner
        target = image_rows[start:stop].reshape(size, channels)
        label_target = None if out_label is None else out_label.reshape(-1)[start * inner :][:size]
        _interpolate_slab(
            composed,
            src,
            table,
            lab,
            in_shape,
            out_shape,
            (start, stop),
            strides,
            {k: v[..., :size] if k == "coords" else v[:size] for k, v in ws.items()},
            target if channels > 1 else target.reshape(size),
            label_target,
        )
    return out_image, out_label


#: voxels (times channels) per slab: small enough for the scratch buffers to stay in cache
_SLAB_VOXELS = 1 << 18


def _interpolate_slab(
    composed: ComposedTransform,
    src: npt.NDArray[np.float32],
    table: npt.NDArray[np.float32],
    lab: LabelArray | None,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    rows: tuple[int, int],
    strides: list[int],
    ws: dict[str, npt.NDArray[Any]],
    result: FloatArray,
    label_out: LabelArray | None,
) -> None:
    """Resample output rows ``rows`` (axis 0) of image (into ``result``) and label."""
    n = len(in_shape)
    count = result.shape[0]
    coords: npt.NDArray[np.float32] = ws["coords"]
    _coordinates(
        composed, in_shape, out_shape, rows, coords.reshape(n, rows[1] - rows[0], *out_shape[1:])
    )
    index: npt.NDArray[np.intp] = ws["index"]
    scratch: npt.NDArray[np.floating[Any]] = ws["scratch"]
    total: npt.NDArray[np.floating[Any]] = ws["sum"]

    def flat_index(per_axis: Callable[[int, npt.NDArray[np.floating[Any]]], None]) -> None:
        # index = sum over axes of (voxel index along the axis) * stride
        for a in range(n):
            per_axis(a, scratch)
            if strides[a] != 1:
                np.multiply(scratch, strides[a], out=scratch)
            if a == 0:
                np.copyto(total, scratch)
            else:
                np.add(total, scratch, out=total)
        np.copyto(index, total, casting="unsafe")

    for a in range(n):  # edge duplication: clamp to the region
        np.clip(coords[a], 0, in_shape[a] - 1, out=coords[a])

    if lab is not None and label_out is not None:
        flat_index(lambda a, out: np.rint(coords[a], out=out))
        np.take(lab.reshape(-1), index, out=label_out, mode="wrap")

    if composed.order == 3:
        from scipy import ndimage

        for c in range(src.shape[-1]):
            values = ndimage.map_coordinates(
                src[..., c], coords, order=3, mode="nearest", output=np.float32
            )
            if result.ndim == 1:
                result[...] = values
            else:
                result[:, c] = values
        return

    def lower_corner(a: int, out: npt.NDArray[np.floating[Any]]) -> None:
        np.floor(coords[a], out=out)
        np.minimum(out, in_shape[a] - 2, out=out)
        np.subtract(coords[a], out, out=coords[a])  # now the upper voxel's weight

    flat_index(lower_corner)
    channels = 1 if result.ndim == 1 else result.shape[1]
    weights = [coords[a] if channels == 1 else coords[a][:, None] for a in range(n)]
    tmps = [ws[f"tmp{k}"] if channels > 1 else ws[f"tmp{k}"].reshape(count) for k in range(n)]

    def corner(level: int, offset: int, out: FloatArray) -> FloatArray:
        # depth-first evaluation of the 2**n corners; level k's lower half lives in tmps[k]
        if level == n:
            # every index is in range: "wrap" only skips the slower checks of "raise"/"clip"
            np.take(table[offset:], index, axis=0, out=out, mode="wrap")
            return out
        low = corner(level + 1, offset, tmps[level])
        high = corner(level + 1, offset + strides[level], out)
        high -= low
        high *= weights[level]
        high += low
        return high

    corner(0, 0, result)


def _check_shapes(
    image: npt.NDArray[Any], label: LabelArray | None, out_shape: Sequence[int] | None
) -> tuple[int, ...]:
    if image.ndim not in (3, 4):
        raise InputError(
            f"an augmentation sample is (*spatial, channels) with 2 or 3 spatial axes; "
            f"got image shape {image.shape}"
        )
    in_shape = tuple(int(s) for s in image.shape[:-1])
    if label is not None:
        if label.shape != (*in_shape, 1):
            raise InputError(
                f"the label of an augmentation sample has shape {(*in_shape, 1)} to match "
                f"the image {image.shape}; got {label.shape}"
            )
        if not np.issubdtype(label.dtype, np.integer):
            raise InputError(f"a label holds integer classes; got dtype {label.dtype}")
    out = in_shape if out_shape is None else tuple(int(s) for s in out_shape)
    if len(out) != len(in_shape) or any(o < 1 or o > i for o, i in zip(out, in_shape, strict=True)):
        raise InputError(
            f"out_shape {out} must have {len(in_shape)} axes, each at least 1 and at most the "
            f"given region {in_shape}"
        )
    return out


def _crop(
    image: npt.NDArray[Any], label: LabelArray | None, out_shape: tuple[int, ...]
) -> tuple[FloatArray, LabelArray | None]:
    """The centre ``out_shape`` of image and label (views)."""
    starts = [(i - o) // 2 for i, o in zip(image.shape[:-1], out_shape, strict=True)]
    index = tuple(slice(s, s + o) for s, o in zip(starts, out_shape, strict=True))
    cropped = image[index]
    if cropped.dtype != np.float32:
        cropped = cropped.astype(np.float32)
    return cropped, None if label is None else label[index]


# --- a sample through a list of augmentations --------------------------------------------


def augment_sample(
    augmentations: Sequence[Augmentation],
    image: npt.NDArray[Any],
    label: LabelArray | None,
    rng: np.random.Generator,
    out_shape: Sequence[int] | None = None,
) -> tuple[FloatArray, LabelArray | None]:
    """Run one sample through ``augmentations`` in order; each applies with its ``p``.

    Consecutive spatial augmentations are composed and interpolated once (see the module
    docstring); intensity ones change only the image.

    Args:
        augmentations: components (e.g. from ``registry.create("augmentation", entry)``).
        image: ``(*spatial, C)``, any real dtype; returned as float32.
        label: ``(*spatial, 1)`` integer classes, or None.
        rng: the only source of randomness.
        out_shape: the patch shape to return when ``image`` is a larger region around it.

    Returns:
        Image and label of spatial shape ``out_shape``. Either may share memory with the
        input (flips and 90-degree rotations are views): copy before writing into them.
    """
    image = np.asarray(image)
    out = _check_shapes(image, label, out_shape)
    owned = False
    group: list[SpatialTransform] = []
    # spatial_later[i]: whether augmentations[i:] may still move voxels
    spatial_later = [False] * (len(augmentations) + 1)
    for i in range(len(augmentations) - 1, -1, -1):
        spatial_later[i] = spatial_later[i + 1] or _may_be_spatial(augmentations[i])
    for i, aug in enumerate(augmentations):
        p = float(getattr(aug.params, "p", 1.0))
        if rng.random() >= p:
            continue
        transform = aug.spatial_transform(out, rng)
        if transform is not None:
            group.append(transform)
            continue
        if group or not spatial_later[i + 1]:
            # resample the pending spatial run; or, when nothing later can move voxels, cut
            # the patch now so that intensity steps skip the margin
            image, label = apply_spatial_transforms(group, image, label, out)
            owned, group = _owns(image), []
        if not owned:
            image = np.array(image, dtype=np.float32, order="C")
            owned = True
        if aug.augment_inplace(image, rng):
            continue
        image, label = aug.augment(image, label, rng)
        image = np.asarray(image)
        _check_shapes(image, label, None)
        owned = False
    image, label = apply_spatial_transforms(group, image, label, out)
    return image, label


def _may_be_spatial(augmentation: Augmentation) -> bool:
    """False for components that keep the base class's ``spatial_transform`` (never spatial)."""
    return type(augmentation).spatial_transform is not Augmentation.spatial_transform


def _owns(array: npt.NDArray[Any]) -> bool:
    """True for a float32 array that owns its (C-contiguous) memory."""
    return bool(array.base is None and array.flags.c_contiguous and array.dtype == np.float32)


# --- test-time augmentation ---------------------------------------------------------------


@dataclass(frozen=True)
class TTATransform:
    """A flip of some axes, then ``k`` quarter turns in ``plane``; exactly invertible.

    ``forward`` and ``inverse`` take arrays ``(*spatial, C)`` and return views.
    """

    flip_axes: tuple[int, ...] = ()
    k: int = 0
    plane: tuple[int, int] = (0, 1)

    def forward(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        out = np.flip(array, self.flip_axes) if self.flip_axes else array
        return np.rot90(out, self.k, self.plane) if self.k % 4 else out

    def inverse(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        out = np.rot90(array, -self.k, self.plane) if self.k % 4 else array
        return np.flip(out, self.flip_axes) if self.flip_axes else out

    def matrix(self, ndim: int) -> npt.NDArray[np.int64]:
        """The signed permutation this transform applies to axis directions."""
        # move a 2x2(x2) grid of its own indices: a step along output axis j reads a step
        # along one input axis, forwards or backwards
        grid = np.indices([2] * ndim).transpose([*range(1, ndim + 1), 0])
        moved = self.forward(grid)
        result = np.zeros((ndim, ndim), np.int64)
        origin = moved[(0,) * ndim]
        for j in range(ndim):
            step = moved[tuple(1 if k == j else 0 for k in range(ndim))] - origin
            a = int(np.flatnonzero(step)[0])
            result[a, j] = int(step[a])
        return result


def tta_transforms(
    ndim: int,
    rotations: bool = False,
    axes: Sequence[int] | None = None,
    plane: tuple[int, int] = (0, 1),
) -> list[TTATransform]:
    """Test-time transforms: every mirroring of ``axes``, optionally with quarter turns.

    Args:
        ndim: spatial axes of the arrays (2 or 3).
        rotations: add 90/180/270-degree turns in ``plane`` (duplicates removed: 8 distinct
            transforms in 2D, 16 in 3D). A turn swaps the plane's sizes; ``inverse`` undoes it.
        axes: axes to mirror; default all spatial axes (4 transforms in 2D, 8 in 3D).

    Returns:
        The identity first, then the others; each has exact ``forward`` and ``inverse``.
    """
    if ndim not in (2, 3):
        raise InputError(f"test-time augmentation needs 2 or 3 spatial axes; got {ndim}")
    chosen = tuple(range(ndim)) if axes is None else tuple(int(a) for a in axes)
    for a in (*chosen, *plane):
        if not 0 <= a < ndim:
            raise InputError(f"test-time augmentation axis {a} is not a spatial axis of {ndim}D")
    subsets = [combo for r in range(len(chosen) + 1) for combo in itertools.combinations(chosen, r)]
    result: list[TTATransform] = []
    seen: set[bytes] = set()
    for k in range(4 if rotations else 1):
        for flips in subsets:
            transform = TTATransform(tuple(flips), k, plane)
            key = transform.matrix(ndim).tobytes()
            if key not in seen:
                seen.add(key)
                result.append(transform)
    return result


def tta_predict(
    predict: Callable[[npt.NDArray[Any]], npt.NDArray[Any]],
    image: npt.NDArray[Any],
    transforms: Sequence[TTATransform],
) -> npt.NDArray[np.float32]:
    """Mean of ``inverse(predict(forward(image)))`` over ``transforms`` (float32).

    ``predict`` maps ``(*spatial, C)`` to ``(*spatial, K)`` (e.g. class probabilities).
    """
    total: npt.NDArray[np.float32] | None = None
    for transform in transforms:
        moved = np.ascontiguousarray(transform.forward(image))
        back = transform.inverse(np.asarray(predict(moved), dtype=np.float32))
        total = back.copy() if total is None else total + back
    if total is None:
        raise InputError("tta_predict needs at least one transform")
    return total / np.float32(len(transforms))
