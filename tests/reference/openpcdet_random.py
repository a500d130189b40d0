"""Seeded random-weight OpenPCDet CenterPoint checkpoints and synthetic point clouds.

``random_checkpoint`` fills every key of ``state_dict_spec`` (OpenPCDet's exact names and
shapes) and wraps it as tools/train_utils/train_utils.py lines 221-237 (``checkpoint_state``)
does: ``{'epoch', 'it', 'model_state', 'optimizer_state', 'version'}``.

Random BatchNorm statistics alone let activations drift by orders of magnitude through ~40
layers (MeanVFE passes raw coordinates and 0-255 intensities), which saturates the heatmap
sigmoid at exactly 1.0 and makes top-k order a matter of ties. So the BatchNorm running
statistics are calibrated on a synthetic cloud and then perturbed per channel (mean shifted by
N(0, 0.5) standard deviations, variance scaled by U(0.5, 2)), and each head's output conv is
scaled to a set output spread: non-trivial statistics, activations of order one, heatmap
scores spread over (0, 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .openpcdet_centerpoint import mask_points_by_range, mean_vfe, points_to_voxels
from .openpcdet_config import COMMIT, CenterPointConfig
from .openpcdet_networks import (
    backbone_2d,
    backbone_3d,
    center_head,
    head_names,
    height_compression,
    observe_batch_norm,
)
from .openpcdet_state import state_dict_spec

# spread (std over the calibration cloud's BEV map) of each head's raw output
HEAD_OUTPUT_STD = {"center": 0.4, "center_z": 0.8, "dim": 0.3, "rot": 1.0, "vel": 1.0}


def _random_value(
    kind: str, shape: tuple[int, ...], gen: torch.Generator, hm_std: float
) -> torch.Tensor:
    def normal(std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    if kind in ("spconv", "conv", "conv_out"):
        fan_in = int(np.prod(shape[1:]))  # spconv: kD*kH*kW*C_in, conv: C_in*k*k
        return normal((2.0 / fan_in) ** 0.5)
    if kind == "deconv":  # (C_in, C_out, k, k): each output sums C_in inputs
        return normal((2.0 / shape[0]) ** 0.5)
    if kind == "hm_out":
        return normal(hm_std / (shape[1] * 9) ** 0.5)
    if kind == "hm_out_bias":
        return torch.full(shape, -2.19) + normal(0.1)  # center_head.py line 93 init, jittered
    if kind in ("bias", "conv_out_bias", "bn_bias"):
        return normal(0.1)
    if kind == "bn_weight":
        return uniform(0.5, 1.5)
    if kind == "bn_mean":
        return normal(0.2)
    if kind == "bn_var":
        return uniform(0.5, 2.0)
    if kind == "bn_count":
        return torch.tensor(int(torch.randint(1000, 100000, (1,), generator=gen)))
    if kind == "step":
        return torch.tensor([int(torch.randint(1000, 100000, (1,), generator=gen))])
    raise ValueError(f"unknown parameter kind {kind!r}")


def random_checkpoint(
    cfg: CenterPointConfig,
    seed: int = 0,
    hm_std: float = 2.0,
    calibration_points: np.ndarray | None = None,
) -> dict[str, Any]:
    """A seeded random-weight checkpoint for ``cfg`` with OpenPCDet's keys and shapes.

    Convs He-normal; conv biases N(0, 0.1); BatchNorm weight U(0.5, 1.5), bias N(0, 0.1),
    running stats calibrated then perturbed (module docstring); heatmap output bias -2.19
    (center_head.py line 93) + N(0, 0.1), its weight scaled so the logits' spread is
    ``hm_std``. ``calibration_points`` defaults to ``synthetic_point_cloud(cfg, seed)``.
    """
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape, kind in state_dict_spec(cfg):
        value = _random_value(kind, shape, gen, hm_std)
        state[key] = value.to(torch.int64 if kind in ("bn_count", "step") else torch.float32)
    if calibration_points is None:
        calibration_points = synthetic_point_cloud(cfg, seed)
    _calibrate(state, cfg, calibration_points, gen, hm_std)
    return {
        "epoch": 20,
        "it": 0,
        "model_state": state,
        "optimizer_state": None,
        "version": f"pcdet+0.6.0+{COMMIT[:7]}",
    }


@torch.no_grad()
def _calibrate(
    state: dict[str, torch.Tensor],
    cfg: CenterPointConfig,
    points: np.ndarray,
    gen: torch.Generator,
    hm_std: float,
) -> None:
    """Set each BatchNorm's running stats from its input on ``points`` (perturbed), in
    forward order, then scale each head output conv to its target spread."""

    def observe(prefix: str, x: torch.Tensor) -> None:
        dims = [d for d in range(x.dim()) if d != 1]
        mean, std = x.mean(dim=dims), x.std(dim=dims).clamp_min(1e-3)
        c = mean.shape[0]
        state[f"{prefix}.running_mean"] = mean + 0.5 * std * torch.randn(c, generator=gen)
        state[f"{prefix}.running_var"] = std**2 * (0.5 + 1.5 * torch.rand(c, generator=gen))

    voxels, coords, counts = points_to_voxels(mask_points_by_range(points, cfg), cfg)
    features = mean_vfe(torch.from_numpy(voxels), torch.from_numpy(counts))
    with observe_batch_norm(observe):
        encoded = backbone_3d(features, torch.from_numpy(coords), state, cfg)
        bev = backbone_2d(height_compression(encoded), state, cfg)
        maps = center_head(bev, state, cfg)
    for t, task_maps in enumerate(maps):
        for name, _out, num_conv in head_names(cfg, t):
            last = f"dense_head.heads_list.{t}.{name}.{num_conv - 1}"
            raw = task_maps[name] - state[f"{last}.bias"][:, None, None]
            spread = raw.flatten(1).std(dim=1).clamp_min(1e-6)
            target = hm_std if name == "hm" else HEAD_OUTPUT_STD.get(name, 1.0)
            state[f"{last}.weight"] = (
                state[f"{last}.weight"] * (target / spread)[:, None, None, None]
            )


def synthetic_point_cloud(cfg: CenterPointConfig, seed: int = 0, num_boxes: int = 10) -> np.ndarray:
    """A seeded nuScenes-like cloud (N, 5) float32: x, y, z, intensity (0-255), timestamp
    (sweep time lag in {0, 0.05, ..., 0.45} s).

    A ground plane at z ~ -1.8 m over 1.15x the x/y range (so some points fall outside it),
    ``num_boxes`` box-shaped clusters (random size, yaw, points on the sides and top) inside
    the range, a few points above z_max and below z_min, and one dense cluster of more than
    ``max_points_per_voxel`` points in a single voxel.
    """
    rng = np.random.default_rng(seed)
    x0, y0, z0, x1, y1, z1 = cfg.point_cloud_range
    cx, cy, hx, hy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    n_ground = 6000
    ground = np.stack(
        [
            cx + rng.uniform(-1.15, 1.15, n_ground) * hx,
            cy + rng.uniform(-1.15, 1.15, n_ground) * hy,
            -1.8 + rng.normal(0, 0.03, n_ground),
        ],
        axis=1,
    )
    parts = [ground]
    for _ in range(num_boxes):
        size = rng.uniform([0.5, 0.5, 1.0], [5.0, 2.5, 3.0])
        centre = [cx + rng.uniform(-0.85, 0.85) * hx, cy + rng.uniform(-0.85, 0.85) * hy]
        yaw = rng.uniform(-np.pi, np.pi)
        n = int(rng.integers(80, 400))
        local = rng.uniform(-0.5, 0.5, (n, 3)) * size
        face = rng.integers(0, 3, n)  # snap one coordinate to a side (x, y) or the top (z)
        sign = np.where(rng.random(n) < 0.5, -0.5, 0.5)
        sign[face == 2] = 0.5
        local[np.arange(n), face] = sign * size[face]
        c, s = np.cos(yaw), np.sin(yaw)
        xyz = np.stack(
            [
                centre[0] + c * local[:, 0] - s * local[:, 1],
                centre[1] + s * local[:, 0] + c * local[:, 1],
                -1.8 + size[2] / 2 + local[:, 2],
            ],
            axis=1,
        )
        parts.append(xyz)
    outside_z = np.stack(
        [
            cx + rng.uniform(-0.9, 0.9, 60) * hx,
            cy + rng.uniform(-0.9, 0.9, 60) * hy,
            np.where(
                rng.random(60) < 0.5,
                z1 + rng.uniform(0.05, 1.0, 60),
                z0 - rng.uniform(0.05, 1.0, 60),
            ),
        ],
        axis=1,
    )
    vx, vy, vz = cfg.voxel_size
    crowd = np.array([cx + 0.35 * vx, cy + 0.35 * vy, -0.95]) + rng.uniform(0, 0.3, (25, 3)) * [
        vx,
        vy,
        vz,
    ]
    xyz = np.concatenate([*parts, outside_z, crowd])
    intensity = rng.uniform(0, 255, len(xyz))
    lag = rng.integers(0, 10, len(xyz)) * 0.05
    cloud = np.concatenate([xyz, intensity[:, None], lag[:, None]], axis=1).astype(np.float32)
    return cloud[rng.permutation(len(cloud))]
