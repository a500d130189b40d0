"""A standalone restatement of OpenPCDet's CenterPoint inference (nuScenes, res3d configs).

Transcribed from OpenPCDet commit 8cacccec11db6f59bf6934600c9a175dae254806
(github.com/open-mmlab/OpenPCDet, 2024-04-17); every function cites the upstream file and
lines it restates. Configs: ``tools/cfgs/nuscenes_models/cbgs_voxel01_res3d_centerpoint.yaml``
and ``cbgs_voxel0075_res3d_centerpoint.yaml`` (see ``openpcdet_config``). Voxelization
restates spconv 2.3.8's ``Point2VoxelCPU``, which OpenPCDet calls. Uses torch and numpy only;
shares no code with bevkd.

One frame (OpenPCDet batches frames, but in eval mode nothing couples them):
points (N, 5: x, y, z, intensity, timestamp) -> range mask -> voxels (first-seen order,
<= 10 points each, coords (z, y, x)) -> MeanVFE -> VoxelResBackBone8x -> HeightCompression
(C * D, H, W) -> BaseBEVBackbone -> CenterHead (shared conv + one SeparateHead per task) ->
decode (top-K, sigmoid, exp dims, atan2(sin, cos)) -> per-task rotated-BEV NMS -> boxes.

Output conventions: boxes (N, 9) = x, y, z (box centre), dx, dy, dz, heading, vx, vy in the
LiDAR frame; labels are 1-based indices into ``class_names`` (center_head.py line 363);
boxes come task by task, each task's in descending score.

Not restated: OpenPCDet shuffles points at test time too (data_processor.py lines 95-105,
SHUFFLE_ENABLED test: True). That only changes which <= 10 points a crowded voxel keeps, the
voxel order, and which voxels survive MAX_NUMBER_OF_VOXELS; callers feed the same point
order to both sides instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from .openpcdet_config import (
    CLASS_NAMES,
    CLASS_NAMES_EACH_HEAD,
    COMMIT,
    CenterPointConfig,
    reduced_config,
    upstream_config,
)
from .openpcdet_decode import generate_predicted_boxes
from .openpcdet_networks import backbone_2d, backbone_3d, center_head, height_compression
from .openpcdet_state import state_dict_spec

__all__ = [
    "CLASS_NAMES",
    "CLASS_NAMES_EACH_HEAD",
    "COMMIT",
    "CenterPointConfig",
    "FrameOutput",
    "forward",
    "load_model_state",
    "mask_points_by_range",
    "mean_vfe",
    "points_to_voxels",
    "reduced_config",
    "upstream_config",
]


@dataclass(frozen=True)
class FrameOutput:
    """Everything the reference computes for one frame (float tensors in the forward's dtype).

    voxels (M, P, F) with zero padding; voxel_num_points (M,) int32; voxel_coords (M, 3)
    int32 (z, y, x); voxel_features (M, F) MeanVFE output; spatial_features (C * D, H, W) after
    HeightCompression; spatial_features_2d (C2, H, W) from BaseBEVBackbone; pred_maps: per task
    a dict name -> raw head map (C, H, W) for center, center_z, dim, rot, vel, hm (logits);
    pred_boxes (N, 9); pred_scores (N,); pred_labels (N,) int64, 1-based.
    """

    voxels: torch.Tensor
    voxel_num_points: torch.Tensor
    voxel_coords: torch.Tensor
    voxel_features: torch.Tensor
    spatial_features: torch.Tensor
    spatial_features_2d: torch.Tensor
    pred_maps: list[dict[str, torch.Tensor]]
    pred_boxes: torch.Tensor
    pred_scores: torch.Tensor
    pred_labels: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        """The fields by name (the tensors themselves, not copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def mask_points_by_range(points: np.ndarray, cfg: CenterPointConfig) -> np.ndarray:
    """data_processor.py lines 79-85 with common_utils.py lines 78-81: keep points with
    x_min <= x <= x_max and y_min <= y <= y_max (both ends inclusive; z is not checked)."""
    r = cfg.point_cloud_range
    keep = (
        (points[:, 0] >= r[0])
        & (points[:, 0] <= r[3])
        & (points[:, 1] >= r[1])
        & (points[:, 1] <= r[4])
    )
    return points[keep]


def points_to_voxels(
    points: np.ndarray, cfg: CenterPointConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, F) float32 points -> voxels (M, P, F), coords (M, 3) int32 (z, y, x), counts (M,).

    OpenPCDet's transform_points_to_voxels (data_processor.py lines 133-180; spconv 2 path of
    VoxelGeneratorWrapper, lines 16-61) calls spconv's Point2VoxelCPU3d(vsize_xyz,
    coors_range_xyz, num_point_features, max_num_points_per_voxel, max_num_voxels), whose loop
    this restates (spconv 2.3.8 ``spconv/csrc/sparse/pointops.py`` lines 545-585 and 589-700,
    ``zyx=True``): points in input order; coordinate c = floor((p - range_min) / vsize) in
    float32 per axis; a point with c < 0 or c >= grid is skipped; a voxel gets the next index
    the first time one of its points is seen (no more once ``max_num_voxels`` exist; later
    points of new voxels are dropped); a voxel keeps its first ``max_points_per_voxel`` points;
    unused slots are zero.
    """
    pts = np.ascontiguousarray(points, dtype=np.float32)
    lo = np.asarray(cfg.point_cloud_range[:3], dtype=np.float32)
    size = np.asarray(cfg.voxel_size, dtype=np.float32)
    grid = np.asarray(cfg.grid_size)
    cell = np.floor((pts[:, :3] - lo) / size).astype(np.int64)  # float32 arithmetic, as C++
    inside = ((cell >= 0) & (cell < grid)).all(axis=1)
    voxels = np.zeros((cfg.max_num_voxels, cfg.max_points_per_voxel, pts.shape[1]), np.float32)
    coords = np.zeros((cfg.max_num_voxels, 3), np.int32)
    counts = np.zeros(cfg.max_num_voxels, np.int32)
    index: dict[tuple[int, int, int], int] = {}
    for i in np.flatnonzero(inside):
        key = (int(cell[i, 2]), int(cell[i, 1]), int(cell[i, 0]))  # (z, y, x)
        v = index.get(key)
        if v is None:
            if len(index) >= cfg.max_num_voxels:
                continue
            v = index[key] = len(index)
            coords[v] = key
        if counts[v] < cfg.max_points_per_voxel:
            voxels[v, counts[v]] = pts[i]
            counts[v] += 1
    m = len(index)
    return voxels[:m], coords[:m], counts[:m]


def mean_vfe(voxels: torch.Tensor, num_points: torch.Tensor) -> torch.Tensor:
    """mean_vfe.py lines 25-29: sum over all P slots (padding is zero) / max(count, 1)."""
    total = voxels.sum(dim=1)
    normalizer = torch.clamp_min(num_points.view(-1, 1), min=1.0).type_as(voxels)
    return (total / normalizer).contiguous()


def load_model_state(
    checkpoint: Mapping[str, Any], cfg: CenterPointConfig, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Check ``checkpoint['model_state']`` against the keys and shapes the upstream modules
    register for ``cfg``, and return it as float tensors of ``dtype``.

    Like detector3d_template.py lines 330-359 (``_load_state_dict``), a sparse-conv weight in
    spconv 1.x layout (kD, kH, kW, C_in, C_out) is permuted to spconv 2.x (C_out, kD, kH, kW,
    C_in). Unlike upstream (strict=False, which logs and keeps random init), a missing key or
    a shape that does not fit is an error here.
    """
    state = checkpoint["model_state"]
    out: dict[str, torch.Tensor] = {}
    for key, shape, kind in state_dict_spec(cfg):
        if key not in state:
            raise KeyError(f"model_state has no {key!r} (expected shape {shape}); is cfg right?")
        value = torch.as_tensor(state[key])
        if kind == "spconv" and tuple(value.shape) != shape and value.dim() == 5:
            # lines 341-348: first transpose(-1, -2), else permute(4, 0, 1, 2, 3)
            if tuple(value.transpose(-1, -2).shape) == shape:
                value = value.transpose(-1, -2).contiguous()
            elif tuple(value.permute(4, 0, 1, 2, 3).shape) == shape:
                value = value.permute(4, 0, 1, 2, 3).contiguous()
        if tuple(value.shape) != shape:
            raise ValueError(
                f"model_state[{key!r}] has shape {tuple(value.shape)}, expected {shape}"
            )
        out[key] = value.to(dtype) if value.is_floating_point() else value
    return out


