"""LiDAR teacher: voxelization, encoders' shapes, CenterPoint targets, loss, decoding and NMS.

Batches are made by hand: a few boxes and points sampled on their surfaces plus a ground
plane, in the ego frame. No dataset is needed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from bevkd.datasets.frame import Batch
from bevkd.models import box_coder, targets
from bevkd.models.builders import build_teacher
from bevkd.models.outputs import REGRESSION_CHANNELS, HeadOutput
from bevkd.models.voxelize import voxelize
from bevkd.pipeline.config import Config, ConfigError, GridConfig, HeadConfig, ModelConfig
from bevkd.pipeline.geometry import BEVGrid, bev_corners

K = 10
GRID = BEVGrid(-25.6, -25.6, 25.6, 25.6, 0.8)  # the demo BEV grid: 64 x 64


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on this shared 2-core machine OpenMP barriers under load made the
    many small sparse-conv ops ~5x slower with two threads (test_spconv_cpu covers two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _surface_points(box: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """(count, 3) points on the 4 sides and the top of a (9,) box."""
    x, y, z, length, width, height, yaw = box[:7].tolist()
    local = (torch.rand(count, 3, generator=gen) - 0.5) * torch.tensor([length, width, height])
    face = torch.randint(0, 5, (count,), generator=gen)
    local[face == 0, 0], local[face == 1, 0] = length / 2, -length / 2
    local[face == 2, 1], local[face == 3, 1] = width / 2, -width / 2
    local[face == 4, 2] = height / 2
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.stack(
        [
            c * local[:, 0] - s * local[:, 1] + x,
            s * local[:, 0] + c * local[:, 1] + y,
            local[:, 2] + z,
        ],
        dim=1,
    )


def make_batch(
    boxes: list[torch.Tensor],
    labels: list[torch.Tensor],
    extent: float = 12.0,
    ground: int = 1500,
    seed: int = 0,
) -> Batch:
    """A :class:`Batch` with points (batch, x, y, z, intensity, time-lag) on boxes and ground."""
    gen = torch.Generator().manual_seed(seed)
    points = []
    for b, frame_boxes in enumerate(boxes):
        xyz = [_surface_points(box, 200, gen) for box in frame_boxes]
        floor = torch.cat(
            [
                (torch.rand(ground, 2, generator=gen) - 0.5) * 2 * extent,
                torch.full((ground, 1), -1.8),
            ],
            dim=1,
        )
        xyz = torch.cat([*xyz, floor])
        feats = torch.cat(
            [xyz, torch.rand(len(xyz), 1, generator=gen) * 100, torch.zeros(len(xyz), 1)], dim=1
        )
        points.append(torch.cat([torch.full((len(xyz), 1), float(b)), feats], dim=1))
    bsz = len(boxes)
    eye = torch.eye(4).expand(bsz, 1, 4, 4)
    return Batch(
        tokens=[f"frame{b}" for b in range(bsz)],
        indices=torch.arange(bsz),
        has_label=torch.ones(bsz, dtype=torch.bool),
        images=torch.zeros(bsz, 1, 3, 8, 8),
        cam2img=eye.clone(),
        cam2ego=eye.clone(),
        img_aug=eye.clone(),
        bev_aug=torch.eye(4).expand(bsz, 4, 4).clone(),
        points=torch.cat(points),
        gt_boxes=[b.clone() for b in boxes],
        gt_labels=[lab.clone() for lab in labels],
        depth=torch.zeros(bsz, 1, 2, 2),
    )


def _box(
    x: float,
    y: float,
    yaw: float,
    size: tuple[float, float, float] = (4.5, 1.9, 1.6),
    vx: float = 1.0,
    vy: float = -0.5,
) -> list[float]:
    return [x, y, -1.8 + size[2] / 2, *size, yaw, vx, vy]


SCENE_BOXES = [
    torch.tensor(
        [
            _box(5.3, 2.1, 0.3),
            _box(-7.9, -4.4, 2.0),
            _box(1.1, -9.3, -1.2, (0.7, 0.7, 1.8), 0.3, 0.2),
        ]
    ),
    torch.tensor([_box(-3.6, 6.2, -2.8), _box(8.7, -6.1, 1.4, (11.0, 2.9, 3.4), 0.0, 0.0)]),
]
SCENE_LABELS = [torch.tensor([0, 0, 8]), torch.tensor([0, 3])]


# --------------------------------------------------------------------------------------------
# Voxelization and encoders
# --------------------------------------------------------------------------------------------


def test_voxelize_means_caps_and_coordinates() -> None:
    pts = torch.tensor(
        [
            [0, 0.05, 0.05, 0.05, 1.0, 0.0],  # voxel A (x 0, y 0, z 0) of sample 0
            [0, 0.15, 0.10, 0.20, 3.0, 0.0],  # voxel A
            [0, 0.12, 0.02, 0.01, 100.0, 0.0],  # voxel A, beyond max_points_per_voxel=2: dropped
            [1, 0.45, 0.05, 0.30, 2.0, 0.5],  # sample 1: voxel x 2, z 1
            [0, 9.00, 0.00, 0.00, 2.0, 0.0],  # outside the range
        ]
    )
    vox = voxelize(
        pts,
        2,
        (0.0, 0.0, 0.0, 1.0, 1.0, 1.0),
        (0.2, 0.2, 0.25),
        max_points_per_voxel=2,
        max_voxels=10,
    )
    assert vox.spatial_shape == (4, 5, 5)
    assert vox.coords.tolist() == [[0, 0, 0, 0], [1, 1, 0, 2]]  # (batch, z, y, x)
    torch.testing.assert_close(vox.features[0], torch.tensor([0.10, 0.075, 0.125, 2.0, 0.0]))
    torch.testing.assert_close(vox.features[1], pts[3, 1:])
    assert vox.num_points.tolist() == [2, 1]
    assert vox.point_voxel.tolist() == [0, 0, -1, 1, -1]
    # max_voxels keeps, per sample, the voxels whose first point came first
    many = torch.tensor([[0, 0.1 + 0.2 * i, 0.1, 0.1, 0.0, 0.0] for i in (3, 1, 2, 0)])
    capped = voxelize(many, 1, (0.0, 0.0, 0.0, 1.0, 1.0, 1.0), (0.2, 0.2, 0.25), 5, max_voxels=2)
    assert capped.coords[:, 3].tolist() == [1, 3]


@pytest.mark.parametrize("encoder", ["voxel", "pillar"])
def test_teacher_shapes_at_the_demo_config(encoder: str) -> None:
    cfg = dataclasses.replace(
        Config(), model=dataclasses.replace(ModelConfig(), lidar_encoder=encoder)
    )
    torch.manual_seed(0)
    teacher = build_teacher(cfg)
    # focal-loss prior: every class starts at sigmoid(-2.19) ~ 0.1
    assert torch.all(teacher.head.heatmap[-1].bias == -2.19)
    batch = make_batch(SCENE_BOXES, SCENE_LABELS, extent=25.0, ground=4000)
    h, w = cfg.grid.bev_shape
    assert (h, w) == (64, 64)
    c = cfg.model.bev_channels
    with torch.no_grad():
        bev = teacher.encoder(batch.points, 2)
        out = teacher(batch, decode=True)
    assert bev.shape == (2, teacher.encoder.out_channels, h, w)
    # lidar_bev_pre is the encoder's map-to-BEV output, the backbone's input (CMKD's layer)
    torch.testing.assert_close(out.features["lidar_bev_pre"], bev, rtol=0, atol=0)
    with torch.no_grad():
        from_pre = teacher.backbone(out.features["lidar_bev_pre"])
    torch.testing.assert_close(from_pre["lidar_bev"], out.features["lidar_bev"], rtol=0, atol=0)
    assert out.features["lidar_bev"].shape == (2, c, h, w)
    assert out.features["lidar_bev_s2"].shape == (2, 2 * c, h // 2, w // 2)
    assert out.head.heatmap.shape == (2, K, h, w)
    assert out.head.regression.shape == (2, len(REGRESSION_CHANNELS), h, w)
    assert len(out.detections) == 2
    # the neck runs on features handed in from outside (the label encoder's path)
    with torch.no_grad():
        again = teacher.head(teacher.neck(out.features))
    torch.testing.assert_close(again.heatmap, out.head.heatmap)


def test_unknown_kinds_are_rejected_at_load_and_students_are_no_teachers() -> None:
    with pytest.raises(ConfigError, match=r"model\.kind: 'nope' is not one of"):
        ModelConfig(kind="nope")
    with pytest.raises(ConfigError, match=r"model\.lidar_encoder: 'dense' is not one of"):
        ModelConfig(lidar_encoder="dense")
    with pytest.raises(ConfigError, match=r"model\.kind 'camera' has no teacher builder"):
        build_teacher(dataclasses.replace(Config(), model=ModelConfig(kind="camera")))


# --------------------------------------------------------------------------------------------
# Targets, decoding, NMS
# --------------------------------------------------------------------------------------------


def test_heatmap_peaks_and_gaussian_shape() -> None:
    head_cfg = HeadConfig()
    boxes = torch.tensor([_box(0.3, 0.5, 0.0)])
    heat = targets.gaussian_heatmaps([boxes], [torch.tensor([0])], GRID, K, head_cfg)[0]
    row, col = int((0.5 + 25.6) // 0.8), int((0.3 + 25.6) // 0.8)
    assert heat[0, row, col] == 1.0 and int((heat == 1.0).sum()) == 1
    assert heat[1:].abs().sum() == 0  # only the box's class channel
    # radius of a 4.5 x 1.9 m car in 0.8 m cells at overlap 0.1 is below min_radius=2
    radius = targets.gaussian_radius(torch.tensor(4.5 / 0.8), torch.tensor(1.9 / 0.8), 0.1)
    assert float(radius) < 2
    sigma = (2 * 2 + 1) / 6
    torch.testing.assert_close(heat[0, row, col + 1], torch.tensor(math.exp(-1 / (2 * sigma**2))))
    torch.testing.assert_close(
        heat[0, row + 2, col - 2], torch.tensor(math.exp(-8 / (2 * sigma**2)))
    )
    assert heat[0, row, col + 3] == 0  # outside the (2r+1)^2 window


def _as_logits(tgt: targets.HeadTargets) -> HeadOutput:
    """A head output that encodes the targets exactly (peak probabilities ~1)."""
    p = tgt.heatmap.clamp(1e-6, 1 - 1e-6)
    return HeadOutput(torch.log(p / (1 - p)), tgt.regression.clone())


def test_decode_inverts_encode() -> None:
    head_cfg = HeadConfig()
    tgt = targets.build_targets(SCENE_BOXES, SCENE_LABELS, GRID, K, head_cfg)
    assert tgt.mask.sum(dim=(1, 2)).tolist() == [3, 2]
    dets = box_coder.decode(_as_logits(tgt), GRID, head_cfg)
    for det, boxes, labels in zip(dets, SCENE_BOXES, SCENE_LABELS, strict=True):
        assert len(det.boxes) == len(boxes)
        order = torch.cdist(boxes[:, :2], det.boxes[:, :2]).argmin(dim=1)
        got = det.boxes[order]
        torch.testing.assert_close(
            got[:, [0, 1, 2, 3, 4, 5, 7, 8]],
            boxes[:, [0, 1, 2, 3, 4, 5, 7, 8]],
            rtol=1e-5,
            atol=1e-4,
        )
        yaw_err = torch.remainder(got[:, 6] - boxes[:, 6] + math.pi, 2 * math.pi) - math.pi
        assert yaw_err.abs().max() < 1e-5
        assert det.labels[order].tolist() == labels.tolist()
        assert (det.scores > 0.99).all()


def test_targets_are_equivariant_under_a_left_right_flip() -> None:
    """Mirroring boxes across the x axis (y -> -y) mirrors the target rows, with offset_y,
    sin(yaw) and vy transformed: the law the store's BEV augmentation relies on."""
    head_cfg = HeadConfig()
    flipped = [b.clone() for b in SCENE_BOXES]
    for b in flipped:
        b[:, 1], b[:, 6], b[:, 8] = -b[:, 1], -b[:, 6], -b[:, 8]
    a = targets.build_targets(SCENE_BOXES, SCENE_LABELS, GRID, K, head_cfg)
    f = targets.build_targets(flipped, SCENE_LABELS, GRID, K, head_cfg)
    torch.testing.assert_close(f.heatmap, a.heatmap.flip(2))
    assert torch.equal(f.mask, a.mask.flip(1))
    expect = a.regression.flip(2).clone()
    expect[:, REGRESSION_CHANNELS.index("offset_y")] = (
        1 - expect[:, REGRESSION_CHANNELS.index("offset_y")]
    )
    for name in ("sin_yaw", "vy"):
        expect[:, REGRESSION_CHANNELS.index(name)] *= -1
    m = f.mask.unsqueeze(1).expand_as(expect)
    torch.testing.assert_close(f.regression[m], expect[m], rtol=1e-5, atol=1e-5)


