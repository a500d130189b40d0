"""``train.targets=online``: the store's teachers in the loop give the targets the store gives.

- Real teachers (the tiny LiDAR, fusion and label-encoder teachers, random weights), no
  augmentation: every field of the online path equals the cached one within the store's
  recorded codec error, and the boxes row for row.
- The oracle teacher (:mod:`oracle_teacher`, exactly covariant with BEV augmentation): on flips
  and right-angle rotations, the warped cached fields equal the online ones within the codec
  error; on other angles and scales, within the bilinear bound of ``heatmap_bound``; boxes
  match box for box.
- A checkpoint that is not the one the store recorded is refused, naming both hashes.
- ``train-student`` trains with ``train.targets=online``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from oracle_teacher import HEATMAP_PEAK, OracleTeacher, heatmap_bound
from stage_helpers import cache_config, make_teachers, small_config

from bevkd.datasets import budget
from bevkd.datasets.cached import CachedTargets
from bevkd.datasets.dataset import FrameDataset, load_frames
from bevkd.datasets.student_batch import StudentBatch, collate_student
from bevkd.pipeline.config import DataConfig
from bevkd.pipeline.geometry import BEVGrid, bev_transform
from bevkd.stages import online_teacher, train_student
from bevkd.stages.online_teacher import OnlineTeacher, OnlineTeacherError, TeacherViews
from bevkd.storage.fields import (
    bev_feature_field,
    box_regression_field,
    boxes_field,
    heatmap_field,
)
from bevkd.storage.reader import open_store
from bevkd.storage.schema import SCHEMA_VERSION, StoreContract
from bevkd.storage.testing import synthetic_provenance
from bevkd.storage.writer import StoreWriter

FLOAT = 2e-5  # float32 rounding on top of the codec (different batch sizes, float64 -> 32)


@pytest.fixture(scope="module")
def world(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A private copy of the tiny world cached by all three real teachers (random weights)."""
    from stage_helpers import copy_dataset

    from bevkd.models.builders import build_teacher
    from bevkd.models.checkpoint import save_checkpoint
    from bevkd.stages import cache_teacher

    base = tmp_path_factory.mktemp("online_world")
    root = copy_dataset(tiny_nuscenes, base / "data")
    lidar, label = make_teachers(root, base / "teachers")
    fusion_cfg = small_config(root, "model.kind=fusion")
    torch.manual_seed(1)
    fusion = save_checkpoint(base / "teachers" / "fusion.pt", build_teacher(fusion_cfg), fusion_cfg)
    url = base / "store.zarr"
    cache_teacher.run(cache_config(
        root, (lidar, label), url, "cache.teachers=[lidar, fusion, label_encoder]",
        f"cache.fusion_checkpoint={fusion}", "cache.splits=[train, val]", "cache.lidar_bev_pre=true",
    ))  # fmt: skip
    return {"base": base, "root": root, "url": str(url), "lidar": lidar, "fusion": fusion}


def _cfg(world: dict[str, Any], *extra: str) -> Any:
    return small_config(world["root"], "model.kind=camera", "student.recipe=cmkd",
                        f"student.store={world['url']}", *extra)  # fmt: skip


def _both(cached: Any, views: TeacherViews, online: OnlineTeacher, keys: list[Any]) -> tuple[StudentBatch, StudentBatch]:  # fmt: skip
    a = cached.collate([cached[k] for k in keys])
    b = views.collate([views[k] for k in keys])
    b.targets = online(b)
    return a, b


# ------------------------------------------------------------------------------------------
# The real teachers, no augmentation: online == cached within the codec error
# ------------------------------------------------------------------------------------------