@torch.no_grad()
def forward(
    checkpoint: Mapping[str, Any],
    points: np.ndarray,
    cfg: CenterPointConfig,
    dtype: torch.dtype = torch.float32,
) -> FrameOutput:
    """One frame through CenterPoint (pcdet/models/detectors/centerpoint.py lines 9-22, eval):
    module_list vfe -> backbone_3d -> map_to_bev -> backbone_2d -> dense_head, then the
    head's generate_predicted_boxes. ``points`` (N, 5) x, y, z, intensity, timestamp.
    ``dtype`` float64 gives a reference with negligible rounding to compare float32 models
    against (voxelization stays float32, as upstream).
    """
    state = load_model_state(checkpoint, cfg, dtype)
    if points.ndim != 2 or points.shape[1] != cfg.num_point_features:
        raise ValueError(f"points must be (N, {cfg.num_point_features}), got {points.shape}")
    voxels_np, coords_np, counts_np = points_to_voxels(mask_points_by_range(points, cfg), cfg)
    voxels = torch.from_numpy(voxels_np).to(dtype)
    counts = torch.from_numpy(counts_np)
    coords = torch.from_numpy(coords_np)
    features = mean_vfe(voxels, counts)
    encoded = backbone_3d(features, coords, state, cfg)
    spatial = height_compression(encoded)
    spatial_2d = backbone_2d(spatial, state, cfg)
    maps = center_head(spatial_2d, state, cfg)
    boxes, scores, labels = generate_predicted_boxes(maps, cfg)
    return FrameOutput(
        voxels, counts, coords, features, spatial, spatial_2d, maps, boxes, scores, labels
    )
