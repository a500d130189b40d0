"""The lean write path puts exactly the bytes zarr itself would write, and declines writes it
cannot do whole (zarr merges those)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from bevkd.storage.fastwrite import ChunkEncoder, put_objects
from bevkd.storage.layout import compressors, writing_config


def _pair(tmp_path: Path, shape, chunks, dtype, fill_value, separator="."):
    """The same empty array in two local stores."""
    out = []
    for name in ("by_zarr", "by_fastwrite"):
        group = zarr.open_group(tmp_path / f"{name}.zarr", mode="w", zarr_format=3)
        with writing_config():
            group.create_array(
                "a", shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                compressors=compressors(),
                chunk_key_encoding={"name": "default", "separator": separator},
            )  # fmt: skip
            out.append(zarr.open_group(tmp_path / f"{name}.zarr", mode="r+")["a"])
    return out


def _chunk_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != "zarr.json"
    }


@pytest.mark.parametrize(
    ("shape", "chunks", "dtype", "fill", "separator"),
    [
        ((10, 3, 8, 8), (1, 3, 8, 8), "uint8", 255, "."),  # per-frame feature codes
        ((10, 4), (4, 4), "float32", float("nan"), "."),  # per-shard scales, ragged edge chunk
        ((10,), (4,), "int32", -1, "."),  # per-shard counts
        ((3, 9), (1, 9), "float64", float("nan"), "/"),  # shard stats, schema-1 keys
    ],
)
def test_objects_are_byte_for_byte_what_zarr_writes(
    tmp_path: Path, shape, chunks, dtype, fill, separator
) -> None:
    by_zarr, by_fast = _pair(tmp_path, shape, chunks, dtype, fill, separator)
    rng = np.random.default_rng(0)
    values = (rng.random(shape) * 200).astype(dtype)
    encoder = ChunkEncoder.for_array(by_fast)
    assert encoder is not None
    rows = chunks[0]
    for start in range(0, shape[0], rows):
        stop = min(start + rows, shape[0])
        by_zarr[start:stop] = values[start:stop]
        objects = encoder.chunks(slice(start, stop), values[start:stop])
        assert objects is not None and len(objects) == 1
        put_objects(by_fast.store, objects)
    zarr_root, fast_root = (Path(str(a.store.root)) for a in (by_zarr, by_fast))
    assert _chunk_files(fast_root) == _chunk_files(zarr_root)
    np.testing.assert_array_equal(by_fast[:], values)  # and zarr reads it back


def test_partial_chunks_and_other_formats_go_to_zarr(tmp_path: Path) -> None:
    _, array = _pair(tmp_path, (10, 4), (4, 4), "float32", 0.0)
    encoder = ChunkEncoder.for_array(array)
    assert encoder is not None
    block = np.ones((4, 4), np.float32)
    assert encoder.chunks(slice(1, 5), block) is None  # not chunk-aligned
    assert encoder.chunks(slice(0, 2), block[:2]) is None  # part of a chunk mid-array
    assert encoder.chunks(slice(8, 10), block[:2]) is not None  # the array's edge chunk
    group = zarr.open_group(tmp_path / "strings.zarr", mode="w", zarr_format=3)
    strings = group.create_array("s", shape=(4,), chunks=(4,), dtype=str)
    assert ChunkEncoder.for_array(strings) is None


def test_local_puts_leave_no_temporaries(tmp_path: Path) -> None:
    store = zarr.storage.LocalStore(tmp_path)
    put_objects(store, [("x/c.0", b"abc"), ("x/c.1", b"de"), ("y/deep/c.0.0", b"f")])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "x/c.0", "x/c.1", "y/deep/c.0.0",
    ]  # fmt: skip
    assert (tmp_path / "x" / "c.1").read_bytes() == b"de"