def test_online_targets_equal_the_store_within_its_codec_error(world: dict[str, Any]) -> None:
    cfg = _cfg(world)
    store = open_store(world["url"])
    fields = list(store.contract.field_names)
    samples = FrameDataset(load_frames(cfg, "train"), cfg.data, train=False)
    cached = CachedTargets(samples, world["url"], fields=fields)
    online, views = online_teacher.prepare(cfg, store, fields, samples, torch.device("cpu"))
    assert set(views.readers) == {
        "fusion"
    }  # the LiDAR teacher and label encoder read the student's batch
    assert "lidar_bev_pre" in fields  # the opt-in map-to-BEV field, online as cached
    a, b = _both(cached, views, online, list(range(len(samples))))
    error = store.attrs["codec_error"]
    assert set(a.targets.fields) == set(b.targets.fields) and set(a.targets.boxes) == set(
        b.targets.boxes
    )
    for name, value in a.targets.fields.items():
        got = b.targets.fields[name]
        assert got.shape == value.shape and got.dtype == value.dtype, name
        assert torch.equal(a.targets.present[name], b.targets.present[name]), name
        diff = float((got - value).abs().max())
        assert diff <= error[name]["max_abs"] * 1.001 + 1e-7, (name, diff, error[name]["max_abs"])
    for name, rows in a.targets.boxes.items():
        assert torch.equal(a.targets.present[name], b.targets.present[name])
        for x, y in zip(rows, b.targets.boxes[name], strict=True):
            assert x.shape == y.shape and len(x) > 0, name
            torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)


def test_the_label_encoder_runs_on_labelled_frames_only(world: dict[str, Any]) -> None:
    """A frame whose GT the label budget hid gets no label_bev, online as cached."""
    cfg = _cfg(world)
    store = open_store(world["url"])
    train = load_frames(cfg, "train")
    chosen = budget.choose(DataConfig(labeled_fraction=0.5, label_seed=0), train)
    frames, kept = budget.hide_labels(train, chosen), list(chosen.kept)
    samples = FrameDataset(frames, cfg.data, train=False)
    fields = ["label_bev", "lidar_bev"]
    cached = CachedTargets(samples, world["url"], fields=fields)
    online, views = online_teacher.prepare(cfg, store, fields, samples, torch.device("cpu"))
    a, b = _both(cached, views, online, list(range(len(samples))))
    present = b.targets.present["label_bev"]
    assert present.tolist() == [f.token in kept for f in frames] and 0 < int(present.sum()) < len(
        frames
    )
    assert torch.equal(a.targets.present["label_bev"], present)
    assert float(b.targets.fields["label_bev"][~present].abs().max()) == 0.0
    assert float((a.targets.fields["label_bev"] - b.targets.fields["label_bev"]).abs().max()) <= (
        store.attrs["codec_error"]["label_bev"]["max_abs"] * 1.001
    )
    none = online(collate_student([(samples.load(i, np.eye(4)), {}) for i in range(len(frames)) if frames[i].token not in kept]))  # fmt: skip
    assert (
        not none.present["label_bev"].any() and float(none.fields["label_bev"].abs().max()) == 0.0
    )


def test_a_teachers_own_view_has_the_students_bev_aug_and_no_image_aug(
    world: dict[str, Any],
) -> None:
    cfg = _cfg(world, "data.bev_rotation_deg=30", "data.bev_scale=[0.9, 1.1]")
    store = open_store(world["url"])
    samples = FrameDataset(load_frames(cfg, "train"), cfg.data, train=True, seed=5)
    _, views = online_teacher.prepare(cfg, store, ["fused_bev"], samples, torch.device("cpu"))
    plain = FrameDataset(samples.frames, cfg.data, train=False)
    for key in [(0, 0), (1, 0), (0, 1)]:
        sample, own = views[key]
        reference = samples[key]
        torch.testing.assert_close(sample.images, reference.images)  # the student's draw, as before
        assert not torch.equal(sample.bev_aug, torch.eye(4))
        view = own["fusion"]
        torch.testing.assert_close(view.bev_aug, sample.bev_aug)
        torch.testing.assert_close(
            view.points, sample.points
        )  # the same points, moved the same way
        unmoved = plain[key[1]]
        torch.testing.assert_close(view.images, unmoved.images)  # no image augmentation
        torch.testing.assert_close(
            view.cam2ego, sample.bev_aug @ unmoved.cam2ego, atol=1e-5, rtol=1e-5
        )


