"""Fuzzing every reader and the config loader: only miscore's documented errors may come out.

Random bytes behind valid headers, and random values written into header fields. Bounded for
CI (``helpers.FUZZ``); ``nox -s fuzz`` runs the same tests with many more examples.
"""

from __future__ import annotations

import contextlib
import io
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import miscore
from miscore.core.config import load_config, parse_config
from tests.reliability.helpers import FUZZ


def _reader(installed_plugins: miscore.PluginManager, name: str) -> miscore.ImageIO:
    io_class = installed_plugins.registry.get_io(name)
    return io_class()


def _read_or_documented_error(reader: miscore.ImageIO, path: Path) -> None:
    """Reading succeeds with a valid Volume or raises a MiscoreError; anything else fails."""
    try:
        volume = reader.read(path)
    except miscore.MiscoreError:
        return
    assert volume.array.ndim in (3, 4)
    assert np.all(np.isfinite(volume.affine))


def _mutate(data: bytes, start: int, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        index = start + position % max(1, len(out) - start)
        if index < len(out):
            out[index] = value
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=12)


# --- valid seeds ----------------------------------------------------------------------------


def _nifti_bytes() -> bytes:
    image = nib.Nifti1Image(np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3), np.eye(4))
    buffer = io.BytesIO()
    file_map = image.make_file_map({"image": buffer, "header": buffer})
    image.to_file_map(file_map)
    return buffer.getvalue()


def _png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _dicom_bytes(tmp: Path) -> bytes:
    from tests.plugins.dicom_helpers import SeriesSpec, stored_values, write_series

    shape = (6, 5, 1)
    (path,) = write_series(tmp, SeriesSpec(shape=shape), stored_values(shape))
    return path.read_bytes()


NIFTI = _nifti_bytes()
PNG = _png_bytes()
MHA_HEADER = (
    "ObjectType = Image\nNDims = {ndims}\nDimSize = {dims}\nElementType = {etype}\n"
    "ElementSpacing = {spacing}\nElementDataFile = LOCAL\n"
)
NRRD_HEADER = "NRRD0004\ntype: {etype}\ndimension: {ndims}\nsizes: {dims}\nencoding: raw\n\n"


# --- NIfTI ----------------------------------------------------------------------------------


@FUZZ
@given(edits=EDITS)
def test_nifti_header_fields(
    installed_plugins: miscore.PluginManager, tmp_path: Path, edits: list[tuple[int, int]]
) -> None:
    path = tmp_path / "fuzz.nii"
    path.write_bytes(_mutate(NIFTI, 0, [(p % 348, v) for p, v in edits]))
    _read_or_documented_error(_reader(installed_plugins, "nifti"), path)


@FUZZ
@given(tail=st.binary(max_size=400), fields=st.lists(st.integers(-5, 70_000), max_size=8))
def test_nifti_random_dims_and_data(
    installed_plugins: miscore.PluginManager, tmp_path: Path, tail: bytes, fields: list[int]
) -> None:
    header = bytearray(NIFTI[:352])
    for i, value in enumerate(fields):  # dim[0..7] as int16 at offset 40
        struct.pack_into("<h", header, 40 + 2 * i, max(-32768, min(32767, value)))
    path = tmp_path / "fuzz.nii.gz"
    import gzip

    path.write_bytes(gzip.compress(bytes(header) + tail))
    _read_or_documented_error(_reader(installed_plugins, "nifti"), path)


# --- SimpleITK: MetaImage and NRRD ----------------------------------------------------------

ETYPES = st.sampled_from(["MET_SHORT", "MET_UCHAR", "MET_FLOAT", "MET_DOUBLE", "MET_NONE", "x"])


@FUZZ
@given(
    ndims=st.integers(-1, 5),
    dims=st.lists(st.integers(-2, 40), min_size=0, max_size=5),
    etype=ETYPES,
    spacing=st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
    data=st.binary(max_size=600),
)
def test_metaimage_header_and_data(
    installed_plugins: miscore.PluginManager,
    tmp_path: Path,
    ndims: int,
    dims: list[int],
    etype: str,
    spacing: list[float],
    data: bytes,
) -> None:
    header = MHA_HEADER.format(
        ndims=ndims,
        dims=" ".join(map(str, dims)),
        etype=etype,
        spacing=" ".join(map(str, spacing)) or "1 1 1",
    )
    path = tmp_path / "fuzz.mha"
    path.write_bytes(header.encode() + data)
    _read_or_documented_error(_reader(installed_plugins, "sitk"), path)


