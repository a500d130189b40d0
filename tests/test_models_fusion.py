"""BEVFusion-style fusion teacher: forward shapes, loss terms, gradients into both branches."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from bevkd.datasets.frame import Batch
from bevkd.models.bev_backbone import SECONDFPN, SECONDBackbone
from bevkd.models.builders import build_teacher
from bevkd.models.camera_bev import CameraBEV
from bevkd.models.fusion_teacher import ConvFuser, FusionTeacher, FusionTeacherOutput
from bevkd.models.head import CenterHead, conv_bn_relu
from bevkd.models.pillar_encoder import PillarEncoder
from bevkd.pipeline.config import Config, GridConfig, HeadConfig
from bevkd.pipeline.geometry import BEVGrid

GRID = GridConfig(
    point_cloud_range=(-12.8, -12.8, -2.0, 12.8, 12.8, 4.0),
    voxel_size=(0.2, 0.2, 0.25),
    bev_stride=4,
)
CLASSES = ("car", "pedestrian", "barrier")
DEPTH_BINS = (1.0, 20.0, 1.0)
FORWARD_CAM_ROT = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _cameras(k: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, 4, 4) cam2img and cam2ego of K level cameras spread around the ego."""
    cam2img, cam2ego = [], []
    for i in range(k):
        intr = np.eye(4)
        intr[0, 0] = intr[1, 1] = width / 2
        intr[0, 2], intr[1, 2] = width / 2, height / 2
        yaw = 2 * math.pi * i / k
        rz = np.array(
            [[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]]
        )
        ext = np.eye(4)
        ext[:3, :3], ext[:3, 3] = rz @ FORWARD_CAM_ROT, (0.0, 0.0, 1.6)
        cam2img.append(intr)
        cam2ego.append(ext)
    return torch.tensor(np.array(cam2img), dtype=torch.float32), torch.tensor(
        np.array(cam2ego), dtype=torch.float32
    )


