"""LabelDistill label encoder: rasterisation, network shapes, and training through a frozen
LiDAR teacher (gradients reach the encoder, the teacher's BatchNorm statistics do not move)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from shapely.geometry import Point, Polygon

from bevkd.datasets.frame import Batch
from bevkd.models.bev_backbone import SECONDFPN, SECONDBackbone
from bevkd.models.builders import build_teacher
from bevkd.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    load_teacher,
    save_checkpoint,
)
from bevkd.models.head import CenterHead
from bevkd.models.label_encoder import LabelEncoder, LabelEncoderTeacher, rasterize_labels
from bevkd.models.lidar_teacher import LidarTeacher
from bevkd.models.pillar_encoder import PillarEncoder
from bevkd.pipeline.config import Config, ConfigError, GridConfig, HeadConfig, to_dict
from bevkd.pipeline.geometry import NUSCENES_CLASSES, BEVGrid
from bevkd.pipeline.provenance import sha256_file
from bevkd.stages import teacher_runner

GRID = BEVGrid(-8.0, -8.0, 8.0, 8.0, 0.5)
K = 10


def _expected_cells(box: list[float]) -> set[tuple[int, int]]:
    """Cells whose centre the half-size rotated rectangle covers, by shapely."""
    x, y, _, length, width, _, yaw = box[:7]
    c, s = math.cos(yaw), math.sin(yaw)
    corners = [(sx * length / 4, sy * width / 4) for sx, sy in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    poly = Polygon([(x + c * a - s * b, y + s * a + c * b) for a, b in corners])
    centres = GRID.cell_centers()
    return {
        (r, col)
        for r in range(GRID.H)
        for col in range(GRID.W)
        if poly.covers(Point(*centres[r, col]))
    }


def test_rotated_box_covers_expected_cells_with_one_hot() -> None:
    big = [2.1, -1.3, 0.4, 6.0, 3.0, 1.7, 0.6, 1.5, -0.5]
    small = [-5.4, 4.1, 0.1, 0.3, 0.3, 1.0, 1.0, float("nan"), float("nan")]  # NaN velocity
    outside = [20.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0]
    ignored = [-3.0, -3.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0]
    boxes = torch.tensor([big, small, outside, ignored])
    labels = torch.tensor([3, 8, 0, -1])
    raster = rasterize_labels(
        [boxes, torch.zeros(0, 9)], [labels, torch.zeros(0, dtype=torch.long)], GRID, K
    )
    assert raster.shape == (2, 9 + K, GRID.H, GRID.W)

    covered = {tuple(rc) for rc in (raster[0].abs().sum(0) > 0).nonzero().tolist()}
    big_cells = _expected_cells(big)
    small_cell = (math.floor((4.1 + 8) / 0.5), math.floor((-5.4 + 8) / 0.5))
    assert len(big_cells) > 10 and _expected_cells(small) == set()  # too small for any centre
    assert covered == big_cells | {small_cell}

    rows, cols = zip(*sorted(big_cells), strict=True)
    np.testing.assert_allclose(
        raster[0, :9, rows, cols].T.numpy(), np.tile(big, (len(rows), 1)), rtol=1e-6
    )
    one_hot = np.zeros(K)
    one_hot[3] = 1
    np.testing.assert_array_equal(
        raster[0, 9:, rows, cols].T.numpy(), np.tile(one_hot, (len(rows), 1))
    )
    r, c = small_cell
    assert raster[0, 9 + 8, r, c] == 1 and raster[0, 9:, r, c].sum() == 1
    assert raster[0, 7, r, c] == 0 and raster[0, 8, r, c] == 0  # NaN velocity -> 0
    assert raster[1].abs().sum() == 0  # a frame without labels rasterises to zeros


def test_later_box_wins_where_boxes_overlap() -> None:
    first = [0.0, 0.0, 0.0, 8.0, 8.0, 1.0, 0.0, 0.0, 0.0]
    second = [1.0, 0.0, 0.0, 4.0, 4.0, 1.0, 0.0, 0.0, 0.0]
    raster = rasterize_labels([torch.tensor([first, second])], [torch.tensor([0, 1])], GRID, K)[0]
    for r, c in _expected_cells(second):
        assert raster[9 + 1, r, c] == 1 and raster[9, r, c] == 0 and raster[0, r, c] == 1.0
    only_first = _expected_cells(first) - _expected_cells(second)
    assert only_first and all(raster[9, r, c] == 1 for r, c in only_first)


def test_rasterize_rejects_class_ids_past_the_class_list() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        rasterize_labels([torch.zeros(1, 9)], [torch.tensor([K])], GRID, K)


def test_label_encoder_output_names_and_shapes() -> None:
    net = LabelEncoder(num_classes=K, channels=16, lidar_channels=24, lidar_s2_channels=40)
    boxes = torch.tensor([[2.1, -1.3, 0.4, 6.0, 3.0, 1.7, 0.6, 1.5, -0.5]])
    raster = rasterize_labels([boxes, boxes], [torch.tensor([3]), torch.tensor([4])], GRID, K)
    out = net(raster)
    assert set(out) == {"lidar_bev", "lidar_bev_s2"}
    assert out["lidar_bev"].shape == (2, 24, GRID.H, GRID.W)
    assert out["lidar_bev_s2"].shape == (2, 40, GRID.H // 2, GRID.W // 2)
    assert (out["lidar_bev"] >= 0).all()  # LN + ReLU, like the teacher's post-ReLU maps
    # The class one-hot matters: same box, different class, different features.
    assert not torch.allclose(out["lidar_bev"][0], out["lidar_bev"][1])


def _frozen_lidar_teacher(grid_cfg, bev_channels: int) -> LidarTeacher:
    """A randomly initialised LiDAR teacher whose BatchNorm statistics are not the defaults,
    so a stray update would show."""
    encoder = PillarEncoder(
        5, grid_cfg.point_cloud_range, grid_cfg.voxel_size, grid_cfg.bev_stride, (8, 16, 16)
    )
    neck = SECONDFPN(bev_channels, bev_channels)
    teacher = LidarTeacher(
        grid_cfg,
        HeadConfig(),
        NUSCENES_CLASSES,
        encoder,
        SECONDBackbone(encoder.out_channels, bev_channels, (1, 1)),
        neck,
        CenterHead(neck.out_channels, K, 16),
    )
    for module in teacher.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    # A freshly initialised head barely responds to its input (its outputs sit at the bias);
    # a trained one is confident. Larger last layers stand in for that, so inverting
    # neck∘head is learnable within a few steps.
    with torch.no_grad():
        teacher.head.heatmap[-1].weight.mul_(10.0)
        teacher.head.regression["size"][-1].weight.mul_(10.0)
    return teacher


def test_label_encoder_overfits_one_batch_through_frozen_teacher() -> None:
    torch.manual_seed(0)
    grid_cfg = GridConfig(
        point_cloud_range=(-12.8, -12.8, -2.0, 12.8, 12.8, 4.0),
        voxel_size=(0.2, 0.2, 0.25),
        bev_stride=4,
    )
    grid = BEVGrid.from_range(grid_cfg.point_cloud_range, grid_cfg.bev_cell)
    teacher = _frozen_lidar_teacher(grid_cfg, bev_channels=16)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    model = LabelEncoderTeacher(LabelEncoder(K, 16, 16, 32), teacher, grid)
    model.train()
    assert model.encoder.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())

    boxes = [
        torch.tensor(
            [
                [4.0, 1.0, 0.0, 4.2, 1.9, 1.6, 0.3, 1.0, 0.0],
                [-3.0, -5.0, 0.0, 0.7, 0.7, 1.8, 0.0, 0.0, 0.0],
            ]
        ),
        torch.tensor([[-6.0, 6.0, 0.0, 10.0, 2.5, 3.5, 2.0, 0.0, 0.0]]),
    ]
    labels = [torch.tensor([0, 8]), torch.tensor([3])]
    batch = _label_batch(boxes, labels)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(30):
        out = model(batch)
        loss = sum(model.loss(out, batch).values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(p.grad is None for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value, frozen[name], msg=f"frozen teacher {name} changed")

    model.eval()
    out = model(batch, decode=True)
    assert set(out.features) == {"label_bev", "label_bev_s2"}
    assert out.features["label_bev"].shape == (2, 16, *grid.shape)
    assert out.features["label_bev_s2"].shape == (2, 32, grid.H // 2, grid.W // 2)
    assert len(out.detections) == 2


def _small_cfg(**model: object) -> Config:
    base = Config()
    grid = GridConfig(
        point_cloud_range=(-12.8, -12.8, -2.0, 12.8, 12.8, 4.0),
        voxel_size=(0.2, 0.2, 0.25),
        bev_stride=4,
    )
    sizes = dict(
        lidar_encoder="pillar",
        sparse_channels=(8, 16, 16),
        bev_channels=16,
        bev_backbone_layers=(1, 1),
        head_channels=16,
    )
    return dataclasses.replace(
        base, grid=grid, model=dataclasses.replace(base.model, **{**sizes, **model})
    )


def test_builder_wraps_the_checkpointed_lidar_teacher(tmp_path) -> None:
    torch.manual_seed(0)
    lidar_cfg = _small_cfg(kind="lidar")
    lidar = build_teacher(lidar_cfg)
    lidar_path = save_checkpoint(tmp_path / "lidar.pt", lidar, lidar_cfg)
    label_cfg = _small_cfg(
        kind="label_encoder", checkpoint=str(lidar_path), label_encoder_channels=8
    )
    model = build_teacher(label_cfg)
    assert isinstance(model, LabelEncoderTeacher)
    for name, value in lidar.state_dict().items():
        torch.testing.assert_close(model.lidar_teacher.state_dict()[name], value)

    # Encoder features have the names and shapes of the teacher's own BEV features.
    points = torch.cat([torch.zeros(50, 1), torch.rand(50, 5) * 4.0], dim=1)
    lidar_feats = lidar.eval().bev_features(points, 1)
    boxes, labels = (
        [torch.tensor([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0]])],
        [torch.tensor([0])],
    )
    label_feats = model.encoder(rasterize_labels(boxes, labels, model.grid, len(label_cfg.classes)))
    assert {k: v.shape for k, v in label_feats.items()} == {
        k: v.shape for k, v in lidar_feats.items()
    }

    # The trained label encoder's checkpoint rebuilds through the table, teacher included.
    label_path = save_checkpoint(tmp_path / "label.pt", model, label_cfg)
    loaded, loaded_cfg, _ = load_teacher(label_path)
    assert isinstance(loaded, LabelEncoderTeacher) and loaded_cfg == label_cfg
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)

    with pytest.raises(ConfigError, match=r"model\.checkpoint is empty"):
        build_teacher(_small_cfg(kind="label_encoder"))
    other_grid = dataclasses.replace(
        label_cfg, grid=dataclasses.replace(label_cfg.grid, bev_stride=2)
    )
    with pytest.raises(ConfigError, match="grid of this config"):
        build_teacher(other_grid)


def _label_batch(
    gt_boxes: list[torch.Tensor] | None = None, gt_labels: list[torch.Tensor] | None = None
) -> Batch:
    """Two labelled frames (one box each unless given), no images or points."""
    return Batch(
        tokens=["a", "b"],
        indices=torch.arange(2),
        has_label=torch.tensor([True, True]),
        images=torch.zeros(2, 1, 3, 8, 8),
        cam2img=torch.eye(4).expand(2, 1, 4, 4),
        cam2ego=torch.eye(4).expand(2, 1, 4, 4),
        img_aug=torch.eye(4).expand(2, 1, 4, 4),
        bev_aug=torch.eye(4).expand(2, 4, 4),
        points=torch.zeros(0, 6),
        gt_boxes=gt_boxes
        or [
            torch.tensor([[4.0, 1.0, 0.0, 4.2, 1.9, 1.6, 0.3, 1.0, 0.0]]),
            torch.tensor([[-6.0, 6.0, 0.0, 10.0, 2.5, 3.5, 2.0, 0.0, 0.0]]),
        ],
        gt_labels=gt_labels or [torch.tensor([0]), torch.tensor([3])],
        depth=torch.zeros(2, 1, 1, 1),
    )


def _outputs(model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(batch, decode=True)
    return {
        **out.features,
        "heatmap": out.head.heatmap,
        "regression": out.head.regression,
        **{f"boxes{i}": d.boxes for i, d in enumerate(out.detections)},
    }


def test_label_encoder_checkpoint_loads_without_the_lidar_checkpoint(tmp_path, monkeypatch) -> None:
    """The label-encoder checkpoint embeds its LiDAR teacher's config (weights are in its
    state_dict), so it loads, by every loader, after that teacher's file moved away."""
    monkeypatch.setattr(teacher_runner, "_LOADED", {})
    torch.manual_seed(0)
    lidar_cfg = _small_cfg(kind="lidar")
    lidar_path = save_checkpoint(
        tmp_path / "lidar" / "best.pt", build_teacher(lidar_cfg), lidar_cfg
    )
    lidar_sha = sha256_file(lidar_path)
    label_cfg = _small_cfg(
        kind="label_encoder", checkpoint=str(lidar_path), label_encoder_channels=8
    )
    model = build_teacher(label_cfg)
    batch = _label_batch()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):  # a tiny training run: the encoder's weights are no longer the initial ones
        loss = sum(model.loss(model(batch), batch).values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    label_path = save_checkpoint(tmp_path / "label" / "best.pt", model, label_cfg)
    expected = _outputs(model.eval(), batch)
    assert expected["boxes0"].numel() > 0

    source = load_checkpoint(label_path)["sources"]["lidar_teacher"]
    assert source["config"] == to_dict(lidar_cfg)
    assert source["sha256"] == lidar_sha and source["checkpoint"] == str(lidar_path)

    lidar_path.rename(tmp_path / "moved.pt")
    assert not lidar_path.exists()
    loaders = {
        "load_model": lambda: load_model(label_path),
        "load_teacher": lambda: load_teacher(label_path),
        "teacher_runner": lambda: teacher_runner.load_teacher_once(
            str(label_path), torch.device("cpu")
        ),
    }
    for name, load in loaders.items():
        loaded, loaded_cfg, sha = load()
        assert isinstance(loaded, LabelEncoderTeacher), name
        assert loaded_cfg == label_cfg and sha == sha256_file(label_path), name
        assert not loaded.training and not any(
            p.requires_grad for p in loaded.lidar_teacher.parameters()
        )
        got = _outputs(loaded, batch)
        assert got.keys() == expected.keys(), name
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, msg=f"{name}: {key}")
        # Saved again, the rebuilt model still embeds where its teacher came from.
        again = save_checkpoint(tmp_path / f"{name}.pt", loaded, loaded_cfg)
        assert load_checkpoint(again)["sources"]["lidar_teacher"] == source


