"""Writer: crash and resume (kill -9), concurrent writers, refusals, missing chunks, NaN."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bevkd.storage.reader import FrameSkipped, open_store
from bevkd.storage.schema import ContractMismatch, StoreError
from bevkd.storage.testing import (
    shard_payload,
    small_contract,
    synthetic_frame_list,
    synthetic_provenance,
    write_store,
)
from bevkd.storage.writer import ShardAlreadyWritten, StoreWriter

N, SHARD = 16, 4  # 4 shards


def _create(url: Path, resume: bool = False, contract=None) -> StoreWriter:
    frames = synthetic_frame_list(N)
    return StoreWriter.create(
        str(url), contract or small_contract(), frames["tokens"], frames["scenes"], frames["splits"],
        frames["has_label"], synthetic_provenance(frames["tokens"]), shard_size=SHARD, resume=resume,
    )  # fmt: skip


def _objects(root: Path) -> dict[str, bytes]:
    """Every stored object except metadata (whose attrs carry timestamps) and temporaries."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != "zarr.json" and not p.name.endswith(".partial")
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same store written in one uninterrupted run."""
    url = tmp_path_factory.mktemp("ref") / "ref.zarr"
    write_store(str(url), small_contract(), n_frames=N, shard_size=SHARD)
    return url


# A writer in its own process; shards listed in argv. With a pause, it sleeps after writing a
# shard's data and before marking it, so a kill lands inside the shard. Waits for a start
# file so two writers begin together.
WRITER = textwrap.dedent(
    """
    import os, sys, time
    from bevkd.storage.testing import shard_payload
    from bevkd.storage.writer import StoreWriter
    url, go, pause, shards = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
    original = StoreWriter._write_with_zarr  # the shard's last writes before its mark
    def slow(self, writes):
        original(self, writes)
        time.sleep(pause)
    StoreWriter._write_with_zarr = slow
    writer = StoreWriter.open(url)
    while not os.path.exists(go):
        time.sleep(0.01)
    for shard in map(int, shards):
        arrays, boxes = shard_payload(writer, shard)
        writer.write_shard(shard, arrays, boxes)
    """
)


def _spawn(url: Path, go: Path, pause: float, shards: list[int]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(url), str(go), str(pause), *map(str, shards)]
    )


def _marks(url: Path) -> list[int]:
    return sorted(
        int(p.name[2:]) for p in (url / "shards" / "written").glob("c.*") if p.name[2:].isdigit()
    )


def test_kill_9_mid_shard_then_resume_is_bit_identical(tmp_path: Path, reference: Path) -> None:
    url = tmp_path / "crash.zarr"
    _create(url)
    go = tmp_path / "go"
    go.touch()
    proc = _spawn(url, go, 1.0, list(range(N // SHARD)))
    deadline = time.monotonic() + 60
    while not _marks(url):  # the first shard is marked ...
        assert proc.poll() is None and time.monotonic() < deadline, (
            "writer ended before marking a shard"
        )
        time.sleep(0.01)
    # ... and the next one has written data but no mark yet: kill it there.
    next_chunk = (
        url / "fields" / "lidar_bev" / "data" / f"c.{max(_marks(url)) * SHARD + SHARD}.0.0.0"
    )
    while not next_chunk.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    marked = _marks(url)
    assert marked and len(marked) < N // SHARD
    partial_shard = max(marked) + 1
    assert partial_shard not in marked and next_chunk.exists()  # data without a mark

    # No shard marked written is incomplete: every frame of it reads back as in the reference.
    crashed, ref = open_store(str(url)), open_store(str(reference))
    for shard in marked:
        for i in range(shard * SHARD, shard * SHARD + SHARD):
            got, want = crashed.read_frame(i), ref.read_frame(i)
            assert got.keys() == want.keys()
            for name in want:
                np.testing.assert_array_equal(got[name], want[name])
    with pytest.raises(StoreError, match=f"shard {partial_shard}, which is not written yet"):
        crashed.read_frame(partial_shard * SHARD)

    # A killed LocalStore write can leave a temporary behind; it must not break anything.
    leftover = url / "fields" / "heatmap" / "data" / "c.0.0.0.0.deadbeef.partial"
    leftover.write_bytes(b"garbage from a killed writer")

    writer = _create(url, resume=True)
    assert writer.pending_shards() == [s for s in range(N // SHARD) if s not in marked]
    for shard in writer.pending_shards():
        arrays, boxes = shard_payload(writer, shard)
        writer.write_shard(shard, arrays, boxes)
    writer.finalize()
    got, want = _objects(url), _objects(reference)
    assert got.keys() == want.keys()
    assert [k for k in want if got[k] != want[k]] == []
    from bevkd.storage.verify import verify_store

    report = verify_store(str(url))
    assert report.ok and report.leftover_partials >= 1  # ours, plus any the kill left


def test_two_processes_on_disjoint_shards_need_no_lock(tmp_path: Path, reference: Path) -> None:
    url = tmp_path / "concurrent.zarr"
    _create(url)
    go = tmp_path / "go"
    procs = [_spawn(url, go, 0.0, [0, 2]), _spawn(url, go, 0.0, [1, 3])]
    go.touch()  # both start together
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    writer = StoreWriter.open(str(url))
    assert writer.pending_shards() == []
    writer.finalize()
    got, want = _objects(url), _objects(reference)
    assert got.keys() == want.keys() and [k for k in want if got[k] != want[k]] == []
    with pytest.raises(ShardAlreadyWritten, match=r"shard 3 .*already marked written"):
        writer.write_shard(3, *shard_payload(writer, 3))


def test_create_refuses_existing_store_and_resume_checks_contract(tmp_path: Path) -> None:
    url = tmp_path / "s.zarr"
    _create(url)
    with pytest.raises(StoreError, match="already exists; pass resume=True"):
        _create(url)
    other = small_contract(codecs={"bev_feature": "fp16"})
    with pytest.raises(ContractMismatch, match="lidar_bev: uint8 != fp16"):
        _create(url, resume=True, contract=other)
    frames = synthetic_frame_list(N + 1)
    with pytest.raises(StoreError, match="different frame list"):
        StoreWriter.create(str(url), small_contract(), frames["tokens"], frames["scenes"], frames["splits"],
                           frames["has_label"], {}, shard_size=SHARD, resume=True)  # fmt: skip
    assert _create(url, resume=True).pending_shards() == list(range(N // SHARD))


def test_write_shard_checks_rows_and_fields(tmp_path: Path) -> None:
    writer = _create(tmp_path / "s.zarr")
    arrays, boxes = shard_payload(writer, 0)
    # label_bev is labeled_only: frames 1 and 3 of shard 0 are unlabeled, so 2 rows.
    assert writer.rows_for(0, "label_bev") == [0, 2] and arrays["label_bev"].shape[0] == 2
    bad = dict(arrays, label_bev=np.zeros((4, *arrays["label_bev"].shape[1:]), np.float32))
    with pytest.raises(
        StoreError,
        match=r"field 'label_bev': got shape \(4, 4, 16, 16\), expected \(2, 4, 16, 16\)",
    ):
        writer.write_shard(0, bad, boxes)
    with pytest.raises(StoreError, match="unknown fields \\['nope'\\]"):
        writer.write_shard(0, dict(arrays, nope=arrays["heatmap"]), boxes)
    assert writer.pending_shards()[0] == 0  # nothing was marked


def test_missing_chunk_raises_never_zeros(tmp_path: Path) -> None:
    url = tmp_path / "s.zarr"
    contract = small_contract()
    writer = _create(url, contract=contract)
    arrays, boxes = shard_payload(writer, 0)
    arrays["lidar_bev"][1] = 0.0  # an all-zero frame must still be written (write_empty_chunks)
    writer.write_shard(0, arrays, boxes)
    assert (url / "fields" / "lidar_bev" / "data" / "c.1.0.0.0").is_file()
    store = open_store(str(url))
    np.testing.assert_array_equal(store.read_frame(1)["lidar_bev"], 0.0)
    for key in ("lidar_bev/data/c.2.0.0.0", "heatmap/scale/c.0.0", "boxes/count/c.0"):
        os.remove(url / "fields" / key)
        name = key.split("/")[0]
        frame = 2 if name == "lidar_bev" else 0
        with pytest.raises(
            StoreError,
            match=f"frame {frame} \\(token tok0000{frame}\\), field '{name}': chunk is missing",
        ):
            open_store(str(url)).read_frame(frame, [name])


def test_skipped_frames_and_labeled_only_fields(tmp_path: Path) -> None:
    url = tmp_path / "s.zarr"
    write_store(
        str(url), small_contract(), n_frames=10, shard_size=4, skipped={5: "lidar file truncated"}
    )
    store = open_store(str(url))
    assert store.skipped == {5: "lidar file truncated"}
    with pytest.raises(
        FrameSkipped,
        match="frame 5 \\(token tok00005\\) was skipped by the teacher: lidar file truncated",
    ):
        store.read_frame(5)
    assert "label_bev" in store.read_frame(0) and "label_bev" not in store.read_frame(
        1
    )  # 1 is unlabeled
    assert store.read_frame("tok00004")["boxes"].shape[1] == 11


def test_finalize_fails_on_nan_naming_frames(tmp_path: Path) -> None:
    url = tmp_path / "s.zarr"
    writer = _create(url)
    for shard in writer.pending_shards():
        arrays, boxes = shard_payload(writer, shard)
        if shard == 1:
            arrays["heatmap"][2, 0, 3, 3] = np.nan  # frame 6
        writer.write_shard(shard, arrays, boxes)
    with pytest.raises(StoreError, match=r"NaN values in heatmap: frames 6 \(tok00006\)"):
        writer.finalize()
    assert open_store(str(url)).attrs["finalized"] is False


def test_finalize_records_stats_and_measured_error(tmp_path: Path) -> None:
    url = tmp_path / "s.zarr"
    contract = small_contract()
    write_store(str(url), contract, n_frames=12, shard_size=4)
    store = open_store(str(url))
    from bevkd.storage.testing import synthetic_frame

    for name in ("lidar_bev", "heatmap", "regression"):
        originals = np.stack([synthetic_frame(contract, i)[0][name] for i in range(12)])
        decoded = np.stack([store.read_frame(i)[name] for i in range(12)])
        err, stats = store.attrs["codec_error"][name], store.attrs["stats"][name]
        assert err["max_abs"] == pytest.approx(np.abs(decoded - originals).max(), rel=1e-6)
        assert err["rms"] == pytest.approx(
            np.sqrt(((decoded - originals).astype(np.float64) ** 2).mean()), rel=1e-4
        )
        assert stats["mean"] == pytest.approx(decoded.astype(np.float64).mean(), rel=1e-4, abs=1e-6)
        assert stats["std"] == pytest.approx(decoded.astype(np.float64).std(), rel=1e-4)
        assert (stats["min"], stats["max"], stats["nan_count"]) == (decoded.min(), decoded.max(), 0)


def test_reopen_reuses_a_writer_until_the_store_is_made_again(tmp_path: Path) -> None:
    import shutil

    url = tmp_path / "s.zarr"
    _create(url)
    first = StoreWriter.reopen(str(url))
    assert StoreWriter.reopen(str(url)) is first  # a worker's next shard: no re-open
    shutil.rmtree(url)
    _create(url, contract=small_contract(codecs={"bev_feature": "fp16"}))  # another store there
    second = StoreWriter.reopen(str(url))
    assert second is not first and second.contract.field("lidar_bev").codec == "fp16"
    arrays, boxes = shard_payload(second, 0)
    second.write_shard(0, arrays, boxes)
    assert 0 not in second.pending_shards()