# ------------------------------------------------------------------------------------------
# The oracle teacher under augmentation
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store of the oracle's outputs on the unaugmented train frames, written with the real
    writer and its default (8-bit) codecs."""
    cfg = _cfg(world)
    grid = cfg.grid.bev_grid
    channels = 16
    teacher = OracleTeacher(grid, len(cfg.classes), channels, cfg.head)
    frames = load_frames(cfg, "train")
    samples = FrameDataset(frames, cfg.data, train=False)
    h, w = grid.shape
    contract = StoreContract(SCHEMA_VERSION, grid, tuple(cfg.classes), (
        bev_feature_field("lidar_bev", channels, h, w),
        bev_feature_field("lidar_bev_s2", 2 * channels, h // 2, w // 2),
        heatmap_field("heatmap", len(cfg.classes), h, w, activation="probabilities"),
        box_regression_field("box_regression", h, w),
        boxes_field("boxes", capacity=cfg.head.max_detections),
    ))  # fmt: skip
    tokens = [f.token for f in frames]
    url = str(tmp_path_factory.mktemp("oracle") / "oracle.zarr")
    writer = StoreWriter.create(url, contract, tokens, [f.scene for f in frames], ["train"] * len(frames),
                                [True] * len(frames), synthetic_provenance(tokens), shard_size=4)  # fmt: skip
    for shard in writer.pending_shards():
        batch = collate_student([(samples[i], {}) for i in writer.shard_frames(shard)])
        out = teacher(batch, decode=True)
        arrays = {
            "lidar_bev": out.features["lidar_bev"].numpy(),
            "lidar_bev_s2": out.features["lidar_bev_s2"].numpy(),
            "heatmap": torch.sigmoid(out.head.heatmap).numpy(),
            "box_regression": out.head.regression.numpy(),
        }
        boxes = {"boxes": [torch.cat([d.boxes, d.scores[:, None], d.labels[:, None].float()], 1).numpy()
                           for d in out.detections]}  # fmt: skip
        writer.write_shard(shard, arrays, boxes)
    writer.finalize()
    store = open_store(url)
    online = OnlineTeacher({"lidar": teacher}, contract.field_names, store.contract)
    return {"cfg": cfg, "url": url, "store": store, "teacher": teacher, "online": online,
            "samples": samples, "grid": grid, "channels": channels}  # fmt: skip


class _Moved(torch.utils.data.Dataset):
    """The frames moved by one fixed ``bev_aug`` (no image augmentation)."""

    def __init__(self, samples: FrameDataset, aug: np.ndarray) -> None:
        self.samples, self.aug, self.frames = samples, aug, samples.frames

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        return self.samples.load(index, self.aug)


def _paths(oracle: dict[str, Any], aug: np.ndarray) -> tuple[StudentBatch, StudentBatch]:
    moved = _Moved(oracle["samples"], aug)
    cached = CachedTargets(moved, oracle["url"])
    keys = list(range(len(moved)))
    a = cached.collate([cached[k] for k in keys])
    b = collate_student([(moved[k], {}) for k in keys])
    b.targets = oracle["online"](b)
    return a, b


def _inside(aug: np.ndarray, grid: BEVGrid, margin: float = 1.0) -> torch.Tensor:
    """(H, W) output cells whose bilinear read stays inside the input grid."""
    inv = np.linalg.inv(aug)
    src = grid.cell_centers() @ inv[:2, :2].T + inv[:2, 3]
    ij = grid.xy_to_ij(src) - 0.5
    ok = (ij[..., 0] >= margin - 1) & (ij[..., 0] <= grid.H - margin) & (ij[..., 1] >= margin - 1) & (ij[..., 1] <= grid.W - margin)  # fmt: skip
    return torch.from_numpy(ok)


def _match_boxes(cached: torch.Tensor, online: torch.Tensor, grid: BEVGrid, score_tol: float,
                 only_near: torch.Tensor | None = None) -> int:  # fmt: skip
    """Every box (centre 2 cells inside the grid, and within 1 cm of a row of ``only_near``
    when given) of either side matched by one of the other: same class, the 9 box values
    within 1e-3 (yaw modulo 2 pi), score within ``score_tol``. Returns the number matched."""

    def inner(rows: torch.Tensor) -> torch.Tensor:
        m = 2 * grid.cell
        x, y = rows[:, 0], rows[:, 1]
        keep = (
            (x > grid.x_min + m)
            & (x < grid.x_max - m)
            & (y > grid.y_min + m)
            & (y < grid.y_max - m)
        )
        if only_near is not None and len(only_near) == 0:
            return rows[:0]
        if only_near is not None:
            keep &= (
                torch.cdist(rows[:, :2].double(), only_near[:, :2].double()).min(1).values < 0.01
            )
        return rows[keep]

    a, b = inner(cached), inner(online)
    assert len(a) == len(b), (len(a), len(b))
    for row in a:
        d = (b[:, :2] - row[:2]).norm(dim=1) + 1e3 * (b[:, 10] != row[10])
        j = int(d.argmin())
        other = b[j]
        assert float(d[j]) < 1e-3 and int(other[10]) == int(row[10]), (row, other)
        assert torch.allclose(other[[2, 3, 4, 5, 7, 8]], row[[2, 3, 4, 5, 7, 8]], atol=1e-3), (
            row,
            other,
        )
        dyaw = float(torch.remainder(other[6] - row[6] + np.pi, 2 * np.pi) - np.pi)
        assert abs(dyaw) < 1e-3 and abs(float(other[9] - row[9])) <= score_tol, (row, other)
    return len(a)


RIGHT_ANGLES = {
    "flip x": bev_transform(flip_x=True),
    "flip y": bev_transform(flip_y=True),
    "flip xy": bev_transform(flip_x=True, flip_y=True),
    "rotate 90": bev_transform(rotation=np.pi / 2),
    "rotate 180": bev_transform(rotation=np.pi),
    "rotate -90": bev_transform(rotation=-np.pi / 2),
    "flip y, rotate 90": bev_transform(rotation=np.pi / 2, flip_y=True),
}


@pytest.mark.parametrize("name", list(RIGHT_ANGLES))
def test_flips_and_right_angles_match_within_the_codec_error(
    oracle: dict[str, Any], name: str
) -> None:
    a, b = _paths(oracle, RIGHT_ANGLES[name])
    error = oracle["store"].attrs["codec_error"]
    for field in ("lidar_bev", "lidar_bev_s2", "heatmap"):
        diff = float((a.targets.fields[field] - b.targets.fields[field]).abs().max())
        assert diff <= error[field]["max_abs"] + FLOAT, (name, field, diff, error[field]["max_abs"])
    regression = (a.targets.fields["box_regression"] - b.targets.fields["box_regression"]).abs()
    for i in range(len(b.tokens)):  # where a box is (see OracleTeacher.region)
        where = oracle["teacher"].region(b.gt_boxes[i])
        diff = float(regression[i][:, where].max())
        assert int(where.sum()) > 0, i
        assert diff <= error["box_regression"]["max_abs"] + FLOAT, (name, i, diff)
    matched = sum(
        _match_boxes(x, y, oracle["grid"], score_tol=1e-5)
        for x, y in zip(a.targets.boxes["boxes"], b.targets.boxes["boxes"], strict=True)
    )
    assert matched >= len(a.tokens)  # the tiny world's frames hold boxes


ANGLES_AND_SCALES = {
    "rotate 30, scale 1.05": bev_transform(rotation=np.deg2rad(30), scale=1.05),
    "rotate -17, scale 0.95, flip y": bev_transform(
        rotation=np.deg2rad(-17), scale=0.95, flip_y=True
    ),
    "rotate 123": bev_transform(rotation=np.deg2rad(123)),
}


@pytest.mark.parametrize("name", list(ANGLES_AND_SCALES))
def test_other_angles_and_scales_match_within_the_resampling_bound(
    oracle: dict[str, Any], name: str
) -> None:
    aug = ANGLES_AND_SCALES[name]
    scale = float(np.sqrt(abs(np.linalg.det(aug[:2, :2]))))
    grid, channels, classes = oracle["grid"], oracle["channels"], len(oracle["cfg"].classes)
    half = BEVGrid(grid.x_min, grid.y_min, grid.x_max, grid.y_max, grid.cell * 2)
    a, b = _paths(oracle, aug)
    error = oracle["store"].attrs["codec_error"]
    worst = 0.0
    for i in range(len(b.tokens)):
        boxes, labels = b.gt_boxes[i], b.gt_labels[i]  # the moved boxes: sigma in cells as compared
        for field, g, c, peak in (("heatmap", grid, classes, HEATMAP_PEAK), ("lidar_bev", grid, channels, 1.0),
                                  ("lidar_bev_s2", half, 2 * channels, 1.0)):  # fmt: skip
            bound = (
                heatmap_bound(boxes, labels, g, c, classes, peak, scale)
                + error[field]["max_abs"]
                + FLOAT
            )
            inside = _inside(aug, g)
            diff = (a.targets.fields[field][i] - b.targets.fields[field][i]).abs().double()
            excess = (diff - bound)[:, inside]
            assert float(excess.max()) <= 0, (name, field, float(excess.max()))
            worst = max(worst, float(diff[:, inside].max()))
        core = oracle["teacher"].region_core(boxes, margin_cells=2.5) & _inside(aug, grid)
        reg = (a.targets.fields["box_regression"][i] - b.targets.fields["box_regression"][i])[
            :, core
        ]
        assert int(core.sum()) > 0
        assert float(reg.abs().max()) <= 2 * error["box_regression"]["max_abs"] + 1e-4, (
            name,
            float(reg.abs().max()),
        )
    assert worst > 1e-3  # resampling is not exact here: the comparison is not vacuous
    # Boxes: the decoder takes the heatmap's local maxima cell by cell, so where two objects'
    # gaussians merge, resampling can make or break a peak. Around isolated objects there is
    # one peak, in the object's own regression region: the same box both ways, its score (the
    # heatmap at the peak) within the bound.
    matched = 0
    for x, y, boxes, labels in zip(a.targets.boxes["boxes"], b.targets.boxes["boxes"], b.gt_boxes, b.gt_labels, strict=True):  # fmt: skip
        tol = float(heatmap_bound(boxes, labels, grid, classes, classes, HEATMAP_PEAK, scale).max())
        matched += _match_boxes(
            x, y, grid, tol + 1e-4, only_near=boxes[_isolated(boxes, labels, grid)]
        )
    assert matched >= 3, matched


def _isolated(boxes: torch.Tensor, labels: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """(N,) boxes whose peak no other box disturbs: every other box is more than its
    regression reach plus 2 cells away, and one of the same class more than 3 (sigma_i +
    sigma_j) away (two gaussians that close have separate maxima)."""
    from oracle_teacher import REGION_SIGMAS, SIGMA_PER_SIZE

    sigma = SIGMA_PER_SIZE * torch.sqrt(boxes[:, 3] * boxes[:, 4]).double()
    d = torch.cdist(boxes[:, :2].double(), boxes[:, :2].double())
    d.fill_diagonal_(float("inf"))
    clear = d > REGION_SIGMAS * sigma[None, :] + 2 * grid.cell
    same = labels[:, None] == labels[None, :]
    apart = ~same | (d > 3 * (sigma[:, None] + sigma[None, :]))
    return (clear & apart).all(1)


def test_the_resampling_bound_catches_a_wrong_rotation(oracle: dict[str, Any]) -> None:
    """The bound is tight enough to fail: cached targets warped by +30 degrees against an
    online teacher run on input rotated by -30 degrees break it."""
    plus, minus = bev_transform(rotation=np.deg2rad(30)), bev_transform(rotation=np.deg2rad(-30))
    a, _ = _paths(oracle, plus)
    _, b = _paths(oracle, minus)
    grid, classes = oracle["grid"], len(oracle["cfg"].classes)
    exceeded = 0.0
    for i in range(len(b.tokens)):
        bound = (
            heatmap_bound(b.gt_boxes[i], b.gt_labels[i], grid, classes, classes, HEATMAP_PEAK)
            + 0.01
        )
        diff = (a.targets.fields["heatmap"][i] - b.targets.fields["heatmap"][i]).abs().double()
        exceeded = max(exceeded, float((diff - bound)[:, _inside(plus, grid)].max()))
    assert exceeded > 0.05


# ------------------------------------------------------------------------------------------
# Checkpoints, and a training run
# ------------------------------------------------------------------------------------------


def test_a_checkpoint_the_store_did_not_record_is_refused(world: dict[str, Any]) -> None:
    from bevkd.models.builders import build_teacher
    from bevkd.models.checkpoint import save_checkpoint
    from bevkd.pipeline.provenance import sha256_file

    cfg = small_config(world["root"], "model.kind=lidar")
    torch.manual_seed(7)
    other = save_checkpoint(world["base"] / "other_lidar.pt", build_teacher(cfg), cfg)
    store = open_store(world["url"])
    student = _cfg(world, f"student.teacher_checkpoints=[[lidar, {other}]]")
    samples = FrameDataset(load_frames(student, "train"), student.data, train=True)
    with pytest.raises(OnlineTeacherError) as err:
        online_teacher.prepare(student, store, ["lidar_bev"], samples, torch.device("cpu"))
    message = str(err.value)
    assert sha256_file(other) in message and sha256_file(world["lidar"]) in message
    assert str(other) in message and "online teacher lidar" in message
    gone = _cfg(world, "student.teacher_checkpoints=[[lidar, /nowhere/lidar.pt]]")
    with pytest.raises(OnlineTeacherError, match=r"no checkpoint file /nowhere/lidar\.pt"):
        online_teacher.prepare(gone, store, ["lidar_bev"], samples, torch.device("cpu"))
    # the same file elsewhere is accepted: the hash decides, not the path
    moved = world["base"] / "moved_lidar.pt"
    moved.write_bytes(Path(world["lidar"]).read_bytes())
    ok = _cfg(world, f"student.teacher_checkpoints=[[lidar, {moved}]]")
    online, _ = online_teacher.prepare(ok, store, ["lidar_bev"], samples, torch.device("cpu"))
    assert set(online.teachers) == {"lidar"}


def test_train_student_trains_with_online_targets(world: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "online"
    cfg = _cfg(world, "student.bev_channels=16", "train.epochs=1", f"train.out_dir={out}",
               "train.log_every=1", "train.targets=online", "model.kind=camera_sim",
               "student.recipe=simdistill", "distill.cmd_field=fusion_lidar_bev")  # fmt: skip
    calls = []
    original = OnlineTeacher.__call__

    def counting(self: OnlineTeacher, batch: Any) -> Any:
        calls.append(batch.size)
        return original(self, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(OnlineTeacher, "__call__", counting)
        result = train_student.run(cfg)
    assert result.steps > 0 and len(calls) == result.steps
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert not any("teacher" in k or k.startswith("online") for k in state.get("objective", {}))
    rows = (out / "train_log.csv").read_text().splitlines()
    assert "fused" in rows[0] and len(rows) > 1
    assert json.loads((out / "eval" / "metrics.json").read_text())


def test_online_mode_is_a_config_choice() -> None:
    from bevkd.pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"train\.targets"):
        load_config(None, ["train.targets=live"])
    assert dataclasses.asdict(load_config(None, []).train)["targets"] == "cached"


def test_online_targets_are_masked_to_the_cameras_as_the_cached_ones(world: dict[str, Any]) -> None:
    """data.fov_only: a student of the front camera; its online targets are the cached targets
    masked to that camera's view (within the codec error), cells and boxes alike."""
    cfg = _cfg(world, "data.fov_only=true", "data.cameras=[CAM_FRONT]")
    store = open_store(world["url"])
    fields = ["lidar_bev", "heatmap", "box_regression", "boxes"]
    samples = FrameDataset(load_frames(cfg, "train"), cfg.data, train=False)
    cached = CachedTargets(samples, world["url"], fields=fields, fov_only=True)
    online, views = online_teacher.prepare(cfg, store, fields, samples, torch.device("cpu"))
    assert online.fov_only
    a, b = _both(cached, views, online, list(range(len(samples))))
    error = store.attrs["codec_error"]
    heat = a.targets.fields["heatmap"]
    assert (heat == heat.flatten(2).amin(-1)[..., None, None]).any()  # masked cells exist
    for name, value in a.targets.fields.items():
        diff = float((b.targets.fields[name] - value).abs().max())
        assert diff <= error[name]["max_abs"] * 1.001 + 1e-7, (name, diff)
    kept = 0
    for x, y in zip(a.targets.boxes["boxes"], b.targets.boxes["boxes"], strict=True):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)
        kept += len(x)
    unmasked = CachedTargets(samples, world["url"], fields=["boxes"])
    every = sum(len(unmasked[i][1]["boxes"]) for i in range(len(samples)))
    assert 0 < kept < every  # some of the teacher's boxes lie outside the front camera's view
