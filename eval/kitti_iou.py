"""Overlaps for the KITTI metric: 2D image boxes, rotated BEV boxes and 3D boxes.

Boxes are in KITTI's rect camera frame, ``(x, y, z, h, w, l, ry)`` with ``(x, y, z)`` the
bottom centre (y points down). The BEV footprint lies in the x-z plane with the length axis
along ``(cos ry, -sin ry)``; the 3D box spans ``[y - h, y]`` in y. As in the devkit, 3D IoU is
footprint intersection times height overlap over the union of volumes.

Rotated footprints are intersected with shapely 2 (GEOS): a maintained, pip-installable library
that nuscenes-devkit already depends on. The usual alternatives (pytorch3d's ``box3d_overlap``,
mmcv/OpenPCDet's ``iou3d_nms`` kernels, the devkit's numba CUDA ``rotate_iou``) need compiled
CUDA-era builds that cannot be installed on a CPU-only machine.
"""

from __future__ import annotations

import numpy as np


def image_overlap_pairs(a: np.ndarray, b: np.ndarray, criterion: int = -1) -> np.ndarray:
    """Overlap of 2D boxes ``a`` and ``b`` (``(..., 4)``: left, top, right, bottom), broadcast.

    ``criterion`` -1: IoU; 0: intersection over the area of ``a`` (the devkit's test for
    detections inside DontCare regions); 1: over the area of ``b``.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    if criterion == -1:
        denom = area_a + area_b - inter
    elif criterion == 0:
        denom = area_a + 0 * area_b
    elif criterion == 1:
        denom = area_b + 0 * area_a
    else:
        raise ValueError(f"criterion must be -1, 0 or 1, got {criterion}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / denom, 0.0)


def image_overlap(boxes: np.ndarray, query: np.ndarray, criterion: int = -1) -> np.ndarray:
    """``(N, K)`` overlap of 2D boxes ``(N, 4)`` and ``(K, 4)``; see :func:`image_overlap_pairs`."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    query = np.asarray(query, np.float64).reshape(-1, 4)
    return image_overlap_pairs(boxes[:, None, :], query[None, :, :], criterion)


def footprints(rect_boxes: np.ndarray) -> np.ndarray:
    """``(N, 4, 2)`` footprint corners in the rect x-z plane (counter-clockwise seen from -y)."""
    rect_boxes = np.asarray(rect_boxes, np.float64).reshape(-1, 7)
    w, l = rect_boxes[:, 4:5], rect_boxes[:, 5:6]  # noqa: E741
    local_l = l * np.array([0.5, -0.5, -0.5, 0.5])
    local_w = w * np.array([0.5, 0.5, -0.5, -0.5])
    c, s = np.cos(rect_boxes[:, 6:7]), np.sin(rect_boxes[:, 6:7])
    x = c * local_l + s * local_w + rect_boxes[:, 0:1]
    z = -s * local_l + c * local_w + rect_boxes[:, 2:3]
    return np.stack([x, z], axis=-1)


def bev_intersection_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(P,)`` footprint intersection areas (m^2) of paired rect boxes ``a[p]``, ``b[p]``
    (both ``(P, 7)``). Only pairs whose bounding circles touch go to GEOS; the rest are 0."""
    import shapely

    a = np.asarray(a, np.float64).reshape(-1, 7)
    b = np.asarray(b, np.float64).reshape(-1, 7)
    out = np.zeros(len(a))
    reach = 0.5 * (np.hypot(a[:, 4], a[:, 5]) + np.hypot(b[:, 4], b[:, 5]))
    near = np.nonzero(np.hypot(a[:, 0] - b[:, 0], a[:, 2] - b[:, 2]) < reach)[0]
    if len(near):
        polygons_a = shapely.polygons(footprints(a[near]))
        polygons_b = shapely.polygons(footprints(b[near]))
        out[near] = shapely.area(shapely.intersection(polygons_a, polygons_b))
    return out


def bev_iou_pairs(a: np.ndarray, b: np.ndarray, inter: np.ndarray | None = None) -> np.ndarray:
    """``(P,)`` rotated BEV IoU of paired rect boxes (``inter``: their footprint intersections,
    if already known)."""
    a = np.asarray(a, np.float64).reshape(-1, 7)
    b = np.asarray(b, np.float64).reshape(-1, 7)
    inter = bev_intersection_pairs(a, b) if inter is None else inter
    union = a[:, 4] * a[:, 5] + b[:, 4] * b[:, 5] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def box3d_iou_pairs(a: np.ndarray, b: np.ndarray, inter: np.ndarray | None = None) -> np.ndarray:
    """``(P,)`` 3D IoU of paired rect boxes: footprint intersection x overlap of ``[y - h, y]``."""
    a = np.asarray(a, np.float64).reshape(-1, 7)
    b = np.asarray(b, np.float64).reshape(-1, 7)
    inter = bev_intersection_pairs(a, b) if inter is None else inter
    height = np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 1] - a[:, 3], b[:, 1] - b[:, 3])
    inter = inter * np.clip(height, 0.0, None)
    union = a[:, 3] * a[:, 4] * a[:, 5] + b[:, 3] * b[:, 4] * b[:, 5] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _all_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (row of ``a``, row of ``b``) pair, ``a``-major: ``(N*K, 7)`` twice."""
    return np.repeat(a, len(b), axis=0), np.tile(b, (len(a), 1))


def bev_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, K)`` rotated BEV IoU of rect boxes ``(N, 7)`` and ``(K, 7)``."""
    a = np.asarray(a, np.float64).reshape(-1, 7)
    b = np.asarray(b, np.float64).reshape(-1, 7)
    return bev_iou_pairs(*_all_pairs(a, b)).reshape(len(a), len(b))


def box3d_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, K)`` 3D IoU of rect boxes ``(N, 7)`` and ``(K, 7)``."""
    a = np.asarray(a, np.float64).reshape(-1, 7)
    b = np.asarray(b, np.float64).reshape(-1, 7)
    return box3d_iou_pairs(*_all_pairs(a, b)).reshape(len(a), len(b))
