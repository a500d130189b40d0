"""Stage one end to end on the tiny synthetic world: store contents, fidelity to a direct
forward, a real 2-worker dask LocalCluster, kill -9 and resume, bad frames, frozen teachers."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from stage_helpers import cache_config, copy_dataset, make_teachers

from bevkd.datasets.dataset import FrameDataset, load_frames
from bevkd.pipeline.config import config_yaml
from bevkd.pipeline.provenance import sha256_file
from bevkd.stages import cache_teacher, teacher_runner
from bevkd.storage.reader import open_store
from bevkd.storage.verify import verify_store

# Every store here also holds the opt-in map-to-BEV field lidar_bev_pre (CMKD's layer).
WITH_PRE = "cache.lidar_bev_pre=true"


@pytest.fixture(scope="module")
def world(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("cache_world")
    root = copy_dataset(tiny_nuscenes, base / "data")
    teachers = make_teachers(root, base / "teachers")
    cfg = cache_config(root, teachers, base / "single.zarr", WITH_PRE)
    result = cache_teacher.run(cfg)
    return {"base": base, "root": root, "teachers": teachers, "cfg": cfg, "result": result}


def _all_arrays(url: str | Path) -> dict[tuple[int, str], np.ndarray]:
    store = open_store(str(url))
    out = {}
    for i in range(len(store.tokens)):
        for name, value in store.read_frame(i).items():
            out[(i, name)] = value
    return out


def test_store_is_complete_verified_and_names_its_teachers(world: dict) -> None:
    cfg, (lidar, label) = world["cfg"], world["teachers"]
    assert verify_store(cfg.store.url).ok
    store = open_store(cfg.store.url)
    names = set(store.contract.field_names)
    assert {
        "lidar_bev",
        "lidar_bev_s2",
        "heatmap",
        "box_regression",
        "boxes",
        "label_bev",
        "label_bev_s2",
    } <= names
    shas = store.provenance["checkpoint_sha256"]
    assert shas == {"lidar": sha256_file(lidar), "label_encoder": sha256_file(label)}
    assert set(store.splits) == {"train", "val", "unlabeled"}
    # label embeddings exist exactly where labels do; teacher fields everywhere
    for i in range(len(store.tokens)):
        frame = store.read_frame(i)
        assert ("label_bev" in frame) == bool(store.has_label[i])
        assert frame["lidar_bev"].shape == store.contract.field("lidar_bev").shape
    assert not store.has_label.all() and store.has_label.any()


def test_cached_fields_equal_a_direct_forward_within_recorded_error(world: dict) -> None:
    cfg = world["cfg"]
    store = open_store(cfg.store.url)
    frames = cache_teacher.select_frames(cfg)
    dataset = FrameDataset(frames, cfg.data, train=False)
    model, _, _ = teacher_runner.load_teacher_once(cfg.cache.lidar_checkpoint, torch.device("cpu"))
    errors = store.attrs["codec_error"]
    for i in (0, len(frames) - 1):
        with torch.no_grad():
            direct = teacher_runner.forward_frozen(model, [dataset[i]], torch.device("cpu"))
        cached = store.read_frame(frames[i].token)
        pairs = {
            "lidar_bev": direct.features["lidar_bev"],
            "lidar_bev_s2": direct.features["lidar_bev_s2"],
            "lidar_bev_pre": direct.features["lidar_bev_pre"],
            "heatmap": torch.sigmoid(direct.head.heatmap),  # stored as probabilities by default
            "box_regression": direct.head.regression,
        }
        for name, value in pairs.items():
            diff = np.abs(cached[name] - value[0].numpy()).max()
            assert diff <= errors[name]["max_abs"] * 1.001 + 1e-6, (name, diff, errors[name])
        assert errors["lidar_bev"]["max_abs"] > 0  # the default codec is lossy: a real bound


def test_lidar_bev_pre_is_the_map_to_bev_output_and_only_written_when_asked(world: dict) -> None:
    """``cache.lidar_bev_pre`` adds the teacher's map-to-BEV output (before its 2D backbone) as
    a ``bev_feature`` of the encoder's channels on the BEV grid, with the kind's codec; off by
    default, so stores and students that never asked for it are unchanged."""
    cfg = world["cfg"]
    spec = open_store(cfg.store.url).contract.field("lidar_bev_pre")
    model, _, _ = teacher_runner.load_teacher_once(cfg.cache.lidar_checkpoint, torch.device("cpu"))
    assert spec.kind == "bev_feature" and spec.codec == "uint8" and not spec.labeled_only
    assert spec.shape == (model.encoder.out_channels, *cfg.grid.bev_shape)
    assert spec.shape[0] != cfg.model.bev_channels  # not lidar_bev's width: its own layer
    assert "lidar_bev_pre" in teacher_runner.wanted_features("lidar", (1,), map_to_bev=True)
    assert "lidar_bev_pre" not in teacher_runner.wanted_features("lidar", (1, 2))
    assert type(cfg.cache)().lidar_bev_pre is False  # opt-in


def test_overlapping_shard_tasks_in_one_process_write_the_same_store(world: dict) -> None:
    # Two shard tasks in flight (the GPU default): forwards take turns on the device lock while
    # the other task loads or writes. Same process, same torch threads: bit-identical.
    cfg = cache_config(
        world["root"], world["teachers"], world["base"] / "overlap.zarr",
        "cache.threads_per_worker=2", WITH_PRE,
    )  # fmt: skip
    cache_teacher.run(cfg)
    single, overlap = _all_arrays(world["cfg"].store.url), _all_arrays(cfg.store.url)
    assert single.keys() == overlap.keys()
    for key, value in single.items():
        np.testing.assert_array_equal(value, overlap[key], err_msg=str(key))


def test_two_worker_local_cluster_writes_the_same_store(world: dict) -> None:
    cfg = cache_config(
        world["root"], world["teachers"], world["base"] / "dask.zarr", "cache.n_workers=2", WITH_PRE
    )
    cache_teacher.run(cfg)
    single, dask = _all_arrays(world["cfg"].store.url), _all_arrays(cfg.store.url)
    assert single.keys() == dask.keys()
    assert open_store(cfg.store.url).tokens == open_store(world["cfg"].store.url).tokens
    # Workers run torch on one thread, the single process on all cores: float sums change order
    # (~1e-7), which can move an 8-bit code by one step. Equal up to the recorded codec error.
    errors = open_store(cfg.store.url).attrs["codec_error"]
    for (i, name), value in single.items():
        tolerance = 2 * errors[name].get("max_abs", 0.0) + 1e-5
        np.testing.assert_allclose(
            value, dask[(i, name)], rtol=0, atol=tolerance, err_msg=str((i, name))
        )


def test_kill_9_mid_run_then_rerun_gives_the_uninterrupted_store(
    world: dict, tmp_path: Path
) -> None:
    url = tmp_path / "killed.zarr"
    cfg = cache_config(world["root"], world["teachers"], url, "store.shard_size=1")
    config = tmp_path / "cache.yaml"
    config.write_text(config_yaml(cfg))
    command = [sys.executable, "-m", "bevkd.pipeline.cli", "cache-teacher", "--config", str(config)]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    marks = url / "shards" / "written"
    deadline = time.monotonic() + 240
    while not any(marks.glob("c.*")):  # a shard's mark object: shards/written/c.<shard>
        assert proc.poll() is None, "cache-teacher ended before the first shard was marked"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert open_store_pending(url) > 0, "the kill came too late to interrupt anything"
    subprocess.run(command, check=True, capture_output=True)
    assert verify_store(str(url)).ok
    # The same command, never killed (a subprocess too: same torch threads, same floats).
    uninterrupted = tmp_path / "whole.zarr"
    subprocess.run([*command, "--store", str(uninterrupted)], check=True, capture_output=True)
    a, b = _all_arrays(url), _all_arrays(uninterrupted)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


def open_store_pending(url: Path) -> int:
    from bevkd.storage.writer import StoreWriter

    return len(StoreWriter.open(str(url)).pending_shards())


def test_a_truncated_point_file_is_skipped_with_its_reason(
    world: dict, tiny_nuscenes: Path, tmp_path: Path
) -> None:
    root = copy_dataset(tiny_nuscenes, tmp_path / "data", own_lidar=True)
    cfg = cache_config(root, world["teachers"], tmp_path / "skip.zarr")
    # A val frame: after the train frames, in a later shard than the first.
    victim = Path(load_frames(cfg, "val")[0].lidar_path)
    assert victim.parent.parent.parent.resolve() == root.resolve()  # the private copy's file
    victim.write_bytes(victim.read_bytes()[:-7])
    result = cache_teacher.run(cfg)
    assert len(result.skipped) == 1
    ((index, reason),) = result.skipped.items()
    assert victim.name in reason and "truncated" in reason
    # The frame's number in the run and its token, not its place within the shard.
    token = open_store(cfg.store.url).tokens[index]
    assert index >= cfg.store.shard_size  # in a later shard, where the two numbers differ
    assert f"frame {index:04d} (token {token[:8]}" in reason
    store = open_store(cfg.store.url)
    assert store.skipped == {index: reason}
    assert verify_store(cfg.store.url).ok
    with pytest.raises(Exception, match="skipped"):
        store.read_frame(index)


def test_a_teacher_in_training_mode_is_refused(world: dict) -> None:
    model, _, _ = teacher_runner.load_teacher_once(
        world["cfg"].cache.lidar_checkpoint, torch.device("cpu")
    )
    frames = cache_teacher.select_frames(world["cfg"])
    sample = FrameDataset(frames, world["cfg"].data)[0]
    model.train()
    try:
        with torch.no_grad(), pytest.raises(RuntimeError, match="eval mode"):
            teacher_runner.forward_frozen(model, [sample], torch.device("cpu"))
    finally:
        model.eval()
    with pytest.raises(RuntimeError, match="no_grad"):
        teacher_runner.forward_frozen(model, [sample], torch.device("cpu"))


def test_a_store_this_config_finished_is_not_cached_again(
    world: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = world["cfg"]
    assert cache_teacher.finished_by(cfg) is not None
    # A rerun loads no teacher and writes nothing.
    monkeypatch.setattr(
        teacher_runner, "load_teacher_once", lambda *a, **k: pytest.fail("loaded a teacher")
    )
    again = cache_teacher.run(cfg)
    assert again.shards_written == 0 and again.frames == world["result"].frames
    assert again.skipped == world["result"].skipped
    # Another config, or other teacher weights, is not "finished": the usual path decides.
    assert (
        cache_teacher.finished_by(
            dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, heatmap_as="logits"))
        )
        is None
    )
    # Same config, but the checkpoint file at its path now holds other weights.
    other = world["base"] / "other_lidar.pt"
    other.write_bytes(Path(cfg.cache.lidar_checkpoint).read_bytes() + b"\0")
    monkeypatch.setattr(teacher_runner, "checkpoint_of", lambda c, name: str(other))
    assert cache_teacher.finished_by(cfg) is None
