"""Remote stores: a real S3 API on loopback (moto server) and memory://, plus ``store copy``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bevkd.pipeline.cli import cli
from bevkd.storage.copy import copy_store
from bevkd.storage.reader import open_store
from bevkd.storage.schema import StoreError
from bevkd.storage.testing import small_contract, synthetic_frame, write_store
from bevkd.storage.verify import verify_store
from bevkd.storage.writer import StoreWriter


def _same_frames(
    a: str, b: str, a_options: dict | None = None, b_options: dict | None = None
) -> None:
    left, right = open_store(a, storage_options=a_options), open_store(b, storage_options=b_options)
    assert left.tokens == right.tokens and left.skipped == right.skipped
    for i in range(len(left)):
        if i in left.skipped:
            continue
        x, y = left.read_frame(i), right.read_frame(i)
        assert x.keys() == y.keys()
        for name in x:
            np.testing.assert_array_equal(x[name], y[name])


def test_s3_round_trip_through_fsspec(s3_server: dict) -> None:
    url = f"s3://bevkd-test/{uuid.uuid4().hex}/teacher.zarr"
    contract = small_contract()
    write_store(
        url, contract, n_frames=4, shard_size=2, storage_options=s3_server, skipped={3: "no sweep"}
    )
    store = open_store(url, expect=contract, storage_options=s3_server)
    assert store.finalized and store.skipped == {3: "no sweep"}
    want = synthetic_frame(contract, 2)[0]
    got = store.read_frame(2)
    np.testing.assert_allclose(
        got["heatmap"],
        want["heatmap"],
        atol=store.attrs["codec_error"]["heatmap"]["max_abs"] + 1e-6,
    )
    assert verify_store(url, s3_server).ok
    # A second process re-opens the writer by URL (as a dask worker would) and is refused.
    with pytest.raises(StoreError, match="already marked written"):
        writer = StoreWriter.open(url, s3_server)
        writer.write_shard(0, {}, {})


def test_s3_without_the_endpoint_fails_clearly(s3_server: dict) -> None:
    with pytest.raises(StoreError, match=r"nope\.zarr: no zarr store here"):
        open_store("s3://bevkd-test/nope.zarr", storage_options=s3_server)


def test_memory_round_trip() -> None:
    url = f"memory://bevkd/{uuid.uuid4().hex}.zarr"
    write_store(url, small_contract(), n_frames=5, shard_size=2)
    store = open_store(url)
    assert len(store) == 5 and verify_store(url).ok
    assert store.read_frame(4)["boxes"].shape[1] == 11


def test_copy_local_to_s3_and_back_with_verify(tmp_path: Path, s3_server: dict) -> None:
    local = str(tmp_path / "src.zarr")
    write_store(local, small_contract(), n_frames=4, shard_size=2, skipped={1: "bad calibration"})
    remote = f"s3://bevkd-test/{uuid.uuid4().hex}/copy.zarr"
    result = copy_store(local, remote, None, s3_server)
    assert result.report.ok and result.copied > 0 and result.skipped == 0
    _same_frames(local, remote, None, s3_server)

    back = tmp_path / "back.zarr"
    cli_result = CliRunner().invoke(
        cli,
        ["store", "copy", remote, str(back), "--src-endpoint", s3_server["endpoint_url"],
         "--src-storage-options", json.dumps({"key": "test", "secret": "test"})],
        catch_exceptions=False,
    )  # fmt: skip
    assert cli_result.exit_code == 0, cli_result.output
    assert "verified: 3 frames" in cli_result.output
    _same_frames(local, str(back))
    verify = CliRunner().invoke(cli, ["store", "verify", str(back)], catch_exceptions=False)
    assert verify.exit_code == 0, verify.output


def test_interrupted_copy_resumes_and_repairs(tmp_path: Path) -> None:
    src = str(tmp_path / "src.zarr")
    write_store(src, small_contract(), n_frames=4, shard_size=2)
    dst = tmp_path / "dst.zarr"
    copy_store(src, str(dst))
    again = copy_store(src, str(dst))  # nothing lost: only metadata is redone
    metadata = sum(1 for p in Path(src).rglob("zarr.json"))
    assert again.copied == metadata
    # Simulate an interruption: the root metadata (copied last) and some chunks are gone, one
    # chunk is truncated.
    (dst / "zarr.json").unlink()
    lost = sorted((dst / "fields" / "lidar_bev" / "data").glob("c.*"))[:2]
    for chunk in lost:
        chunk.unlink()
    truncated = next((dst / "fields" / "heatmap" / "data").glob("c.*"))
    truncated.write_bytes(truncated.read_bytes()[:10])
    with pytest.raises(StoreError, match="no zarr store here"):
        open_store(str(dst))
    result = copy_store(src, str(dst))
    assert result.report.ok and result.copied == metadata + len(lost) + 1
    _same_frames(src, str(dst))
