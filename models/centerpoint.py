"""An imported CenterPoint (``model.kind: centerpoint``): the network of an mmdet3d 1.x or
OpenPCDet CenterPoint, rebuilt from :class:`~bevkd.pipeline.config.CenterPointConfig`, so that
its converted weights (``bevkd teacher import``, :mod:`bevkd.models.foreign`) give the source
framework's own outputs. Read top to bottom:

points -> hard voxelization (the first ``max_points_per_voxel`` points of each voxel, in input
order; voxels beyond ``max_voxels`` in order of their first point dropped) ->
  voxel: mean of each voxel's points -> sparse 3D encoder (``lidar_bev_pre``), or
  pillar: PillarFeatureNet over the padded points -> scatter to the voxel grid ->
SECOND 2D backbone (one output per stage) -> SECONDFPN neck -> CenterHead: a shared conv,
then one task head per class group (offset, z, size, rotation, velocity, heatmap) ->
per-task decoding and NMS as the source framework does it (circle or rotated BEV IoU).

What bevkd's store and students see (:class:`TeacherOutput`):
- ``lidar_bev`` / ``lidar_bev_s2``: the backbone outputs at the BEV grid and at half of it
  (one of them must be at the grid, i.e. the head's ``out_size_factor``);
- ``lidar_bev_pre``: the voxel encoder's dense map-to-BEV output (CMKD's layer), when it is at
  the BEV grid (voxel models; a pillar model's scatter is finer than its head and has none);
- ``head.heatmap``: (B, K, H, W) logits, the tasks' classes in task order;
- ``head.regression``: (B, 10, H, W) in bevkd's channel order, each cell taken from the task
  whose heatmap is highest there; ``head.task_regression`` keeps every task's map;
- ``detections``: the source's decoded boxes, in bevkd's convention (z at the box centre).

Both sources' regressions already are bevkd's: offsets from the cell corner, z at the centre
(mmdet3d's ``height`` is the gravity centre, OpenPCDet's ``center_z`` the centre), log sizes
(l, w, h), velocity; only OpenPCDet's (cos, sin) rotation is swapped to (sin, cos).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from bevkd.models import box_coder
from bevkd.models.outputs import Detections, HeadOutput, TeacherOutput
from bevkd.models.voxelize import Voxels, voxelize
from bevkd.pipeline.config import CenterPointConfig, GridConfig

if TYPE_CHECKING:
    from bevkd.datasets.frame import Batch

# bevkd branch name -> channels, in REGRESSION_CHANNELS order; then the heatmap.
BRANCHES: tuple[tuple[str, int], ...] = (
    ("offset", 2),
    ("z", 1),
    ("size", 3),
    ("rotation", 2),
    ("velocity", 2),
)


# ------------------------------------------------------------------------------------------
# Encoders
# ------------------------------------------------------------------------------------------


def padded_points(points: torch.Tensor, vox: Voxels, max_points: int) -> torch.Tensor:
    """(V, max_points, F) of each voxel's kept points in input order, zero-padded: the layout
    of hard voxelization's ``voxels`` tensor."""
    kept = torch.nonzero(vox.point_voxel >= 0, as_tuple=False).squeeze(1)
    vid = vox.point_voxel[kept]
    order = torch.sort(vid, stable=True).indices  # groups voxels, input order within each
    sorted_vid = vid[order]
    start = torch.zeros(vox.num_points.numel(), dtype=torch.long, device=points.device)
    start[1:] = torch.cumsum(vox.num_points, 0)[:-1]
    slot = torch.arange(order.numel(), device=points.device) - start[sorted_vid]
    out = torch.zeros(
        (vox.num_points.numel(), max_points, points.shape[1] - 1),
        dtype=points.dtype,
        device=points.device,
    )
    out[sorted_vid, slot] = points[kept[order], 1:]
    return out


