"""The direct chunk-file reader returns exactly what zarr returns, or hands over to zarr."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from miscore.cache.chunkread import ChunkFileReader, CompressedArray, window_reader
from miscore.core.errors import PipelineError
from miscore.pipeline.patching import extract_patch

SHAPE = (37, 50, 29, 1)  # no axis a multiple of the chunk: partial edge chunks everywhere


def _array(folder: Path, data: np.ndarray[Any, Any], chunks: tuple[int, ...], **kwargs: Any) -> Any:
    group = zarr.open_group(str(folder), mode="w", zarr_format=3)
    array = group.create_array(
        "arr", shape=data.shape, dtype=data.dtype, chunks=chunks, fill_value=0, **kwargs
    )
    array[...] = data
    return zarr.open_group(str(folder), mode="r")["arr"]


def _windows(shape: tuple[int, ...], rng: np.random.Generator, count: int) -> list[Any]:
    windows = []
    for _ in range(count):
        window = []
        for n in shape[:3]:
            start = int(rng.integers(0, n))
            window.append(slice(start, int(rng.integers(start + 1, n + 1))))
        windows.append(tuple(window))
    windows.append(tuple(slice(0, n) for n in shape[:3]))
    return windows


@pytest.mark.parametrize(
    ("dtype", "compressor"),
    [
        (np.float32, BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=4)),
        (np.float32, BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=4)),
        (np.float16, BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=2)),
        (np.uint8, BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=1)),
        (np.int16, None),
        (np.int32, ZstdCodec(level=0)),
    ],
)
def test_windows_equal_zarr_reads(tmp_path: Path, dtype: Any, compressor: Any) -> None:
    rng = np.random.default_rng(3)
    data = (rng.normal(size=SHAPE) * 100).astype(dtype)
    if dtype == np.uint8:
        data = (rng.random(SHAPE) > 0.8).astype(np.uint8)
        data[:16] = 0  # whole chunks of the fill value: zarr does not write them
    array = _array(tmp_path / "g", data, (16, 16, 16, 1), compressors=compressor)
    reader = window_reader(array)
    assert isinstance(reader, ChunkFileReader)
    assert reader.shape == SHAPE and reader.dtype == np.dtype(dtype)
    for window in _windows(SHAPE, rng, 25):
        got = reader[window]
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, array[window])
        np.testing.assert_array_equal(got, data[window])
    np.testing.assert_array_equal(np.asarray(reader), data)


def test_unwritten_chunks_read_as_the_fill_value(tmp_path: Path) -> None:
    data = np.zeros((40, 40, 40, 1), np.uint8)
    data[35:, 35:, 35:] = 2
    array = _array(tmp_path / "g", data, (16, 16, 16, 1))
    written = list((tmp_path / "g" / "arr" / "c").rglob("*"))
    assert len([p for p in written if p.is_file()]) == 1  # only the last corner chunk
    reader = window_reader(array)
    np.testing.assert_array_equal(reader[10:40, 0:40, 20:40], data[10:40, 0:40, 20:40])


def test_padded_patches_through_extract_patch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=SHAPE).astype(np.float32)
    array = _array(tmp_path / "g", data, (16, 16, 16, 1))
    window = (slice(-5, 20), slice(40, 60), slice(10, 35))
    np.testing.assert_array_equal(
        extract_patch(window_reader(array), window), extract_patch(data, window)
    )


def test_other_keys_go_to_zarr(tmp_path: Path) -> None:
    data = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    reader = window_reader(_array(tmp_path / "g", data, (16, 16, 16, 1)))
    np.testing.assert_array_equal(reader[3], data[3])
    np.testing.assert_array_equal(reader[::2, 1:9], data[::2, 1:9])
    np.testing.assert_array_equal(reader[..., 0], data[..., 0])


def test_forms_it_does_not_know_are_left_to_zarr(tmp_path: Path) -> None:
    data = np.ones((20, 20, 20, 1), np.float32)
    gzip = _array(tmp_path / "gzip", data, (8, 8, 8, 1), compressors=GzipCodec())
    assert window_reader(gzip) is gzip
    sharded = _array(tmp_path / "shard", data, (4, 4, 4, 1), shards=(8, 8, 8, 1))
    assert window_reader(sharded) is sharded
    plain = np.ones((4, 4))
    assert window_reader(plain) is plain
    memory = zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=(4, 4), chunks=(2, 2), dtype="f4"
    )
    assert window_reader(memory) is memory


def test_a_truncated_chunk_file_is_an_error_not_garbage(tmp_path: Path) -> None:
    data = np.ones((16, 16, 16, 1), np.float32)
    array = _array(tmp_path / "g", data, (16, 16, 16, 1), compressors=None)
    chunk = next(p for p in (tmp_path / "g" / "arr" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(PipelineError, match="damaged cache chunk"):
        window_reader(array)[0:4, 0:4, 0:4]


def test_a_corrupt_compressed_chunk_is_an_error_naming_the_file(tmp_path: Path) -> None:
    data = np.ones((16, 16, 16, 1), np.float32)
    array = _array(tmp_path / "g", data, (16, 16, 16, 1), compressors=BloscCodec(cname="lz4"))
    chunk = next(p for p in (tmp_path / "g" / "arr" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"\x02\x01" + bytes(30))
    with pytest.raises(PipelineError, match=str(chunk.name)):
        window_reader(array)[0:4, 0:4, 0:4]


@pytest.mark.parametrize(
    ("dtype", "compression"),
    [(np.float32, "zstd"), (np.float16, "lz4"), (np.uint8, "zstd"), (np.int16, "none")],
)
def test_compressed_array_reads_what_it_was_given(dtype: Any, compression: str) -> None:
    rng = np.random.default_rng(5)
    data = (rng.normal(size=SHAPE) * 50).astype(dtype)
    if dtype == np.uint8:
        data = (rng.random(SHAPE) > 0.9).astype(np.uint8)
        data[:20] = 0
    packed = CompressedArray.from_array(data, (16, 16, 16, 1), compression)
    assert packed.shape == SHAPE and packed.dtype == np.dtype(dtype)
    for window in _windows(SHAPE, rng, 25):
        np.testing.assert_array_equal(packed[window], data[window])
    np.testing.assert_array_equal(np.asarray(packed), data)
    np.testing.assert_array_equal(packed[3, ::2], data[3, ::2])


def test_compressed_array_is_smaller_and_skips_empty_chunks() -> None:
    label = np.zeros((64, 64, 64, 1), np.uint8)
    label[40:50, 40:50, 40:50] = 1
    packed = CompressedArray.from_array(label, (32, 32, 32, 1))
    assert len(packed._chunks) == 1  # only the chunk with foreground
    assert packed.nbytes_stored < label.nbytes / 50
    np.testing.assert_array_equal(np.asarray(packed), label)


def test_compressed_array_with_an_empty_axis() -> None:
    empty = CompressedArray.from_array(np.zeros((0, 5, 4, 1), np.float32), (16, 16, 16, 1))
    assert np.asarray(empty).shape == (0, 5, 4, 1)
    assert empty[...].shape == (0, 5, 4, 1)
