"""An imported CenterPoint runs in its sensor's frame (nuScenes: the LiDAR's, turned about 90°
from the ego frame) and hands the store ego-frame maps and boxes. Checked with a pose that
turns the sensor by exactly 90°: the network then sees the same points either way, and every
output must be the identity run's, moved cell for cell."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from bevkd.models.centerpoint import build_centerpoint_teacher, points_to_sensor
from bevkd.pipeline.config import CenterPointConfig, GridConfig

GRID = GridConfig(point_cloud_range=(-6.4, -6.4, -5.0, 6.4, 6.4, 3.0), voxel_size=(0.1, 0.1, 0.2), bev_stride=8)  # fmt: skip
SMALL = CenterPointConfig(
    sparse_shape=(41, 128, 128),
    sparse_layers=(
        ("subm", 5, 8, 1, 1, 1, 0), ("basic", 8, 8, 1, 1, 1, 0), ("down", 8, 8, 1, 1, 1, 0),
        ("down", 8, 8, 1, 1, 1, 0), ("down", 8, 8, 0, 1, 1, 0), ("out", 8, 8, 0, 0, 0, 0),
    ),
    backbone_channels=(8, 16), backbone_layers=(1, 1), neck_channels=(8, 8),
    shared_channels=8, head_channels=8, post_nms=20,
)  # fmt: skip


def batch(points: torch.Tensor, pose: torch.Tensor) -> SimpleNamespace:
    def sensor_poses() -> torch.Tensor:
        return pose[None]

    return SimpleNamespace(points=points, size=1, sensor_poses=sensor_poses)


def turn(angle: float, z: float = 0.0) -> torch.Tensor:
    pose = torch.eye(4)
    c, s = math.cos(angle), math.sin(angle)
    pose[:2, :2] = torch.tensor([[c, -s], [s, c]])
    pose[2, 3] = z
    return pose


@pytest.fixture(scope="module")
def runs() -> tuple:
    torch.manual_seed(0)
    model = build_centerpoint_teacher(SMALL, GRID).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    gen = torch.Generator().manual_seed(1)
    n = 4000
    # points at voxel centres, so that the float error of the round trip cannot move one
    cells = torch.stack([torch.randint(0, 128, (n,), generator=gen), torch.randint(0, 128, (n,), generator=gen),
                         torch.randint(5, 30, (n,), generator=gen)], dim=1).float()  # fmt: skip
    xyz = torch.stack([-6.4 + (cells[:, 0] + 0.5) * 0.1, -6.4 + (cells[:, 1] + 0.5) * 0.1,
                       -5.0 + (cells[:, 2] + 0.5) * 0.2], dim=1)  # fmt: skip
    sensor = torch.cat([torch.zeros(n, 1), xyz, torch.rand(n, 1, generator=gen) * 255, torch.zeros(n, 1)], dim=1)  # fmt: skip
    pose = turn(math.pi / 2, z=1.8)  # sensor x -> ego y, 1.8 m above the ego origin
    ego = sensor.clone()
    ego[:, 1:4] = xyz @ pose[:3, :3].T + pose[:3, 3]
    with torch.no_grad():
        a = model(batch(sensor, torch.eye(4)), decode=True)
        b = model(batch(ego, pose), decode=True)
    return a, b, pose, ego, sensor


def moved(sensor_map: torch.Tensor) -> torch.Tensor:
    """A sensor-grid map on the ego grid under the 90° turn: sensor cell (row r, col c) at
    (x, y) lands at ego (-y, x), i.e. ego row c, col n - 1 - r."""
    n = sensor_map.shape[-1]
    out = torch.empty_like(sensor_map)
    r, c = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    out[..., c, n - 1 - r] = sensor_map[..., r, c]
    return out


def test_points_go_back_to_the_sensor_frame(runs: tuple) -> None:
    _, _, pose, ego, sensor = runs
    assert torch.allclose(points_to_sensor(ego, pose[None]), sensor, atol=1e-5)


def test_maps_come_onto_the_ego_grid_cell_for_cell(runs: tuple) -> None:
    a, b, *_ = runs
    assert torch.allclose(b.head.heatmap, moved(a.head.heatmap), atol=1e-4)
    for name in a.features:
        assert torch.allclose(b.features[name], moved(a.features[name]), atol=1e-4), name


def test_regressions_are_moved_boxes_encoded_on_the_ego_grid(runs: tuple) -> None:
    a, b, *_ = runs
    ra, rb = moved(a.head.task_regression), b.head.task_regression
    n = ra.shape[-1]
    # the box of sensor cell (r, c) is at ego cell (c, n-1-r): its offsets (ox, oy) become
    # (1 - oy, ox) against that cell, z rises by 1.8 m, (sin, cos) and velocity turn by 90°
    assert torch.allclose(rb[:, :, 0], 1 - ra[:, :, 1], atol=1e-4)
    assert torch.allclose(rb[:, :, 1], ra[:, :, 0], atol=1e-4)
    assert torch.allclose(rb[:, :, 2], ra[:, :, 2] + 1.8, atol=1e-4)
    assert torch.allclose(rb[:, :, 3:6], ra[:, :, 3:6], atol=1e-5)
    assert torch.allclose(rb[:, :, 6], ra[:, :, 7], atol=1e-4)  # sin(y + 90°) = cos y
    assert torch.allclose(rb[:, :, 7], -ra[:, :, 6], atol=1e-4)  # cos(y + 90°) = -sin y
    assert torch.allclose(rb[:, :, 8], -ra[:, :, 9], atol=1e-4)
    assert torch.allclose(rb[:, :, 9], ra[:, :, 8], atol=1e-4)
    assert n == 16


def test_detections_are_the_sensor_boxes_in_the_ego_frame(runs: tuple) -> None:
    a, b, *_ = runs
    da, db = a.detections[0], b.detections[0]
    assert len(da.boxes) > 0 and da.boxes.shape == db.boxes.shape
    assert torch.equal(da.scores, db.scores) and torch.equal(da.labels, db.labels)
    x, y, z = da.boxes[:, 0], da.boxes[:, 1], da.boxes[:, 2]
    assert torch.allclose(db.boxes[:, 0], -y, atol=1e-4) and torch.allclose(
        db.boxes[:, 1], x, atol=1e-4
    )
    assert torch.allclose(db.boxes[:, 2], z + 1.8, atol=1e-4)
    turned = torch.remainder(da.boxes[:, 6] + math.pi / 2 + math.pi, 2 * math.pi) - math.pi
    assert torch.allclose(torch.cos(db.boxes[:, 6] - turned), torch.ones_like(turned), atol=1e-5)
    assert torch.allclose(db.boxes[:, 7], -da.boxes[:, 8], atol=1e-5)


def test_an_ego_frame_model_ignores_the_pose(runs: tuple) -> None:
    _, _, pose, ego, _ = runs
    model = build_centerpoint_teacher(dataclasses.replace(SMALL, input_frame="ego"), GRID).eval()
    with torch.no_grad():
        plain = model(batch(ego, torch.eye(4)))
        posed = model(batch(ego, pose))
    assert torch.equal(plain.head.heatmap, posed.head.heatmap)