class PFNLayer(nn.Module):
    """Linear (no bias) -> BatchNorm1d -> ReLU per point, then the max over the pillar's slots
    (padded slots included, as upstream: their zeros pass through the norm too); a layer that
    is not the last concatenates the max back onto every point."""

    def __init__(self, cin: int, cout: int, last: bool, eps: float) -> None:
        super().__init__()
        self.last = last
        width = cout if last else cout // 2
        self.linear = nn.Linear(cin, width, bias=False)
        self.norm = nn.BatchNorm1d(width, eps=eps, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm(self.linear(x).transpose(1, 2)).transpose(1, 2))
        peak = y.max(dim=1, keepdim=True).values
        if self.last:
            return peak
        return torch.cat([y, peak.expand_as(y)], dim=2)


class PillarFeatureNet(nn.Module):
    """Padded pillar points (V, M, F) -> pillar features (V, C): the raw features, the offset
    from the pillar's point mean, the offset from the pillar centre (and optionally the range),
    zeroed on padded slots, through the PFN layers."""

    def __init__(self, cfg: CenterPointConfig, grid: GridConfig) -> None:
        super().__init__()
        self.cfg = cfg
        cin = cfg.point_features + 3 * cfg.pillar_cluster_center + 3 * cfg.pillar_voxel_center
        cin += int(cfg.pillar_distance)
        widths = [cin, *cfg.pillar_channels]
        self.pfn_layers = nn.ModuleList(
            PFNLayer(widths[i], widths[i + 1], i == len(widths) - 2, cfg.sparse_bn_eps)
            for i in range(len(widths) - 1)
        )
        vx, vy, vz = grid.voxel_size
        lo = grid.point_cloud_range
        self.size = (vx, vy, vz)
        self.offset = (vx / 2 + lo[0], vy / 2 + lo[1], vz / 2 + lo[2])

    def forward(
        self, points: torch.Tensor, num_points: torch.Tensor, coords: torch.Tensor
    ) -> torch.Tensor:
        cfg = self.cfg
        raw = points.clone()
        decorations = []
        if cfg.pillar_cluster_center:
            mean = raw[:, :, :3].sum(dim=1, keepdim=True) / num_points.to(raw.dtype).view(-1, 1, 1)
            decorations.append(raw[:, :, :3] - mean)
        if cfg.pillar_voxel_center:
            centre = torch.stack(
                [coords[:, 3 - i].to(raw.dtype) * self.size[i] + self.offset[i] for i in range(3)],
                dim=1,
            )
            f_centre = raw[:, :, :3] - centre[:, None, :]
            if cfg.pillar_legacy:  # upstream's in-place subtraction overwrote raw x, y, z
                raw = torch.cat([f_centre, raw[:, :, 3:]], dim=2)
            decorations.append(f_centre)
        if cfg.pillar_distance:
            decorations.append(torch.linalg.vector_norm(raw[:, :, :3], dim=2, keepdim=True))
        x = torch.cat([raw, *decorations], dim=2)
        slots = torch.arange(x.shape[1], device=x.device)
        x = x * (slots[None, :] < num_points[:, None]).unsqueeze(2).to(x.dtype)
        for layer in self.pfn_layers:
            x = layer(x)
        return x.squeeze(1)


def scatter_to_bev(
    features: torch.Tensor, coords: torch.Tensor, batch_size: int, ny: int, nx: int
) -> torch.Tensor:
    """Pillar features (V, C) at coords (V, 4) (batch, z, y, x) -> (B, C, ny, nx)."""
    canvas = features.new_zeros(batch_size, features.shape[1], ny * nx)
    index = coords[:, 2].long() * nx + coords[:, 3].long()
    canvas[coords[:, 0].long(), :, index] = features
    return canvas.view(batch_size, features.shape[1], ny, nx)


# ------------------------------------------------------------------------------------------
# 2D backbone, neck, head
# ------------------------------------------------------------------------------------------


def _conv_bn_relu(
    cin: int, cout: int, stride: int, eps: float, bias: bool = False
) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias),
        nn.BatchNorm2d(cout, eps=eps, momentum=0.01),
        nn.ReLU(inplace=True),
    ]


