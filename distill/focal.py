"""FocalDistiller / FD3D (Zeng et al., CVPR 2023) as a recipe over a cached LiDAR (or fusion)
teacher. The paper's core was never released; this follows METHODS.md "For bevkd": instances
come from the teacher's cached boxes, masked generative distillation (MGD; Yang et al., ECCV
2022) runs in their footprints, and features are matched at 9 points per box (UniDistill).

Box rows are the store's ``boxes`` rows ``(x, y, z, l, w, h, yaw, vx, vy, score, label)`` in
the ego frame; the grid is :class:`~bevkd.pipeline.geometry.BEVGrid` (rows along +y, columns
along +x, cell centres at .5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bevkd.datasets.student_batch import StudentBatch
from bevkd.distill import losses
from bevkd.distill.base import Recipe
from bevkd.models.camera_student import StudentOutput
from bevkd.pipeline.config import Config
from bevkd.pipeline.geometry import BEVGrid

# The teacher whose instances are distilled -> (its BEV feature field, its boxes field).
TEACHER_INSTANCE_FIELDS: dict[str, tuple[str, str]] = {
    "lidar": ("lidar_bev", "boxes"),
    "fusion": ("fused_bev", "fusion_boxes"),
}

# The 9 representative points of a box in half-sizes along its own (length, width) axes:
# 4 corners, the centre, 4 edge midpoints (UniDistill's choice).
POINT_OFFSETS = (
    (1, 1), (1, -1), (-1, -1), (-1, 1), (0, 0), (1, 0), (0, 1), (-1, 0), (0, -1),
)  # fmt: skip


def box_points(rows: torch.Tensor) -> torch.Tensor:
    """(N, 9, 2) ego x, y of the :data:`POINT_OFFSETS` points of (N, >=7) box rows: a point
    ``(su * l/2, sv * w/2)`` in the box frame, rotated by yaw about the centre."""
    offsets = torch.tensor(POINT_OFFSETS, dtype=rows.dtype, device=rows.device)
    u = offsets[:, 0] * rows[:, 3:4] / 2  # (N, 9)
    v = offsets[:, 1] * rows[:, 4:5] / 2
    cos, sin = torch.cos(rows[:, 6:7]), torch.sin(rows[:, 6:7])
    x = rows[:, 0:1] + u * cos - v * sin
    y = rows[:, 1:2] + u * sin + v * cos
    return torch.stack([x, y], dim=-1)


def footprint_mask(rows: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """(H, W) bool: the cells whose centre lies in some box's rotated footprint
    (``|u| <= l/2`` and ``|v| <= w/2`` in the box frame), plus the cell holding each box
    centre, so a box smaller than a cell (a cone at 0.8 m cells) still marks its instance."""
    h, w = grid.shape
    mask = torch.zeros((h, w), dtype=torch.bool, device=rows.device)
    if rows.shape[0] == 0:
        return mask
    rows = rows.double()  # a cell centre on a box edge must not flip with rounding
    xs = grid.x_min + (torch.arange(w, dtype=rows.dtype, device=rows.device) + 0.5) * grid.cell
    ys = grid.y_min + (torch.arange(h, dtype=rows.dtype, device=rows.device) + 0.5) * grid.cell
    dx = xs.view(1, 1, w) - rows[:, 0].view(-1, 1, 1)  # (N, 1, W)
    dy = ys.view(1, h, 1) - rows[:, 1].view(-1, 1, 1)  # (N, H, 1)
    cos, sin = torch.cos(rows[:, 6]).view(-1, 1, 1), torch.sin(rows[:, 6]).view(-1, 1, 1)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos  # (N, H, W) in the box frame
    inside = (u.abs() <= rows[:, 3].view(-1, 1, 1) / 2) & (v.abs() <= rows[:, 4].view(-1, 1, 1) / 2)
    mask = inside.any(dim=0)
    col = torch.floor((rows[:, 0] - grid.x_min) / grid.cell).long()
    row = torch.floor((rows[:, 1] - grid.y_min) / grid.cell).long()
    on_grid = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    mask[row[on_grid], col[on_grid]] = True
    return mask


def grid_coords(xy: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """``F.grid_sample`` coordinates (align_corners=False) of ego ``(..., 2)`` x, y: -1 and 1
    are the outer edges of the first and last cells, so a cell centre ``x_min + (j + .5) *
    cell`` maps to ``(2j + 1) / W - 1``, the centre of pixel ``j``."""
    h, w = grid.shape
    gx = 2 * (xy[..., 0] - grid.x_min) / (grid.cell * w) - 1
    gy = 2 * (xy[..., 1] - grid.y_min) / (grid.cell * h) - 1
    return torch.stack([gx, gy], dim=-1)


def sample_points(feature: torch.Tensor, xy: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """(B, P, C): ``feature`` (B, C, H, W) bilinearly sampled at ego points ``xy`` (B, P, 2).
    Points past the outermost cell centres take the edge value (border padding), not a blend
    with zeros."""
    g = grid_coords(xy.float(), grid).unsqueeze(1)  # (B, 1, P, 2); fp32 under AMP too
    out = F.grid_sample(
        feature.float(), g, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[:, :, 0].transpose(1, 2)


def point_l1(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """UniDistill's feature term at box points, as an L1 mean over the valid points and the
    channels: ``sum_bpc V_bp |S_bpc - T_bpc| / (C * max(1, sum V))`` for (B, P, C) samples
    and (B, P) validity ``V``. No valid point: a zero that keeps ``student`` in the graph."""
    v = valid.to(student.dtype).unsqueeze(-1)
    diff = (student.float() - teacher.float()).abs() * v
    return diff.sum() / (student.shape[-1] * v.sum().clamp(min=1.0))


def cell_keep_mask(like: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, 1, H, W) 0/1 from torch's RNG: each cell of ``like`` (B, C, H, W) dropped with
    probability ``ratio`` (MGD's random mask; ``torch.manual_seed`` reproduces it)."""
    b, _, h, w = like.shape
    keep = torch.rand((b, 1, h, w), device=like.device) >= ratio
    return keep.to(like.dtype)


