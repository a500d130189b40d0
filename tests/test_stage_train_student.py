"""Stage two on the tiny synthetic world: per-epoch augmentation through persistent workers,
the shared micro-batch layout, store checks at start-up, skipped and unlabeled frames, and a
semi-supervised CMKD run that leaves its checkpoints, logs and devkit metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from stage_helpers import cache_config, cached_world, copy_dataset, small_config

from bevkd.datasets.cached import CachedTargets
from bevkd.datasets.dataset import FrameDataset, load_frames
from bevkd.datasets.sampler import EpochBatches
from bevkd.datasets.student_batch import StudentBatch, collate_student
from bevkd.pipeline.errors import BevkdError
from bevkd.stages import cache_teacher, train_student
from bevkd.storage.reader import open_store
from bevkd.storage.schema import ContractMismatch


@pytest.fixture(scope="module")
def world(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("student_world")
    root, teachers, url = cached_world(tiny_nuscenes, base, "cache.splits=[train, val, unlabeled]")
    assert "unlabeled" in open_store(str(url)).splits  # the tiny preset has unlabeled sweeps
    return {"base": base, "root": root, "teachers": teachers, "url": str(url)}


def _student(world: dict[str, Any], out: Path, *extra: str, root: Path | None = None,
             url: str | None = None):  # fmt: skip
    return small_config(
        root or world["root"], "model.kind=camera", "student.recipe=cmkd",
        f"student.store={url or world['url']}", "student.bev_channels=16", "train.epochs=1",
        f"train.out_dir={out}", "train.log_every=1", *extra,
    )  # fmt: skip


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, str]]:
    """``(train, token)`` of every sample a FrameDataset loads in this process."""
    seen: list[tuple[bool, str]] = []
    original = FrameDataset.__getitem__

    def spy(self: FrameDataset, key: Any) -> Any:
        sample = original(self, key)
        seen.append((self.train, sample.token))
        return sample

    monkeypatch.setattr(FrameDataset, "__getitem__", spy)
    return seen


def _in_worker(items: list[Any]) -> tuple[int, StudentBatch]:
    # collate runs in the worker process: its pid tells whether the worker persisted
    return os.getpid(), collate_student(items)


def _epoch(loader: torch.utils.data.DataLoader, sampler: EpochBatches, epoch: int) -> dict:
    sampler.set_epoch(epoch)
    out = {}
    for pid, batch in loader:
        (index,) = batch.indices.tolist()
        out[index] = (pid, batch.bev_aug[0], batch.images[0])
    return out


def _loader(world: dict[str, Any]) -> tuple[torch.utils.data.DataLoader, EpochBatches]:
    cfg = small_config(world["root"])
    samples = FrameDataset(load_frames(cfg, "train"), cfg.data, train=True, seed=3)
    dataset = CachedTargets(samples, world["url"], fields=["heatmap"])
    sampler = EpochBatches(len(dataset), 1, seed=3)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=_in_worker, num_workers=1,
        persistent_workers=True,
    )  # fmt: skip
    return loader, sampler


def test_persistent_workers_draw_each_epochs_augmentation(world: dict[str, Any]) -> None:
    loader, sampler = _loader(world)
    first, second = _epoch(loader, sampler, 0), _epoch(loader, sampler, 1)
    assert sorted(first) == sorted(second) == [0, 1, 2]
    pids = {pid for pid, _, _ in [*first.values(), *second.values()]}
    assert len(pids) == 1 and os.getpid() not in pids  # one worker, kept across epochs
    for index in first:
        assert not torch.equal(first[index][1], second[index][1]), index
    # A fresh loader with the same seed reproduces epoch 1 exactly.
    fresh, fresh_sampler = _loader(world)
    again = _epoch(fresh, fresh_sampler, 1)
    assert list(again) == list(second)  # the same frame order too
    for index, (_, bev_aug, images) in second.items():
        assert torch.equal(again[index][1], bev_aug), index
        assert torch.equal(again[index][2], images), index


def test_epoch_batches_share_one_layout_between_accumulation_and_ranks() -> None:
    n, b = 10, 2
    orders = []
    for epoch in range(3):
        one = EpochBatches(n, b, seed=7, grad_accum=2)
        ranks = [EpochBatches(n, b, seed=7, rank=r, world_size=2) for r in range(2)]
        for s in [one, *ranks]:
            s.set_epoch(epoch)
        assert all(key[0] == epoch for batch in one for key in batch)
        single = [
            {i for batch in list(one)[2 * s : 2 * s + 2] for _, i in batch}
            for s in range(one.steps)
        ]
        rank_batches = [list(r) for r in ranks]
        ddp = [{i for r in rank_batches for _, i in r[s]} for s in range(ranks[0].steps)]
        assert one.steps == ranks[0].steps == 2 and len(one) == 4 and len(ranks[0]) == 2
        assert single == ddp and all(len(step) == 4 for step in single)
        read = set().union(*single)
        assert len(read) == 8  # 10 frames, 4 per step: 2 left over, not read
        assert read.isdisjoint(int(i) for i in one.order()[8:])
        orders.append(tuple(i for batch in one for _, i in batch))
    assert len(set(orders)) == 3
    with pytest.raises(BevkdError, match=r"has 3 frames.*2 per batch x 2 ranks x 1"):
        EpochBatches(3, 2, world_size=2)


def test_a_store_that_does_not_fit_the_student_fails_at_start_up(
    world: dict[str, Any], tmp_path: Path
) -> None:
    # (a) another BEV grid: both grids named
    cfg = _student(world, tmp_path / "grid", "grid.point_cloud_range=[-32, -32, -5, 32, 32, 3]")
    with pytest.raises(ContractMismatch) as grid:
        train_student.run(cfg)
    message = str(grid.value)
    assert "x [-25.6, 25.6)" in message and "64x64" in message, message
    assert "x [-32, 32)" in message and "80x80" in message, message
    # (b) a field the recipe reads that the store lacks: the field and its teacher named
    lidar_only = tmp_path / "lidar_only.zarr"
    cache_teacher.run(
        cache_config(
            world["root"],
            world["teachers"],
            lidar_only,
            "cache.teachers=[lidar]",
            "cache.lidar_bev_scales=[1]",
            "cache.splits=[train]",
        )
    )
    assert "lidar_bev_s2" not in open_store(str(lidar_only)).contract.field_names
    cfg = _student(world, tmp_path / "s2", "distill.bev_scales=[1, 2]", url=str(lidar_only))
    with pytest.raises(ContractMismatch, match=r"'lidar_bev_s2' is missing.*the lidar teacher"):
        train_student.run(cfg)
    # (c) student channels that differ from the store's lidar_bev: both shapes named
    cfg = _student(world, tmp_path / "channels", "student.bev_channels=8")
    with pytest.raises(ContractMismatch) as channels:
        train_student.run(cfg)
    assert "(16, 64, 64)" in str(channels.value) and "(8, 64, 64)" in str(channels.value)
    for name in ("grid", "s2", "channels"):  # refused before any step: nothing written
        assert not (tmp_path / name).exists(), name


def test_frames_the_teacher_skipped_are_left_out(
    world: dict[str, Any], tiny_nuscenes: Path, tmp_path: Path, loaded: list
) -> None:
    root = copy_dataset(tiny_nuscenes, tmp_path / "data", own_lidar=True)
    cfg = small_config(root)
    victim = load_frames(cfg, "train")[0]
    path = Path(victim.lidar_path)
    path.write_bytes(path.read_bytes()[:-7])
    url = tmp_path / "skip.zarr"
    result = cache_teacher.run(
        cache_config(root, world["teachers"], url, "cache.teachers=[lidar]", "cache.splits=[train]")
    )
    assert len(result.skipped) == 1
    cfg = _student(world, tmp_path / "out", root=root, url=str(url))
    said: list[str] = []
    frames = train_student.training_frames(cfg, open_store(str(url)), said.append)
    assert [f.token for f in frames] == [f.token for f in load_frames(cfg, "train")[1:]]
    assert "1 left out" in said[0] and path.name in said[0], said
    run = train_student.run(cfg)
    assert run.steps == 1 and (tmp_path / "out" / "last.pt").is_file()
    trained = {token for train, token in loaded if train}
    assert trained == {f.token for f in frames}  # the skipped frame was never loaded


def test_a_labelled_only_run_never_reads_an_unlabeled_frame(
    world: dict[str, Any], tmp_path: Path, loaded: list
) -> None:
    store = open_store(world["url"])
    train = load_frames(small_config(world["root"]), "train")
    unlabeled = load_frames(small_config(world["root"]), "unlabeled")
    assert unlabeled and all(f.has_label for f in train) and not any(f.has_label for f in unlabeled)
    cfg = _student(world, tmp_path / "out", "train.batch_size=3")  # one step reads all 3
    frames = train_student.training_frames(cfg, store, lambda _: None)
    assert [f.token for f in frames] == [f.token for f in train]
    semi = _student(world, tmp_path / "semi", "student.unlabeled=true")
    frames = train_student.training_frames(semi, store, lambda _: None)
    assert [f.token for f in frames] == [f.token for f in train + unlabeled]
    train_student.run(cfg)
    tokens = {token for _, token in loaded}
    assert {token for train_, token in loaded if train_} == {f.token for f in train}
    assert tokens.isdisjoint(f.token for f in unlabeled)


def test_a_semi_supervised_cmkd_run_leaves_checkpoints_logs_and_metrics(
    world: dict[str, Any], tmp_path: Path, loaded: list
) -> None:
    out = tmp_path / "semi"
    cfg = _student(world, out, "student.unlabeled=true", "distill.bev_scales=[1, 2]")
    result = train_student.run(cfg)
    unlabeled = {f.token for f in load_frames(cfg, "unlabeled")}
    assert unlabeled <= {token for train, token in loaded if train}  # they were trained on
    assert result.steps == 3  # 3 labelled + 3 unlabeled frames, 2 per step
    for name in ("last.pt", "best.pt", "train_log.csv", "loss.png", "eval/metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0
    assert result.metrics["mAP"] == metrics["mAP"]


def test_unlabelled_frames_in_both_the_train_and_unlabeled_lists_train_once(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """KITTI's kitti_train_and_eigen_clean list already holds the eigen_clean raw frames: with
    student.unlabeled they are named once, not twice."""
    import dataclasses

    cfg = small_config(world["root"])
    train = load_frames(cfg, "train")
    raw = [
        dataclasses.replace(f, token=f"raw{i}", has_label=False) for i, f in enumerate(train[:3])
    ]
    lists = {"train": train + raw, "unlabeled": raw}
    monkeypatch.setattr(train_student, "load_frames", lambda _cfg, role: lists[role])
    semi = _student(world, world["base"] / "dedupe", "student.unlabeled=true")
    frames = train_student.training_frames(semi, None, lambda _: None)
    assert [f.token for f in frames] == [f.token for f in train + raw]