class SECOND(nn.Module):
    """Stages of a strided 3x3 conv and ``layers`` 3x3 convs (BN, ReLU); every stage's output."""

    def __init__(self, cin: int, cfg: CenterPointConfig) -> None:
        super().__init__()
        blocks = []
        widths = [cin, *cfg.backbone_channels]
        for i, (layers, stride) in enumerate(
            zip(cfg.backbone_layers, cfg.backbone_strides, strict=True)
        ):
            block = _conv_bn_relu(widths[i], widths[i + 1], stride, cfg.bn_eps_2d)
            for _ in range(layers):
                block += _conv_bn_relu(widths[i + 1], widths[i + 1], 1, cfg.bn_eps_2d)
            blocks.append(nn.Sequential(*block))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


class SECONDFPN(nn.Module):
    """Each backbone output to the head's resolution (deconv up, strided conv down, or a 1x1
    conv or deconv at stride 1), BN, ReLU; concatenated."""

    def __init__(self, cfg: CenterPointConfig) -> None:
        super().__init__()
        deblocks = []
        for cin, cout, stride in zip(
            cfg.backbone_channels, cfg.neck_channels, cfg.neck_strides, strict=True
        ):
            up: nn.Module
            if stride > 1 or (stride == 1 and not cfg.neck_conv_for_no_stride):
                k = round(stride)
                up = nn.ConvTranspose2d(cin, cout, k, stride=k, bias=False)
            else:
                k = round(1 / stride)
                up = nn.Conv2d(cin, cout, k, stride=k, bias=False)
            deblocks.append(
                nn.Sequential(
                    up,
                    nn.BatchNorm2d(cout, eps=cfg.bn_eps_2d, momentum=0.01),
                    nn.ReLU(inplace=True),
                )
            )
        self.deblocks = nn.ModuleList(deblocks)
        self.out_channels = sum(cfg.neck_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(
            [block(x) for block, x in zip(self.deblocks, features, strict=True)], dim=1
        )


def _branch(cin: int, cout: int, convs: int, cfg: CenterPointConfig) -> nn.Sequential:
    """``convs - 1`` conv-BN-ReLU blocks at ``head_channels``, then a conv with bias."""
    k = cfg.final_kernel
    layers: list[nn.Module] = []
    for _ in range(convs - 1):
        layers.append(
            nn.Sequential(
                nn.Conv2d(cin, cfg.head_channels, k, padding=k // 2, bias=cfg.head_conv_bias),
                nn.BatchNorm2d(cfg.head_channels, eps=cfg.head_bn_eps),
                nn.ReLU(inplace=True),
            )
        )
        cin = cfg.head_channels
    layers.append(nn.Conv2d(cin, cout, k, padding=k // 2, bias=True))
    return nn.Sequential(*layers)


class GroupedCenterHead(nn.Module):
    """A shared 3x3 conv (BN, ReLU), then one task head per class group."""

    def __init__(self, cin: int, cfg: CenterPointConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.shared = nn.Sequential(
            nn.Conv2d(cin, cfg.shared_channels, 3, padding=1, bias=cfg.head_conv_bias),
            nn.BatchNorm2d(cfg.shared_channels, eps=cfg.head_bn_eps),
            nn.ReLU(inplace=True),
        )
        tasks = []
        for classes in cfg.tasks:
            heads = {
                name: _branch(cfg.shared_channels, n, cfg.head_convs, cfg) for name, n in BRANCHES
            }
            heads["heatmap"] = _branch(cfg.shared_channels, len(classes), cfg.heatmap_convs, cfg)
            tasks.append(nn.ModuleDict(heads))
        self.tasks = nn.ModuleList(tasks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> heatmap logits (B, K, H, W) over all tasks' classes, regression (B, T, 10, H, W)
        in bevkd's channel order."""
        x = self.shared(x)
        heatmaps, regressions = [], []
        for task in self.tasks:
            assert isinstance(task, nn.ModuleDict)
            parts = [task[name](x) for name, _ in BRANCHES]
            if self.cfg.rotation_order == "cos_sin":
                parts[3] = parts[3].flip(1)
            regressions.append(torch.cat(parts, dim=1))
            heatmaps.append(task["heatmap"](x))
        return torch.cat(heatmaps, dim=1), torch.stack(regressions, dim=1)


def regression_per_cell(
    heatmap: torch.Tensor, regression: torch.Tensor, tasks: Sequence[Sequence[str]]
) -> torch.Tensor:
    """(B, 10, H, W): at each cell, the regression of the task whose best class logit is
    highest there (the box a decoder would take from that cell); ties go to the first task."""
    bounds = np.cumsum([0, *[len(t) for t in tasks]])
    best = torch.stack(
        [heatmap[:, bounds[i] : bounds[i + 1]].amax(dim=1) for i in range(len(tasks))], dim=1
    )  # (B, T, H, W)
    chosen = best.argmax(dim=1)  # (B, H, W)
    index = chosen[:, None, None].expand(-1, 1, regression.shape[2], -1, -1)
    return regression.gather(1, index).squeeze(1)


# ------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------


def topk_cells(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``k`` of (C, H, W) scores as both sources take them: the top k cells of each class,
    then the top k of those. -> scores (k,), class (k,), flat cell index (k,)."""
    c, h, w = scores.shape
    per_class, cells = torch.topk(scores.reshape(c, h * w), k)
    top, which = torch.topk(per_class.reshape(-1), k)
    return top, torch.div(which, k, rounding_mode="floor"), cells.reshape(-1)[which]


def circle_nms(
    centres: np.ndarray, scores: np.ndarray, min_radius: float, post_max: int
) -> list[int]:
    """Greedy NMS on centre distance: a box is dropped when its squared centre distance to a
    kept, higher-scoring box is at most ``min_radius`` (upstream compares the square with the
    radius, unsquared). Order: scores descending (numpy's argsort, reversed)."""
    order = scores.argsort()[::-1]
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for a, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        rest = order[a + 1 :]
        d2 = ((centres[rest] - centres[i]) ** 2).sum(axis=1)
        suppressed[rest[d2 <= min_radius]] = True
    return keep[:post_max]


def rotated_nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou: float, pre_max: int, post_max: int
) -> torch.Tensor:
    """Class-agnostic greedy NMS on the rotated BEV IoU of (N, >=7) boxes, as both sources do
    it within a task: the ``pre_max`` best by score, a box dropped when its IoU with a kept one
    exceeds ``iou`` (:func:`bevkd.models.box_coder.rotated_nms` with one class), the first
    ``post_max`` kept. Indices into the input."""
    order = scores.sort(descending=True).indices[:pre_max]
    one_class = torch.zeros(len(order), dtype=torch.long, device=boxes.device)
    kept = box_coder.rotated_nms(boxes[order], scores[order], one_class, iou)
    return order[kept][:post_max]


def decode_task(
    heat: torch.Tensor,
    reg: torch.Tensor,
    offset: int,
    task: int,
    cfg: CenterPointConfig,
    grid: GridConfig,
) -> Detections:
    """One sample's boxes from one task head: (C, H, W) logits, (10, H, W) regression."""
    scores, cls, cells = topk_cells(heat.sigmoid(), min(cfg.max_per_task, heat[0].numel()))
    _, h, w = heat.shape
    rows = torch.div(cells, w, rounding_mode="floor").to(reg.dtype)
    cols = (cells % w).to(reg.dtype)
    r = reg.reshape(10, h * w)[:, cells]
    step = grid.voxel_size[0] * grid.bev_stride, grid.voxel_size[1] * grid.bev_stride
    x = (cols + r[0]) * step[0] + grid.point_cloud_range[0]
    y = (rows + r[1]) * step[1] + grid.point_cloud_range[1]
    size = torch.exp(r[3:6])
    yaw = torch.atan2(r[6], r[7])
    boxes = torch.stack([x, y, r[2], size[0], size[1], size[2], yaw, r[8], r[9]], dim=1)
    lo = torch.tensor(cfg.post_center_range[:3], dtype=boxes.dtype, device=boxes.device)
    hi = torch.tensor(cfg.post_center_range[3:], dtype=boxes.dtype, device=boxes.device)
    inside = ((boxes[:, :3] >= lo) & (boxes[:, :3] <= hi)).all(dim=1)
    keep = inside & (scores > cfg.score_threshold)
    boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
    if cfg.nms == "circle":
        kept = circle_nms(
            boxes[:, :2].detach().cpu().numpy(), scores.detach().cpu().numpy(),
            cfg.min_radius[task], cfg.post_nms,
        )  # fmt: skip
        index = torch.tensor(kept, dtype=torch.long, device=boxes.device)
    else:
        index = rotated_nms(boxes, scores, cfg.nms_iou, cfg.pre_nms, cfg.post_nms).to(boxes.device)
    return Detections(boxes[index], scores[index], cls[index].long() + offset)


def decode_tasks(
    heatmap: torch.Tensor, regression: torch.Tensor, cfg: CenterPointConfig, grid: GridConfig
) -> list[Detections]:
    """Per-task decoding and NMS, tasks concatenated in task order, per sample.

    ``heatmap`` (B, K, H, W) logits; ``regression`` (B, T, 10, H, W). Boxes (N, 9) in bevkd's
    convention, z at the centre; labels index the tasks' classes in task order."""
    bounds = np.cumsum([0, *[len(t) for t in cfg.tasks]])
    out = []
    for b in range(heatmap.shape[0]):
        parts = [
            decode_task(
                heatmap[b, bounds[t] : bounds[t + 1]],
                regression[b, t],
                int(bounds[t]),
                t,
                cfg,
                grid,
            )
            for t in range(len(cfg.tasks))
        ]
        out.append(
            Detections(
                torch.cat([p.boxes for p in parts]),
                torch.cat([p.scores for p in parts]),
                torch.cat([p.labels for p in parts]),
            )
        )
    return out


# ------------------------------------------------------------------------------------------
# Sensor frame <-> ego frame
# ------------------------------------------------------------------------------------------


def points_to_sensor(points: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    """Points (P, 1 + F) in the (augmented) ego frame -> the sensor frame of their sample;
    ``poses`` (B, 4, 4) sensor -> ego. Features other than x, y, z are kept."""
    inverse = torch.linalg.inv(poses.double()).to(points.dtype)
    b = points[:, 0].long()
    xyz = torch.einsum("pij,pj->pi", inverse[b, :3, :3], points[:, 1:4]) + inverse[b, :3, 3]
    return torch.cat([points[:, :1], xyz, points[:, 4:]], dim=1)


def _yaw(poses: torch.Tensor) -> torch.Tensor:
    return torch.atan2(poses[:, 1, 0], poses[:, 0, 0])


def _sample(maps: torch.Tensor, poses: torch.Tensor, grid: GridConfig, mode: str) -> torch.Tensor:
    """Maps (B, C, h, w) on the sensor frame's copy of the BEV grid, sampled at the centres of
    the ego grid's cells (their position in the sensor frame through each pose's yaw and x-y
    translation); outside the sensor grid: 0."""
    _, _, h, w = maps.shape
    x0, y0, x1, y1 = (grid.point_cloud_range[i] for i in (0, 1, 3, 4))
    dtype, device = maps.dtype, maps.device
    xs = x0 + (torch.arange(w, device=device, dtype=dtype) + 0.5) * (x1 - x0) / w
    ys = y0 + (torch.arange(h, device=device, dtype=dtype) + 0.5) * (y1 - y0) / h
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    yaw = _yaw(poses).to(dtype)
    c, s = torch.cos(yaw)[:, None, None], torch.sin(yaw)[:, None, None]
    dx = gx[None] - poses[:, 0, 3].to(dtype)[:, None, None]
    dy = gy[None] - poses[:, 1, 3].to(dtype)[:, None, None]
    sx, sy = c * dx + s * dy, -s * dx + c * dy  # R(-yaw) (p - t)
    where = torch.stack([(sx - x0) / (x1 - x0) * 2 - 1, (sy - y0) / (y1 - y0) * 2 - 1], dim=-1)
    return torch.nn.functional.grid_sample(
        maps, where, mode=mode, padding_mode="zeros", align_corners=False
    )


def _regression_to_ego(reg: torch.Tensor, poses: torch.Tensor, grid: GridConfig) -> torch.Tensor:
    """A (B, 10, H, W) regression map of the sensor grid -> the ego grid's: each cell's box is
    decoded, moved into the ego frame, taken at the nearest sensor cell of each ego cell, and
    encoded again against the ego cell."""
    _, _, h, w = reg.shape
    x0, y0 = grid.point_cloud_range[0], grid.point_cloud_range[1]
    cell_x = (grid.point_cloud_range[3] - x0) / w
    cell_y = (grid.point_cloud_range[4] - y0) / h
    cols = torch.arange(w, device=reg.device, dtype=reg.dtype).view(1, 1, w)
    rows = torch.arange(h, device=reg.device, dtype=reg.dtype).view(1, h, 1)
    centre = torch.stack(
        [(cols + reg[:, 0]) * cell_x + x0, (rows + reg[:, 1]) * cell_y + y0, reg[:, 2]], dim=1
    )  # (B, 3, H, W) in the sensor frame
    p = poses.to(reg.dtype)
    moved = torch.einsum("bij,bjhw->bihw", p[:, :3, :3], centre) + p[:, :3, 3, None, None]
    yaw = _yaw(poses).to(reg.dtype)[:, None, None]
    c, s = torch.cos(yaw), torch.sin(yaw)
    sin = reg[:, 6] * c + reg[:, 7] * s
    cos = reg[:, 7] * c - reg[:, 6] * s
    vx, vy = c * reg[:, 8] - s * reg[:, 9], s * reg[:, 8] + c * reg[:, 9]
    boxes = torch.cat(
        [moved, reg[:, 3:6], sin[:, None], cos[:, None], vx[:, None], vy[:, None]], dim=1
    )
    boxes = _sample(boxes, poses, grid, "nearest")
    out = boxes.clone()
    out[:, 0] = (boxes[:, 0] - x0) / cell_x - cols
    out[:, 1] = (boxes[:, 1] - y0) / cell_y - rows
    return out


def boxes_to_ego(det: Detections, pose: torch.Tensor) -> Detections:
    """Boxes (N, 9) of the sensor frame -> the ego frame: centres through the pose, yaw and
    velocity rotated by its yaw."""
    boxes = det.boxes.clone()
    p = pose.to(boxes.dtype)
    boxes[:, :3] = boxes[:, :3] @ p[:3, :3].T + p[:3, 3]
    yaw = torch.atan2(p[1, 0], p[0, 0])
    boxes[:, 6] = torch.atan2(torch.sin(boxes[:, 6] + yaw), torch.cos(boxes[:, 6] + yaw))
    c, s = torch.cos(yaw), torch.sin(yaw)
    boxes[:, 7], boxes[:, 8] = (
        c * det.boxes[:, 7] - s * det.boxes[:, 8],
        s * det.boxes[:, 7] + c * det.boxes[:, 8],
    )
    return Detections(boxes, det.scores, det.labels)


# ------------------------------------------------------------------------------------------
# The teacher
# ------------------------------------------------------------------------------------------


class CenterPointTeacher(nn.Module):
    """An imported CenterPoint as a bevkd LiDAR teacher (the ``lidar`` role of a store)."""

    def __init__(self, cfg: CenterPointConfig, grid: GridConfig, encoder: nn.Module | None) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid_cfg = grid
        self.bev_grid = grid.bev_grid
        self.class_names = cfg.classes
        if cfg.encoder == "voxel":
            if encoder is None:
                raise ValueError("a voxel CenterPoint needs its sparse encoder")
            self.encoder = encoder
            encoder_channels = self._voxel_out_channels()
        else:
            self.pillars = PillarFeatureNet(cfg, grid)
            encoder_channels = cfg.pillar_channels[-1]
        self.backbone = SECOND(encoder_channels, cfg)
        self.neck = SECONDFPN(cfg)
        self.head = GroupedCenterHead(self.neck.out_channels, cfg)

    def _voxel_out_channels(self) -> int:
        depth = self.cfg.sparse_shape[0]
        for spec in self.cfg.sparse_layers:
            if spec[0] in ("down", "out"):  # kernel 3 in z, stride 2, padding pad_z
                depth = (depth + 2 * spec[3] - 3) // 2 + 1
        return self.cfg.sparse_layers[-1][2] * depth

    def voxelize(self, points: torch.Tensor, batch_size: int) -> Voxels:
        cfg, grid = self.cfg, self.grid_cfg
        # Points carry (batch, x, y, z, features...): keep as many features as the model reads.
        cols = points[:, : 1 + cfg.point_features]
        return voxelize(
            cols, batch_size, grid.point_cloud_range, grid.voxel_size,
            cfg.max_points_per_voxel, cfg.max_voxels,
        )  # fmt: skip

    def encode(self, points: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The encoder's dense BEV: the sparse encoder's output, or the scattered pillars."""
        vox = self.voxelize(points, batch_size)
        if self.cfg.encoder == "voxel":
            return self.encoder(vox.features, vox.coords, batch_size)
        padded = padded_points(
            points[:, : 1 + self.cfg.point_features], vox, self.cfg.max_points_per_voxel
        )
        pillars = self.pillars(padded, vox.num_points, vox.coords)
        _, ny, nx = vox.spatial_shape
        return scatter_to_bev(pillars, vox.coords, batch_size, ny, nx)

    def features(self, bev: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The named distillable maps and the backbone outputs."""
        h, w = self.grid_cfg.bev_shape
        outs = self.backbone(bev)
        named: dict[str, torch.Tensor] = {}
        if bev.shape[-2:] == (h, w):
            named["lidar_bev_pre"] = bev
        for out in outs:
            if out.shape[-2:] == (h, w):
                named["lidar_bev"] = out
            elif out.shape[-2:] == (math.ceil(h / 2), math.ceil(w / 2)):
                named["lidar_bev_s2"] = out
        return named, outs

    def sensor_poses(self, batch: Batch) -> torch.Tensor | None:
        """(B, 4, 4) sensor -> augmented ego, or None where the model runs in the ego frame (or
        every pose is the identity, as on KITTI and the synthetic world's default)."""
        if self.cfg.input_frame == "ego":
            return None
        poses = batch.sensor_poses().to(batch.points.device)
        eye = torch.eye(4, dtype=poses.dtype, device=poses.device)
        return None if torch.allclose(poses, eye.expand_as(poses), atol=1e-9) else poses

    def forward(self, batch: Batch, decode: bool = False) -> TeacherOutput:
        """The network in its own frame (the LiDAR sensor's, for both frameworks' nuScenes
        models): points are moved there from the ego frame, and maps and boxes come back onto
        the ego BEV grid (features and heatmap bilinearly, regressions as moved boxes taken at
        the nearest cell); the identity pose changes nothing."""
        poses = self.sensor_poses(batch)
        points = batch.points if poses is None else points_to_sensor(batch.points, poses)
        bev = self.encode(points, batch.size)
        named, outs = self.features(bev)
        heatmap, task_regression = self.head(self.neck(outs))
        detections = (
            decode_tasks(heatmap, task_regression, self.cfg, self.grid_cfg) if decode else []
        )
        if poses is not None:
            named = {k: _sample(v, poses, self.grid_cfg, "bilinear") for k, v in named.items()}
            heatmap = _sample(heatmap, poses, self.grid_cfg, "bilinear")
            task_regression = torch.stack(
                [_regression_to_ego(task_regression[:, t], poses, self.grid_cfg)
                 for t in range(task_regression.shape[1])], dim=1,
            )  # fmt: skip
            detections = [boxes_to_ego(d, poses[b]) for b, d in enumerate(detections)]
        regression = regression_per_cell(heatmap, task_regression, self.cfg.tasks)
        head = HeadOutput(heatmap=heatmap, regression=regression, task_regression=task_regression)
        return TeacherOutput(features=named, head=head, detections=detections)

    def decode(self, head: HeadOutput) -> list[Detections]:
        if head.task_regression is None:
            raise ValueError("an imported CenterPoint decodes per task: task_regression missing")
        return decode_tasks(head.heatmap, head.task_regression, self.cfg, self.grid_cfg)


def build_centerpoint_teacher(cfg: CenterPointConfig, grid: GridConfig) -> CenterPointTeacher:
    encoder = None
    if cfg.encoder == "voxel":
        from bevkd.models.centerpoint_sparse import CenterPointSparseEncoder  # imports spconv

        encoder = CenterPointSparseEncoder(cfg.sparse_layers, cfg.sparse_shape, cfg.sparse_bn_eps)
    return CenterPointTeacher(cfg, grid, encoder)
