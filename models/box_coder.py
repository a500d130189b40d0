"""Decoding CenterPoint head maps into boxes, and rotated BEV NMS.

Decode: sigmoid heatmap -> keep 3x3 local maxima (max-pool NMS) -> top-k over classes and
cells -> boxes from the regression at those cells -> score threshold -> rotated-IoU NMS per
class -> :class:`Detections` per sample.

NMS is greedy NMS on the exact rotated bird's-eye-view IoU of box footprints (not circle
NMS). The IoU is a vectorised torch polygon intersection (see :func:`rotated_iou_pairs`);
only pairs of the same class whose circumscribed circles overlap are evaluated.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bevkd.models.outputs import Detections, HeadOutput
from bevkd.pipeline.config import HeadConfig
from bevkd.pipeline.geometry import BEVGrid


def decode_regression(regression: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """Dense boxes (B, H, W, 9) from a (B, 10, H, W) regression map, one per cell."""
    _, _, h, w = regression.shape
    rows = torch.arange(h, device=regression.device, dtype=regression.dtype).view(1, h, 1)
    cols = torch.arange(w, device=regression.device, dtype=regression.dtype).view(1, 1, w)
    r = regression
    x = (cols + r[:, 0]) * grid.cell + grid.x_min
    y = (rows + r[:, 1]) * grid.cell + grid.y_min
    size = torch.exp(r[:, 3:6].clamp(max=6.0))  # clamp: an untrained head must not overflow
    yaw = torch.atan2(r[:, 6], r[:, 7])
    return torch.stack(
        [x, y, r[:, 2], size[:, 0], size[:, 1], size[:, 2], yaw, r[:, 8], r[:, 9]], dim=-1
    )


def bev_corners_torch(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4, 2) counter-clockwise footprint corners of boxes (N, >=7)."""
    c, s = torch.cos(boxes[:, 6]), torch.sin(boxes[:, 6])
    hl, hw = boxes[:, 3] / 2, boxes[:, 4] / 2
    local = torch.stack(
        [
            torch.stack([hl, hw], -1),
            torch.stack([-hl, hw], -1),
            torch.stack([-hl, -hw], -1),
            torch.stack([hl, -hw], -1),
        ],
        dim=1,
    )
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], dim=1)  # (N, 2, 2)
    return torch.einsum("nij,nkj->nki", rot, local) + boxes[:, None, :2]


def _inside(points: torch.Tensor, quads: torch.Tensor, eps: float) -> torch.Tensor:
    """(P, M) whether each of M points per pair lies in the pair's CCW quad (P, 4, 2)."""
    edge = quads.roll(-1, dims=1) - quads  # (P, 4, 2)
    rel = points[:, :, None, :] - quads[:, None, :, :]  # (P, M, 4, 2)
    cross = edge[:, None, :, 0] * rel[..., 1] - edge[:, None, :, 1] * rel[..., 0]
    return (cross >= -eps).all(dim=-1)


