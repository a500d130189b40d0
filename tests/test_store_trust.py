"""A store never lies (issue 12): a resume never mixes teachers, settings or code; the cache
config cannot contradict its teachers; bad point files are skipped and can be retried; a
repair rewrites what verify finds bad; one clear line for a wrong store location."""

from __future__ import annotations

import dataclasses
import errno
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from stage_helpers import cache_config, copy_dataset, make_teachers, small_config

from bevkd.datasets.dataset import load_frames
from bevkd.pipeline.config import to_dict
from bevkd.pipeline.errors import BevkdError
from bevkd.stages import cache_teacher, teacher_runner
from bevkd.storage.reader import open_store
from bevkd.storage.schema import StoreError
from bevkd.storage.verify import verify_store


@pytest.fixture(scope="module")
def world(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A private dataset copy, tiny teachers, other LiDAR weights of the same architecture,
    and a finished store (the reference every rewrite must reproduce)."""
    base = tmp_path_factory.mktemp("trust")
    root = copy_dataset(tiny_nuscenes, base / "data", own_lidar=True)
    teachers = make_teachers(root, base / "teachers")
    from bevkd.models.builders import build_teacher
    from bevkd.models.checkpoint import save_checkpoint

    torch.manual_seed(1)
    lidar_cfg = small_config(root, "model.kind=lidar")
    other = save_checkpoint(
        base / "teachers" / "other_lidar.pt", build_teacher(lidar_cfg), lidar_cfg
    )
    cfg = cache_config(root, teachers, base / "reference.zarr")
    cache_teacher.run(cfg)
    return {"base": base, "root": root, "teachers": teachers, "other": other, "cfg": cfg}


def _values(url: str | Path) -> dict[tuple[int, str], np.ndarray]:
    store = open_store(str(url))
    return {
        (i, name): value
        for i in range(len(store)) if i not in store.skipped
        for name, value in store.read_frame(i).items()
    }  # fmt: skip


def _assert_same_store(url: str | Path, reference: str | Path) -> None:
    a, b = _values(url), _values(reference)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


def _half_written(cfg, shards: int = 1) -> None:
    """A store whose first ``shards`` shards are written and the rest are not (a killed run)."""
    frames = cache_teacher.select_frames(cfg)
    _, tasks = cache_teacher.prepare_store(cfg, frames)
    for shard_id, shard_frames, first in tasks[:shards]:
        cache_teacher.shard_task(to_dict(cfg), cfg.store.url, shard_id, shard_frames, first, None)


# -- 1. a resume never mixes two stores -------------------------------------------------------


def test_resume_with_other_teacher_weights_is_refused_naming_the_checkpoints(
    world: dict, tmp_path: Path
) -> None:
    cfg = cache_config(world["root"], world["teachers"], tmp_path / "mixed.zarr")
    _half_written(cfg)
    made = dict(open_store(cfg.store.url).provenance)
    other = dataclasses.replace(
        cfg, cache=dataclasses.replace(cfg.cache, lidar_checkpoint=str(world["other"]))
    )
    with pytest.raises(StoreError, match="cannot resume") as caught:
        cache_teacher.run(other)
    message = str(caught.value)
    assert "teacher lidar" in message and str(world["other"]) in message
    assert "cache.lidar_checkpoint" in message  # the setting that differs, by name
    store = open_store(cfg.store.url)
    assert store.provenance == made  # nothing of the other run was recorded ...
    assert store.written_shards().sum() == 1  # ... or written
    # With the store's own teacher the same store resumes, and ends as an uninterrupted run.
    cache_teacher.run(cfg)
    _assert_same_store(cfg.store.url, world["cfg"].store.url)


def test_resume_with_other_settings_fewer_teachers_or_other_code_is_refused(
    world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = cache_config(world["root"], world["teachers"], tmp_path / "other.zarr")
    _half_written(cfg)
    logits = dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, heatmap_as="logits"))
    with pytest.raises(StoreError, match=r"cache\.heatmap_as: the store has 'probabilities'"):
        cache_teacher.run(logits)
    fewer = dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, teachers=("lidar",)))
    with pytest.raises(StoreError) as caught:
        cache_teacher.run(fewer)
    # said the right way round: what made the store, then what this run has
    assert "the store was made by ['label_encoder', 'lidar'], this run has ['lidar']" in str(
        caught.value
    )
    from bevkd.pipeline import provenance

    real = provenance.code_version()
    monkeypatch.setattr(provenance, "code_version", lambda: {**real, "commit": "0123abcd"})
    with pytest.raises(
        StoreError, match=r"code: the store was written by bevkd at .*this is 0123abcd"
    ):
        cache_teacher.run(cfg)
    monkeypatch.undo()
    # Settings that only change how the run goes (retries, workers, threads) may differ.
    retries = dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, retries=5))
    cache_teacher.run(retries)
    assert verify_store(cfg.store.url).ok


def test_a_cache_config_contradicting_its_teacher_is_refused_before_writing(
    world: dict, tmp_path: Path
) -> None:
    url = tmp_path / "wide.zarr"
    cfg = cache_config(
        world["root"], world["teachers"], url,
        "grid.point_cloud_range=[-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]",
    )  # fmt: skip
    with pytest.raises(BevkdError, match="contradicts the teacher") as caught:
        cache_teacher.run(cfg)
    assert "grid.point_cloud_range" in str(caught.value)
    assert str(world["teachers"][0]) in str(caught.value)
    assert not url.exists()
    sweeps = cache_config(world["root"], world["teachers"], url, "data.lidar_sweeps=3")
    with pytest.raises(BevkdError, match=r"data\.lidar_sweeps is 3 in the cache config but 1"):
        cache_teacher.run(sweeps)


# -- 3. non-finite and empty point files ------------------------------------------------------


@pytest.mark.parametrize(
    "damage, said",
    [
        ("nan", "non-finite values (NaN or inf) in 1 of"),
        ("inf", "non-finite values (NaN or inf) in 1 of"),
        ("empty", "is empty (0 bytes, no points)"),
    ],
)
def test_bad_point_files_are_skipped_with_the_file_named_then_retried_once_fixed(
    world: dict, tiny_nuscenes: Path, tmp_path: Path, damage: str, said: str
) -> None:
    root = copy_dataset(tiny_nuscenes, tmp_path / "data", own_lidar=True)
    cfg = cache_config(root, world["teachers"], tmp_path / "bad.zarr")
    victim = Path(load_frames(cfg, "val")[0].lidar_path)
    good = victim.read_bytes()
    if damage == "empty":
        victim.write_bytes(b"")
    else:
        points = np.frombuffer(good, dtype="<f4").reshape(-1, 5).copy()
        points[3, 1] = np.nan if damage == "nan" else -np.inf
        victim.write_bytes(points.tobytes())
    result = cache_teacher.run(cfg)
    ((index, reason),) = result.skipped.items()
    assert str(victim) in reason and said in reason
    assert open_store(cfg.store.url).finalized  # the frame is skipped, not poisoning the store
    assert verify_store(cfg.store.url).ok
    # Fix the file; a plain rerun leaves the finished store alone, --retry-skipped redoes it.
    victim.write_bytes(good)
    assert cache_teacher.run(cfg).skipped == {index: reason}
    again = cache_teacher.run(cfg, retry_skipped=True)
    assert again.skipped == {} and again.shards_written == 1
    assert open_store(cfg.store.url).finalized and verify_store(cfg.store.url).ok
    _assert_same_store(cfg.store.url, world["cfg"].store.url)


# -- 4. repair ---------------------------------------------------------------------------------


def test_repair_rewrites_a_corrupt_chunk_a_lost_index_chunk_and_lost_metadata(
    world: dict, tmp_path: Path
) -> None:
    url = tmp_path / "repair.zarr"
    shutil.copytree(world["cfg"].store.url, url)
    cfg = dataclasses.replace(
        world["cfg"], store=dataclasses.replace(world["cfg"].store, url=str(url))
    )
    chunk = url / "fields" / "lidar_bev" / "data" / "c.3.0.0.0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    (url / "index" / "has_label" / "c.0").unlink()
    (url / "fields" / "heatmap" / "nan_count" / "zarr.json").unlink()
    report = verify_store(str(url))
    assert not report.ok and not report.index_ok
    assert 3 in report.bad_frames and report.bad_shards == {1}
    assert "fields/heatmap/nan_count" in report.bad_metadata
    # A plain rerun of a finished store does not look inside; --repair does, and mends it.
    cache_teacher.run(cfg, repair=True)
    assert verify_store(str(url)).ok
    assert open_store(str(url)).finalized
    _assert_same_store(url, world["cfg"].store.url)


def test_a_store_that_cannot_finalize_for_nan_is_finished_in_place_by_repair(
    world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = cache_config(world["root"], world["teachers"], tmp_path / "nan.zarr")
    real = teacher_runner.forward_shard

    def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
        arrays, boxes, seconds = real(*args, **kwargs)
        arrays["lidar_bev"][0, 0, 0, 0] = np.nan  # a teacher that once gave NaN
        return arrays, boxes, seconds

    monkeypatch.setattr(teacher_runner, "forward_shard", poisoned)
    with pytest.raises(StoreError, match=r"NaN values in lidar_bev.*--repair"):
        cache_teacher.run(cfg)
    monkeypatch.undo()
    with pytest.raises(StoreError, match="NaN"):  # a plain rerun cannot finish it ...
        cache_teacher.run(cfg)
    cache_teacher.run(cfg, repair=True)  # ... a repair rewrites the NaN shards
    assert open_store(cfg.store.url).finalized and verify_store(cfg.store.url).ok
    _assert_same_store(cfg.store.url, world["cfg"].store.url)


def test_repair_refuses_a_store_whose_attrs_were_edited(world: dict, tmp_path: Path) -> None:
    url = tmp_path / "edited.zarr"
    shutil.copytree(world["cfg"].store.url, url)
    meta = url / "zarr.json"
    meta.write_text(meta.read_text().replace('"shard_size": 2', '"shard_size": 3'))
    cfg = dataclasses.replace(
        world["cfg"], store=dataclasses.replace(world["cfg"].store, url=str(url))
    )
    with pytest.raises(StoreError, match="root attrs were changed"):
        cache_teacher.run(cfg, repair=True)


# -- errors that must be one clear line --------------------------------------------------------


@pytest.fixture
def no_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        pytest.fail("a teacher was loaded before the store location was checked")

    monkeypatch.setattr(teacher_runner, "load_teacher_once", fail)


def test_a_store_path_that_is_a_file_fails_before_any_teacher_loads(
    world: dict, tmp_path: Path, no_teacher: None
) -> None:
    path = tmp_path / "store.zarr"
    path.write_text("not a store")
    cfg = cache_config(world["root"], world["teachers"], path)
    with pytest.raises(StoreError, match="is a file, not a store directory"):
        cache_teacher.run(cfg)


def test_a_read_only_location_fails_before_any_teacher_loads(
    world: dict, tmp_path: Path, no_teacher: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    cfg = cache_config(world["root"], world["teachers"], tmp_path / "ro" / "store.zarr")
    with pytest.raises(StoreError, match=r"cannot write under .*Read-only file system"):
        cache_teacher.run(cfg)


def test_a_second_concurrent_cache_teacher_is_told_another_writer_holds_the_store(
    world: dict, tmp_path: Path
) -> None:
    from bevkd.storage.writer import writer_lock

    cfg = cache_config(world["root"], world["teachers"], tmp_path / "busy.zarr")
    with (
        writer_lock(cfg.store.url),  # the first run
        pytest.raises(StoreError, match=r"being written by another cache-teacher \(pid"),
    ):
        cache_teacher.run(cfg)
    cache_teacher.run(cfg)  # the first is gone: the store is free again


def test_a_shard_another_run_wrote_first_is_skipped_not_an_error(
    world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bevkd.storage.writer import StoreWriter

    cfg = cache_config(world["root"], world["teachers"], tmp_path / "race.zarr")
    _half_written(cfg)
    shard_id, frames, first = 0, cache_teacher.select_frames(cfg)[:2], 0
    # Both runs saw shard 0 unwritten (the first look); the other one marked it first.
    real, looks = StoreWriter.is_written, []

    def first_look_unwritten(self: StoreWriter, shard: int) -> bool:
        looks.append(shard)
        return False if len(looks) == 1 else real(self, shard)

    monkeypatch.setattr(StoreWriter, "is_written", first_look_unwritten)
    written, _ = cache_teacher.shard_task(
        to_dict(cfg), cfg.store.url, shard_id, frames, first, None
    )
    assert written == 0 and len(looks) == 2  # it got as far as the write, which found the mark


def test_an_unreachable_s3_store_is_one_line(s3_server: dict) -> None:
    """No credentials, and a dead endpoint: one line on stderr, exit 2, no traceback."""
    import os
    import socket

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    bevkd = [sys.executable, "-m", "bevkd.pipeline.cli", "store", "info", "s3://bevkd-test/x.zarr"]
    nocreds = subprocess.run(
        [*bevkd, "--endpoint", s3_server["endpoint_url"]], capture_output=True, text=True, env=env
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once closed
    unreachable = subprocess.run(
        [*bevkd, "--endpoint", dead, "--storage-options", '{"key": "a", "secret": "b"}'],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    for result, cause in (
        (nocreds, "NoCredentialsError"),
        (unreachable, "EndpointConnectionError"),
    ):
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert (
            "cannot reach it" in lines[0]
            and cause in lines[0]
            and "s3://bevkd-test/x.zarr" in lines[0]
        )