def test_old_label_encoder_checkpoint_needs_its_lidar_checkpoint(tmp_path) -> None:
    """A checkpoint written before sources were embedded still loads through model.checkpoint,
    and says what to do when that file is gone."""
    torch.manual_seed(0)
    lidar_cfg = _small_cfg(kind="lidar")
    lidar_path = save_checkpoint(tmp_path / "lidar.pt", build_teacher(lidar_cfg), lidar_cfg)
    label_cfg = _small_cfg(
        kind="label_encoder", checkpoint=str(lidar_path), label_encoder_channels=8
    )
    model = build_teacher(label_cfg)
    label_path = save_checkpoint(tmp_path / "label.pt", model, label_cfg)
    payload = load_checkpoint(label_path)
    payload.pop("sources")
    torch.save(payload, label_path)

    loaded, _, _ = load_model(label_path)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
    lidar_path.unlink()
    with pytest.raises(CheckpointError, match=r"label\.pt.*lidar\.pt.*Put that checkpoint back"):
        load_teacher(label_path)


def test_label_encoder_needs_a_lidar_source_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    label_cfg = _small_cfg(kind="label_encoder", label_encoder_channels=8)
    lidar_path = save_checkpoint(
        tmp_path / "lidar.pt", build_teacher(_small_cfg(kind="lidar")), _small_cfg(kind="lidar")
    )
    nested = dataclasses.replace(
        label_cfg, model=dataclasses.replace(label_cfg.model, checkpoint=str(lidar_path))
    )
    label_path = save_checkpoint(tmp_path / "label.pt", build_teacher(nested), nested)
    with pytest.raises(ConfigError, match=r"label\.pt holds a 'label_encoder' teacher.*'lidar'"):
        build_teacher(
            dataclasses.replace(
                label_cfg, model=dataclasses.replace(label_cfg.model, checkpoint=str(label_path))
            )
        )