def rotated_iou_pairs(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """BEV IoU of paired rotated boxes (P, >=7) and (P, >=7) -> (P,).

    The intersection of two convex quads has as vertices the corners of each inside the
    other and the edge-edge crossings: 24 candidates, sorted by angle about their mean and
    summed with the shoelace formula. Computed in float64.
    """
    a, b = boxes_a.double(), boxes_b.double()
    ca, cb = bev_corners_torch(a), bev_corners_torch(b)
    eps = 1e-9
    # Edge-edge crossings: edge i of A (p + t r) against edge j of B (q + u s).
    p, r = ca[:, :, None, :], (ca.roll(-1, dims=1) - ca)[:, :, None, :]
    q, s = cb[:, None, :, :], (cb.roll(-1, dims=1) - cb)[:, None, :, :]
    denom = r[..., 0] * s[..., 1] - r[..., 1] * s[..., 0]  # (P, 4, 4)
    qp = q - p
    safe = torch.where(denom.abs() < eps, torch.ones_like(denom), denom)
    t = (qp[..., 0] * s[..., 1] - qp[..., 1] * s[..., 0]) / safe
    u = (qp[..., 0] * r[..., 1] - qp[..., 1] * r[..., 0]) / safe
    cross_ok = (denom.abs() >= eps) & (t >= -eps) & (t <= 1 + eps) & (u >= -eps) & (u <= 1 + eps)
    crossings = (p + t[..., None] * r).reshape(-1, 16, 2)
    points = torch.cat([ca, cb, crossings], dim=1)  # (P, 24, 2)
    valid = torch.cat(
        [_inside(ca, cb, 1e-7), _inside(cb, ca, 1e-7), cross_ok.reshape(-1, 16)], dim=1
    )
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)
    centre = (points * valid[..., None]).sum(dim=1) / count
    angle = torch.atan2(points[..., 1] - centre[:, None, 1], points[..., 0] - centre[:, None, 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 10.0))  # invalid ones sort last
    order = angle.argsort(dim=1)
    sorted_pts = torch.gather(points, 1, order[..., None].expand(-1, -1, 2))
    sorted_valid = torch.gather(valid, 1, order)
    # Invalid slots repeat the first vertex: their shoelace terms vanish and the ring closes.
    sorted_pts = torch.where(sorted_valid[..., None], sorted_pts, sorted_pts[:, :1])
    nxt = sorted_pts.roll(-1, dims=1)
    inter = (
        0.5 * (sorted_pts[..., 0] * nxt[..., 1] - sorted_pts[..., 1] * nxt[..., 0]).sum(dim=1).abs()
    )
    inter = torch.where(valid.sum(dim=1) >= 3, inter, torch.zeros_like(inter))
    area_a, area_b = a[:, 3] * a[:, 4], b[:, 3] * b[:, 4]
    return (inter / (area_a + area_b - inter).clamp(min=1e-12)).to(boxes_a.dtype)


def rotated_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Greedy per-class NMS on rotated BEV IoU; returns kept indices, by descending score."""
    order = torch.argsort(scores, descending=True)
    boxes, labels = boxes[order], labels[order]
    n = len(order)
    if n == 0:
        return order
    # Candidate pairs i < j of one class whose circumscribed circles overlap.
    radius = 0.5 * torch.hypot(boxes[:, 3], boxes[:, 4])
    dist = torch.cdist(boxes[:, :2].double(), boxes[:, :2].double())
    near = (dist < (radius[:, None] + radius[None, :]).double()) & (
        labels[:, None] == labels[None, :]
    )
    near = torch.triu(near, diagonal=1)
    ii, jj = torch.nonzero(near, as_tuple=True)
    overlap = np.zeros((n, n), dtype=bool)
    if ii.numel():
        iou = rotated_iou_pairs(boxes[ii], boxes[jj])
        hit = iou > iou_threshold
        overlap[ii[hit].cpu().numpy(), jj[hit].cpu().numpy()] = True
    suppressed = np.zeros(n, dtype=bool)
    for i in np.nonzero(overlap.any(axis=1))[0]:  # only boxes that overlap something matter
        if not suppressed[i]:
            suppressed |= overlap[i]
    keep = torch.from_numpy(np.nonzero(~suppressed)[0]).to(order.device)
    return order[keep]


def decode(head: HeadOutput, grid: BEVGrid, head_cfg: HeadConfig) -> list[Detections]:
    """Boxes per sample from heatmap logits (B, K, H, W) and regression (B, 10, H, W)."""
    heat = torch.sigmoid(head.heatmap.detach().float())
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    bsz, k, h, w = heat.shape
    boxes_all = decode_regression(head.regression.detach().float(), grid).reshape(bsz, h * w, 9)
    top = min(head_cfg.pre_nms_top_k, k * h * w)
    scores, flat = peaks.reshape(bsz, -1).topk(top, dim=1)
    out = []
    for bi in range(bsz):
        keep = scores[bi] > head_cfg.score_threshold
        sc, idx = scores[bi][keep], flat[bi][keep]
        labels, cells = idx // (h * w), idx % (h * w)
        boxes = boxes_all[bi, cells]
        kept = rotated_nms(boxes, sc, labels, head_cfg.nms_iou)[: head_cfg.max_detections]
        out.append(Detections(boxes[kept], sc[kept], labels[kept].long()))
    return out