class FocalDistiller(Recipe):
    """FocalDistiller for bevkd: the teacher's own boxes (score above ``distill.region_score``,
    from ``boxes`` or, with ``distill.teacher: fusion``, ``fusion_boxes``) locate instances.

    - ``kd_mgd`` (``distill.mgd_weight``, default 1): MGD (Yang et al., ECCV 2022;
      yzd-v/MGD). The student BEV through ``align`` (conv1x1 to the teacher's channels, when
      they differ) has ``distill.mgd_mask_ratio`` (0.65) of its cells zeroed at random; the
      ``generator`` (conv3x3-ReLU-conv3x3) reconstructs the teacher BEV from it, scored by
      :func:`losses.feature_mse` over the box footprints (:func:`footprint_mask`): ``sum_R
      (G - F_T)^2 / (C_T * #R)``. MGD itself scores the whole map, summed, at 2e-5.
    - ``kd_points`` (``distill.point_weight``, default 1): :func:`point_l1` between the
      aligned student BEV and the teacher BEV sampled at 9 points per box (4 corners, the
      centre, 4 edge midpoints); UniDistill uses L1 x100 at GT boxes, FD3D the queries'
      sampling points.
    - GT CenterPoint terms on labelled frames (``distill.mode`` "gt+kd"; "kd" drops them) and
      LiDAR depth on every frame (:meth:`Recipe.gt_terms`).

    The regions are the teacher's predictions, not labels, so an unlabelled frame gets both
    terms. A frame with no box above the score, no cached boxes, or no cached BEV adds nothing
    to either term (its zero keeps the graph, so DDP sees every parameter used).
    ``align`` and ``generator`` are built here from the config, so they exist when
    ``stages.loop.fit`` builds the optimizer over the objective (student + recipe); they are
    saved in ``last.pt`` beside the model and left out of the student's inference weights.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, use_gt=cfg.distill.mode == "gt+kd")
        d = self.d  # its choices were checked when the config loaded
        self.bev_field, self.boxes_field = TEACHER_INSTANCE_FIELDS[d.teacher]
        student, teacher = cfg.student.bev_channels, cfg.model.bev_channels
        if d.mgd_weight > 0 or d.point_weight > 0:
            # lidar_bev and fused_bev both carry model.bev_channels (lidar_teacher, fusion_teacher);
            # boxes: any capacity (cache head.max_detections), rows checked by the store schema.
            self.expects = {self.bev_field: (teacher, *self.grid.shape), self.boxes_field: None}
        self.align: nn.Module = (
            nn.Identity() if student == teacher else nn.Conv2d(student, teacher, 1)
        )
        self.generator = nn.Sequential(
            nn.Conv2d(teacher, teacher, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher, teacher, 3, padding=1),
        )

    def instance_boxes(self, batch: StudentBatch) -> list[torch.Tensor]:
        """Per frame, the teacher's box rows scoring above ``region_score``, on frames whose
        teacher BEV is cached; empty rows elsewhere (and where the store has no boxes)."""
        rows = batch.targets.boxes[self.boxes_field]
        present = batch.targets.present[self.bev_field]
        out = []
        for b in range(batch.size):
            frame = rows[b].to(batch.images.device, torch.float32)
            keep = (frame[:, 9] > self.d.region_score) & present[b]
            out.append(frame[keep])
        return out

    def kd_terms(self, out: StudentOutput, batch: StudentBatch) -> dict[str, torch.Tensor]:
        d = self.d
        terms: dict[str, torch.Tensor] = {}
        if not self.expects:
            return terms
        teacher = batch.targets.field(self.bev_field)
        aligned = self.align(out.features["bev"])
        boxes = self.instance_boxes(batch)
        if d.mgd_weight > 0:
            region = torch.stack([footprint_mask(r, self.grid) for r in boxes]).unsqueeze(1)
            generated = self.generator(aligned * cell_keep_mask(aligned, d.mgd_mask_ratio))
            terms["kd_mgd"] = d.mgd_weight * losses.feature_mse(generated, teacher, region)
        if d.point_weight > 0:
            xy, valid = self._points(boxes, aligned)
            terms["kd_points"] = d.point_weight * point_l1(
                sample_points(aligned, xy, self.grid), sample_points(teacher, xy, self.grid), valid
            )
        return terms

    def _points(
        self, boxes: list[torch.Tensor], like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, 2) ego points, padded to the batch's most, and (B, P) bool: real and on the
        grid. At least one (invalid) point, so the term keeps its graph on a box-less batch."""
        per_frame = [box_points(r).reshape(-1, 2) for r in boxes]
        most = max(1, *(p.shape[0] for p in per_frame))
        xy = like.new_zeros((len(boxes), most, 2), dtype=torch.float32)
        valid = torch.zeros((len(boxes), most), dtype=torch.bool, device=like.device)
        g = self.grid
        for b, p in enumerate(per_frame):
            xy[b, : p.shape[0]] = p
            on_grid = (
                (p[:, 0] >= g.x_min)
                & (p[:, 0] < g.x_max)
                & (p[:, 1] >= g.y_min)
                & (p[:, 1] < g.y_max)
            )
            valid[b, : p.shape[0]] = on_grid
        return xy, valid
