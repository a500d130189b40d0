"""Camera BEV branch: frustum geometry, LSS pooling, depth loss, image backbone, shapes."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from bevkd.models.camera_bev import (
    bev_pool,
    bev_pool_index,
    build_camera_bev,
    depth_bin_centers,
    depth_loss,
    frustum_to_ego,
    make_frustum,
)
from bevkd.models.image_backbone import ImageBackbone
from bevkd.pipeline.config import Config
from bevkd.pipeline.geometry import BEVGrid

# Camera axes (x right, y down, z forward) expressed in ego axes (x fwd, y left, z up) for a
# camera looking along +x: its columns are the ego directions of the camera axes.
FORWARD_CAM_ROT = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def camera(
    yaw: float, translation: tuple[float, float, float], fx: float, fy: float, cx: float, cy: float
):
    """(cam2img, cam2ego) 4x4 of a level camera looking along ego yaw ``yaw``."""
    cam2img = np.eye(4)
    cam2img[0, 0], cam2img[1, 1], cam2img[0, 2], cam2img[1, 2] = fx, fy, cx, cy
    c, s = math.cos(yaw), math.sin(yaw)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    cam2ego = np.eye(4)
    cam2ego[:3, :3] = rz @ FORWARD_CAM_ROT
    cam2ego[:3, 3] = translation
    return torch.tensor(cam2img, dtype=torch.float32), torch.tensor(cam2ego, dtype=torch.float32)


def test_delta_depth_lands_in_cell_of_known_point() -> None:
    grid = BEVGrid(-16.0, -16.0, 16.0, 16.0, 0.5)
    bins = (1.0, 21.0, 1.0)
    stride, (h, w) = 8, (8, 16)
    fx, fy, cx, cy = 100.0, 120.0, 64.0, 32.0
    front = camera(0.0, (1.0, 0.5, 1.6), fx, fy, cx, cy)
    back = camera(math.pi, (-1.0, 0.0, 1.6), fx, fy, cx, cy)
    # batch of 2: sample 0 has [front, back], sample 1 has [back, front]
    cam2img = torch.stack([torch.stack([front[0], back[0]]), torch.stack([back[0], front[0]])])
    cam2ego = torch.stack([torch.stack([front[1], back[1]]), torch.stack([back[1], front[1]])])
    row, col, bin_ = 3, 10, 9
    depth = torch.zeros(2, 2, 20, h, w)
    depth[1, 1, bin_, row, col] = 1.0  # sample 1, camera 1 (the front camera)
    depth[0, 1, bin_, row, col] = 1.0  # sample 0, camera 1 (the back camera)
    context = torch.zeros(2, 2, 3, h, w)
    context[1, 1, 2, row, col] = 5.0
    context[0, 1, 0, row, col] = 7.0

    points = frustum_to_ego(make_frustum((h, w), stride, bins), cam2img, cam2ego)
    bev = bev_pool(depth, context, bev_pool_index(points, grid, (-2.0, 4.0)))

    # By hand: pixel centre (84, 28), depth 10.5 m -> camera (2.1, -0.35, 10.5).
    u, v, d = (col + 0.5) * stride, (row + 0.5) * stride, 10.5
    xc, yc = (u - cx) * d / fx, (v - cy) * d / fy
    front_xy = (1.0 + d, 0.5 - xc)  # forward camera: ego x = z_cam, ego y = -x_cam
    back_xy = (-1.0 - d, 0.0 + xc)  # rotated by 180 degrees
    expected = torch.zeros_like(bev)
    for b, ch, (x, y), value in ((1, 2, front_xy, 5.0), (0, 0, back_xy, 7.0)):
        r, c = math.floor((y - grid.y_min) / grid.cell), math.floor((x - grid.x_min) / grid.cell)
        expected[b, ch, r, c] = value
    assert (*front_xy, *back_xy) == pytest.approx((11.5, -1.6, -11.5, 2.1))
    torch.testing.assert_close(bev, expected)
    assert torch.allclose(points[1, 1, bin_, row, col], torch.tensor([11.5, -1.6, 1.6 - yc]))


def _naive_pool(depth, context, cam2img, cam2ego, bins, stride, grid, z_range) -> np.ndarray:
    """Loop over every frustum point with float64 numpy geometry."""
    b_, k_, d_, h, w = depth.shape
    out = np.zeros((b_, context.shape[2], grid.H, grid.W))
    centers = depth_bin_centers(bins).numpy()
    for b in range(b_):
        for k in range(k_):
            img2ego = cam2ego[b, k].double().numpy() @ np.linalg.inv(cam2img[b, k].double().numpy())
            for di in range(d_):
                for v in range(h):
                    for u in range(w):
                        dep = centers[di]
                        p = img2ego @ np.array(
                            [(u + 0.5) * stride * dep, (v + 0.5) * stride * dep, dep, 1.0]
                        )
                        c = math.floor((p[0] - grid.x_min) / grid.cell)
                        r = math.floor((p[1] - grid.y_min) / grid.cell)
                        if 0 <= r < grid.H and 0 <= c < grid.W and z_range[0] <= p[2] < z_range[1]:
                            out[b, :, r, c] += (
                                depth[b, k, di, v, u].item()
                                * context[b, k, :, v, u].double().numpy()
                            )
    return out


def test_bev_pool_matches_naive_loop() -> None:
    torch.manual_seed(0)
    grid = BEVGrid(-6.0, -6.0, 6.0, 6.0, 1.5)
    bins, stride, (h, w) = (1.0, 9.0, 2.0), 4, (3, 5)
    cams = [
        camera(0.3, (0.5, 0.2, 1.5), 10.0, 11.0, 9.0, 7.0),
        camera(2.0, (-0.3, 0.1, 1.0), 12.0, 9.0, 11.0, 5.0),
        camera(-1.2, (0.0, -0.4, 0.5), 8.0, 8.0, 10.0, 6.0),
    ]
    cam2img = torch.stack(
        [torch.stack([cams[0][0], cams[1][0]]), torch.stack([cams[2][0], cams[0][0]])]
    )
    cam2ego = torch.stack(
        [torch.stack([cams[0][1], cams[1][1]]), torch.stack([cams[2][1], cams[0][1]])]
    )
    depth = torch.randn(2, 2, 4, h, w).softmax(dim=2)
    context = torch.randn(2, 2, 3, h, w)
    z_range = (-1.0, 2.5)
    points = frustum_to_ego(make_frustum((h, w), stride, bins), cam2img, cam2ego)
    index = bev_pool_index(points, grid, z_range)
    assert 0 < len(index.point) < points[..., 0].numel()  # some points kept, some dropped
    bev = bev_pool(depth, context, index)
    naive = _naive_pool(depth, context, cam2img, cam2ego, bins, stride, grid, z_range)
    np.testing.assert_allclose(bev.numpy(), naive, rtol=1e-5, atol=1e-5)


def test_depth_loss_targets_and_mask() -> None:
    bins = (1.0, 5.0, 1.0)  # 4 bins: [1,2) [2,3) [3,4) [4,5)
    lidar = torch.tensor([[[0.0, 2.5], [4.9, 7.0]]])  # none, bin 1, bin 3, out of range
    logits = torch.zeros(1, 4, 2, 2)
    uniform = depth_loss(logits, lidar, bins)
    # two valid pixels, each: -log(1/4) - 3 log(3/4)
    assert uniform.item() == pytest.approx(-math.log(0.25) - 3 * math.log(0.75), rel=1e-5)
    sharp = logits.clone()
    sharp[0, 1, 0, 1] = sharp[0, 3, 1, 0] = 30.0
    assert depth_loss(sharp, lidar, bins).item() < 1e-6
    # Pixels without an in-range return do not matter.
    junk = sharp.clone()
    junk[0, :, 0, 0] = torch.tensor([9.0, -3.0, 4.0, 0.0])
    junk[0, :, 1, 1] = torch.tensor([-9.0, 3.0, 4.0, 1.0])
    assert depth_loss(junk, lidar, bins).item() == depth_loss(sharp, lidar, bins).item()
    none = depth_loss(logits.requires_grad_(), torch.zeros(1, 2, 2), bins)
    none.backward()
    assert none.item() == 0.0
    with pytest.raises(ValueError, match="depth_stride"):
        depth_loss(logits, torch.zeros(1, 4, 4), bins)


@pytest.mark.parametrize("stride", [4, 8, 16])
def test_image_backbone_strides(stride: int) -> None:
    net = ImageBackbone((8, 16, 24), out_channels=12, out_stride=stride)
    assert net(torch.randn(2, 3, 32, 48)).shape == (2, 12, 32 // stride, 48 // stride)
    with pytest.raises(ValueError, match="multiple of 16"):
        net(torch.randn(1, 3, 40, 48))
    with pytest.raises(ValueError, match="depth_stride"):
        ImageBackbone((8, 16, 24), out_stride=32)


def test_camera_bev_default_config_shapes_and_gradients() -> None:
    torch.manual_seed(0)
    cfg = Config()
    net = build_camera_bev(cfg)
    k = len(cfg.data.cameras)
    height, width = cfg.data.image_size
    cams = [
        camera(2 * math.pi * i / k, (0.0, 0.0, 1.6), 110.0, 110.0, width / 2, height / 2)
        for i in range(k)
    ]
    cam2img = torch.stack([c[0] for c in cams])[None]
    cam2ego = torch.stack([c[1] for c in cams])[None]
    out = net(torch.randn(1, k, 3, height, width), cam2img, cam2ego)
    s = cfg.data.depth_stride
    assert out.bev.shape == (1, cfg.model.camera_bev_channels, *cfg.grid.bev_shape)
    assert out.depth_logits.shape == (k, 39, height // s, width // s)
    loss = out.bev.square().mean() + depth_loss(
        out.depth_logits, torch.full((1, k, height // s, width // s), 7.3), cfg.model.depth_bins
    )
    loss.backward()
    assert net.backbone.stem[0].weight.grad.abs().sum() > 0
    assert net.depth_net[1].weight.grad[:39].abs().sum() > 0  # depth channels get gradient


def test_camera_modules_never_import_spconv() -> None:
    code = (
        "import sys, bevkd.models.camera_bev, bevkd.models.image_backbone; "
        "assert 'spconv' not in sys.modules, 'spconv imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