@FUZZ
@given(
    ndims=st.integers(0, 4),
    dims=st.lists(st.integers(0, 30), min_size=1, max_size=4),
    etype=st.sampled_from(["short", "uint8", "float", "double", "block", "nonsense"]),
    data=st.binary(max_size=600),
)
def test_nrrd_header_and_data(
    installed_plugins: miscore.PluginManager,
    tmp_path: Path,
    ndims: int,
    dims: list[int],
    etype: str,
    data: bytes,
) -> None:
    header = NRRD_HEADER.format(ndims=ndims, dims=" ".join(map(str, dims)), etype=etype)
    path = tmp_path / "fuzz.nrrd"
    path.write_bytes(header.encode() + data)
    _read_or_documented_error(_reader(installed_plugins, "sitk"), path)


# --- PNG ------------------------------------------------------------------------------------


@FUZZ
@given(edits=EDITS, cut=st.integers(8, len(PNG)))
def test_png_bytes_behind_the_signature(
    installed_plugins: miscore.PluginManager,
    tmp_path: Path,
    edits: list[tuple[int, int]],
    cut: int,
) -> None:
    path = tmp_path / "fuzz.png"
    path.write_bytes(_mutate(PNG, 8, edits)[:cut])
    reader = _reader(installed_plugins, "image2d")
    _read_or_documented_error(reader, path)
    with contextlib.suppress(miscore.MiscoreError):  # the same file as a label mask
        reader.read_label(path, miscore.Volume(np.zeros((8, 8, 1), np.float32)))


# --- DICOM ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dicom_seed(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _dicom_bytes(tmp_path_factory.mktemp("dicom_seed"))


@FUZZ
@given(edits=EDITS, cut=st.integers(0, 2000))
def test_dicom_file_bytes_behind_the_preamble(
    installed_plugins: miscore.PluginManager,
    tmp_path: Path,
    dicom_seed: bytes,
    edits: list[tuple[int, int]],
    cut: int,
) -> None:
    path = tmp_path / "fuzz.dcm"
    data = _mutate(dicom_seed, 132, edits)
    path.write_bytes(data[: len(data) - cut])
    _read_or_documented_error(_reader(installed_plugins, "dicom"), path)


@FUZZ
@given(data=st.binary(max_size=800))
def test_dicom_random_bytes_after_dicm(
    installed_plugins: miscore.PluginManager, tmp_path: Path, data: bytes
) -> None:
    path = tmp_path / "fuzz.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + data)
    _read_or_documented_error(_reader(installed_plugins, "dicom"), path)


@FUZZ
@given(edits=EDITS, cut=st.integers(0, 2000))
def test_dicom_file_bytes_without_preamble_or_suffix(
    installed_plugins: miscore.PluginManager,
    tmp_path: Path,
    dicom_seed: bytes,
    edits: list[tuple[int, int]],
    cut: int,
) -> None:
    """Files without the 128-byte preamble and ``DICM`` (read by a forced parse when they
    start like a data set) and without a ``.dcm`` suffix: a file, and a folder of it."""
    data = _mutate(dicom_seed[132:], 0, edits)
    (tmp_path / "series").mkdir(exist_ok=True)
    path = tmp_path / "series" / "IM0001"
    path.write_bytes(data[: len(data) - cut])
    reader = _reader(installed_plugins, "dicom")
    _read_or_documented_error(reader, path)
    _read_or_documented_error(reader, path.parent)


# --- the config loader ----------------------------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
KEYS = st.sampled_from(
    ["data", "patching", "training", "model", "inference", "cache", "preprocessing",
     "augmentation", "version", "classes", "patch_shape", "overlap", "name", "epochs", "x"]
)  # fmt: skip
TREES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=20,
)


@FUZZ
@given(tree=st.dictionaries(KEYS, TREES, max_size=6))
def test_config_trees(installed_plugins: miscore.PluginManager, tree: dict[str, object]) -> None:
    from miscore.core.config import check_components

    try:
        config = parse_config(tree, "fuzz.yaml")
        check_components(config, installed_plugins.registry)
    except miscore.MiscoreError:
        return


@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_config_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except miscore.MiscoreError:
        return


def test_the_seeds_are_valid(installed_plugins: miscore.PluginManager, tmp_path: Path) -> None:
    """The unmutated seeds read, so the fuzzers start from files a reader accepts."""
    (tmp_path / "seed.nii").write_bytes(NIFTI)
    (tmp_path / "seed.png").write_bytes(PNG)
    assert _reader(installed_plugins, "nifti").read(tmp_path / "seed.nii").spatial_shape == (
        4,
        5,
        3,
    )
    assert _reader(installed_plugins, "image2d").read(tmp_path / "seed.png").spatial_shape == (8, 8)
    assert yaml.safe_load("a: 1") == {"a": 1}