def make_batch(
    batch_size: int, k: int, height: int, width: int, stride: int, labelled: tuple[bool, ...]
) -> Batch:
    gen = torch.Generator().manual_seed(0)
    cam2img, cam2ego = _cameras(k, height, width)
    boxes = torch.tensor(
        [
            [4.0, 1.0, 0.0, 4.2, 1.9, 1.6, 0.3, 1.0, 0.0],
            [-3.0, -5.0, 0.0, 0.7, 0.7, 1.8, 0.0, 0.0, 0.0],
        ]
    )
    points = []
    for b in range(batch_size):
        xyz = torch.rand(600, 3, generator=gen) * torch.tensor([25.6, 25.6, 4.0]) - torch.tensor(
            [12.8, 12.8, 1.5]
        )
        points.append(
            torch.cat(
                [torch.full((600, 1), float(b)), xyz, torch.rand(600, 2, generator=gen)], dim=1
            )
        )
    depth = torch.rand(batch_size, k, height // stride, width // stride, generator=gen) * 25.0
    depth[depth < 8.0] = 0.0  # some pixels without a return, some beyond the last bin
    return Batch(
        tokens=[f"frame{b}" for b in range(batch_size)],
        indices=torch.arange(batch_size),
        has_label=torch.tensor(labelled),
        images=torch.randn(batch_size, k, 3, height, width, generator=gen),
        cam2img=cam2img.expand(batch_size, -1, -1, -1).clone(),
        cam2ego=cam2ego.expand(batch_size, -1, -1, -1).clone(),
        img_aug=torch.eye(4).expand(batch_size, k, 4, 4).clone(),
        bev_aug=torch.eye(4).expand(batch_size, 4, 4).clone(),
        points=torch.cat(points),
        gt_boxes=[boxes if lab else torch.zeros(0, 9) for lab in labelled],
        gt_labels=[
            torch.tensor([0, 1]) if lab else torch.zeros(0, dtype=torch.long) for lab in labelled
        ],
        depth=depth,
    )


def tiny_fusion_teacher(camera_channels: int = 8, bev_channels: int = 16) -> FusionTeacher:
    grid = BEVGrid.from_range(GRID.point_cloud_range, GRID.bev_cell)
    pcr = GRID.point_cloud_range
    encoder = PillarEncoder(5, pcr, GRID.voxel_size, GRID.bev_stride, (8, 16, 16))
    neck = SECONDFPN(bev_channels, bev_channels)
    return FusionTeacher(
        grid=GRID,
        head_cfg=HeadConfig(),
        class_names=CLASSES,
        depth_bins=DEPTH_BINS,
        depth_loss_weight=3.0,
        camera=CameraBEV(
            grid, (pcr[2], pcr[5]), DEPTH_BINS, (8, 16, 16), camera_channels, feature_stride=8
        ),
        lidar_encoder=encoder,
        lidar_reduce=conv_bn_relu(encoder.out_channels, bev_channels),
        fuser=ConvFuser(camera_channels, bev_channels, bev_channels),
        decoder=SECONDBackbone(bev_channels, bev_channels, (1, 1)),
        neck=neck,
        head=CenterHead(neck.out_channels, len(CLASSES), 16),
    )


def test_fusion_teacher_forward_backward_tiny_batch() -> None:
    torch.manual_seed(0)
    model = tiny_fusion_teacher()
    batch = make_batch(2, 3, 32, 64, 8, labelled=(True, False))
    out = model(batch, decode=True)
    assert isinstance(out, FusionTeacherOutput)
    h, w = GRID.bev_shape
    assert {name: tuple(t.shape) for name, t in out.features.items()} == {
        "camera_bev": (2, 8, h, w),
        "lidar_bev": (2, 16, h, w),
        "fused_bev": (2, 16, h, w),
        "fused_bev_s2": (2, 32, h // 2, w // 2),
    }
    assert out.head.heatmap.shape == (2, len(CLASSES), h, w) and out.head.regression.shape == (
        2,
        10,
        h,
        w,
    )
    assert out.depth_logits is not None and out.depth_logits.shape == (6, 19, 4, 8)
    assert len(out.detections) == 2

    terms = model.loss(out, batch)
    assert set(terms) == {"heatmap", "regression", "depth"}
    assert all(torch.isfinite(t) and t > 0 for t in terms.values())
    sum(terms.values()).backward()
    for name, module in (
        ("image backbone", model.camera.backbone),
        ("lidar encoder", model.lidar_encoder),
        ("fuser", model.fuser),
        ("head", model.head),
    ):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name


def test_fusion_teacher_camera_bev_changes_fused_bev() -> None:
    """Both branches feed the fused map: changing only the images changes fused_bev."""
    torch.manual_seed(0)
    model = tiny_fusion_teacher().eval()
    batch = make_batch(1, 2, 32, 64, 8, labelled=(True,))
    with torch.no_grad():
        first = model(batch).features
        batch.images = batch.images.flip(-1)
        second = model(batch).features
    torch.testing.assert_close(first["lidar_bev"], second["lidar_bev"])
    assert not torch.allclose(first["camera_bev"], second["camera_bev"])
    assert not torch.allclose(first["fused_bev"], second["fused_bev"])


def test_fusion_loss_needs_its_own_output() -> None:
    model = tiny_fusion_teacher()
    batch = make_batch(1, 2, 32, 64, 8, labelled=(True,))
    out = model(batch)
    with pytest.raises(TypeError, match="FusionTeacherOutput"):
        model.loss(FusionTeacherOutput(out.features, out.head), batch)
    with pytest.raises(ValueError, match="no labelled frames"):
        model.loss(out, make_batch(1, 2, 32, 64, 8, labelled=(False,)))


@pytest.mark.parametrize("lidar_encoder", ["voxel", "pillar"])
def test_build_fusion_teacher_from_config(lidar_encoder: str) -> None:
    base = Config()
    model_cfg = dataclasses.replace(
        base.model,
        kind="fusion",
        lidar_encoder=lidar_encoder,
        sparse_channels=(8, 16, 16, 16),
        bev_channels=16,
        bev_backbone_layers=(1, 1),
        head_channels=16,
        camera_bev_channels=8,
        image_backbone_channels=(8, 16, 16),
        depth_bins=DEPTH_BINS,
    )
    cfg = dataclasses.replace(base, grid=GRID, model=model_cfg)
    model = build_teacher(cfg)
    assert isinstance(model, FusionTeacher)
    out = model(make_batch(1, 2, 32, 64, cfg.data.depth_stride, labelled=(True,)))
    h, w = GRID.bev_shape
    assert out.features["camera_bev"].shape == (1, 8, h, w)
    assert out.features["fused_bev"].shape == (1, 16, h, w)
    assert out.head.heatmap.shape == (1, len(cfg.classes), h, w)