def _shapely_iou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = Polygon(bev_corners(a[None])[0]), Polygon(bev_corners(b[None])[0])
    return pa.intersection(pb).area / pa.union(pb).area


def test_rotated_iou_matches_shapely() -> None:
    gen = np.random.default_rng(0)
    a = np.zeros((200, 9))
    b = np.zeros((200, 9))
    for boxes in (a, b):
        boxes[:, :2] = gen.uniform(-2, 2, (200, 2))
        boxes[:, 3:5] = gen.uniform(0.5, 5, (200, 2))
        boxes[:, 5] = 1.5
        boxes[:, 6] = gen.uniform(-math.pi, math.pi, 200)
    b[:20] = a[:20]  # identical boxes
    b[20:30, 6] = a[20:30, 6] + math.pi / 2  # crossing boxes
    b[20:30, :2] = a[20:30, :2]
    got = box_coder.rotated_iou_pairs(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    want = np.array([_shapely_iou(x, y) for x, y in zip(a, b, strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert (got[:20] > 1 - 1e-9).all() and want[30:].min() == 0 and want[30:].max() > 0.3


def test_rotated_nms_is_per_class() -> None:
    boxes = torch.tensor([_box(0, 0, 0.0), _box(0.3, 0.1, 0.1), _box(0.2, 0, 0.0), _box(6, 0, 0.0)])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    keep = box_coder.rotated_nms(boxes, scores, labels, iou_threshold=0.2)
    assert keep.tolist() == [0, 2, 3]


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def test_loss_names_a_non_finite_term() -> None:
    tgt = targets.build_targets(SCENE_BOXES, SCENE_LABELS, GRID, K, HeadConfig())
    out = _as_logits(tgt)
    out.regression[0, 3] = float("nan")
    with pytest.raises(targets.NonFiniteLossError, match="'regression'"):
        targets.detection_loss(out, tgt, HeadConfig())


def _small_teacher(encoder: str) -> tuple[Config, torch.nn.Module]:
    cfg = Config(
        grid=GridConfig(point_cloud_range=(-12.8, -12.8, -2.0, 12.8, 12.8, 4.0)),
        model=ModelConfig(
            lidar_encoder=encoder, bev_channels=32, head_channels=32, bev_backbone_layers=(1, 1)
        ),
    )
    torch.manual_seed(0)
    return cfg, build_teacher(cfg)


def test_loss_skips_unlabelled_frames() -> None:
    _, teacher = _small_teacher("pillar")
    batch = make_batch(SCENE_BOXES, SCENE_LABELS)
    teacher.eval()
    with torch.no_grad():
        out = teacher(batch)
        both = teacher.loss(out, batch)
        batch.has_label[1] = False
        first = teacher.loss(out, batch)
        batch.gt_boxes[1] = torch.zeros((0, 9))  # an unlabelled frame's (absent) boxes
        again = teacher.loss(out, batch)
    assert not torch.allclose(both["heatmap"], first["heatmap"])
    torch.testing.assert_close(first, again)


@pytest.mark.parametrize("encoder", ["voxel", "pillar"])
def test_overfitting_one_batch_lowers_the_loss(encoder: str) -> None:
    _, teacher = _small_teacher(encoder)
    batch = make_batch(SCENE_BOXES, SCENE_LABELS)
    opt = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        terms = teacher.loss(teacher(batch), batch)
        total = sum(terms.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({k: float(v) for k, v in terms.items()})
    assert history[-1]["heatmap"] < 0.4 * history[0]["heatmap"], history
    assert history[-1]["regression"] < 0.6 * history[0]["regression"], history
