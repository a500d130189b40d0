"""Pairwise box terms of the Waymo detection metrics: 3D IoU, LET-IoU, longitudinal affinity and
heading accuracy, transcribed from waymo-open-dataset 1.6.7 (commit 99a4cb3 of
github.com/waymo-research/waymo-open-dataset; paths below are under ``src/waymo_open_dataset/``).

Boxes are Waymo's ``(x, y, z, length, width, height, heading)`` in the vehicle frame (x forward,
y left, z up; ``z`` is the box centre, the heading turns the length axis about +z from +x). The
op reads boxes as float32 (``metrics/ops/utils.cc`` ``GetBox3d``) and works in double, so the
boxes are rounded to float32 first here too.

- ``metrics/iou.cc`` ``ComputeIoU3d`` (lines 168-206): 0 if any of l, w, h <= 0.01 m
  (``kMinBoxDim``) or >= 1e6 m (``ComputeIoU``, ``kMaxBoxDim``); the BEV footprints (rotated
  rectangles, ``math/polygon2d``) are intersected exactly, times the z overlap of the closed
  ranges ``[z - h/2, z + h/2]``; over ``vol1 + vol2 - inter`` (0 if that is <= 1e-6);
  clamped to [0, 1]. The footprint intersection here is shapely's (GEOS), exact in double.
- ``ComputeLongitudinalAffinity`` (lines 247-283): both centres minus the sensor location; with
  ``G``, ``P`` those vectors, ``r_gt = max(|G|, 1e-6)``, the longitudinal error is
  ``P . G / r_gt - r_gt`` (the prediction centre projected on the ground truth's line of
  sight), the tolerance ``float(max(pct * r_gt, min_m))`` and the affinity
  ``clamp(1 - |error| / tolerance, 0, 1)``.
- ``AlignedPredictionBox`` with ``TYPE_RANGE_ALIGNED`` (lines 296-359) and ``ComputeLetIoU``
  (lines 361-382): in the sensor frame the prediction centre moves along its own line of sight
  to the point closest to the ground truth centre, ``P' = (G . P / max(|P|^2, 1e-6)) P``; the
  LET-IoU is the 3D IoU of that moved box (size and heading kept) with the ground truth.
- ``metrics/metrics_utils.cc`` ``ComputeHeadingAccuracy`` (lines 101-116): both headings
  wrapped to [-pi, pi), ``d = |a - b|``, ``d = 2 pi - d`` if ``d > pi``;
  ``clamp(1 - d / pi, 0, 1)``.
"""

from __future__ import annotations

import numpy as np

MIN_BOX_DIM = 1e-2  # iou.cc kMinBoxDim
MAX_BOX_DIM = 1e6  # iou.cc kMaxBoxDim
EPSILON = 1e-6  # iou.cc kEpsilon


def as_boxes(boxes: np.ndarray) -> np.ndarray:
    """``(N, 7)`` float64 boxes holding float32 values, as the op's tensors do."""
    return np.asarray(boxes, np.float32).reshape(-1, 7).astype(np.float64)


def footprints(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4, 2)`` BEV corners (counter-clockwise) of ``(N, 7)`` boxes."""
    half_l = 0.5 * boxes[:, 3:4] * np.array([1.0, -1.0, -1.0, 1.0])
    half_w = 0.5 * boxes[:, 4:5] * np.array([1.0, 1.0, -1.0, -1.0])
    c, s = np.cos(boxes[:, 6:7]), np.sin(boxes[:, 6:7])
    x = boxes[:, 0:1] + c * half_l - s * half_w
    y = boxes[:, 1:2] + s * half_l + c * half_w
    return np.stack([x, y], axis=-1)


def iou3d_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(K,)`` 3D IoU of paired boxes ``a[k]``, ``b[k]`` (both ``(K, 7)`` float64)."""
    import shapely

    out = np.zeros(len(a))
    dims = np.concatenate([a[:, 3:6], b[:, 3:6]], axis=1)
    valid = np.all(dims > MIN_BOX_DIM, axis=1) & np.all(dims < MAX_BOX_DIM, axis=1)
    z_lo = np.maximum(a[:, 2] - 0.5 * a[:, 5], b[:, 2] - 0.5 * b[:, 5])
    z_hi = np.minimum(a[:, 2] + 0.5 * a[:, 5], b[:, 2] + 0.5 * b[:, 5])
    # only pairs whose bounding circles touch go to GEOS; the others do not intersect
    reach = 0.5 * (np.hypot(a[:, 3], a[:, 4]) + np.hypot(b[:, 3], b[:, 4]))
    near = valid & (z_lo <= z_hi) & (np.hypot(a[:, 0] - b[:, 0], a[:, 1] - b[:, 1]) < reach)
    idx = np.nonzero(near)[0]
    if len(idx) == 0:
        return out
    pa = shapely.polygons(footprints(a[idx]))
    pb = shapely.polygons(footprints(b[idx]))
    inter = shapely.area(shapely.intersection(pa, pb)) * (z_hi[idx] - z_lo[idx])
    union = np.prod(a[idx, 3:6], axis=1) + np.prod(b[idx, 3:6], axis=1) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > EPSILON, inter / union, 0.0)
    out[idx] = np.clip(iou, 0.0, 1.0)
    return out


def _grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    return rows.ravel(), cols.ravel()


def iou3d(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``(P, G)`` 3D IoU of ``(P, 7)`` predictions against ``(G, 7)`` ground truths."""
    pred, gt = as_boxes(pred), as_boxes(gt)
    rows, cols = _grid(len(pred), len(gt))
    return iou3d_pairs(pred[rows], gt[cols]).reshape(len(pred), len(gt))


def let_iou3d(pred: np.ndarray, gt: np.ndarray, sensor: np.ndarray) -> np.ndarray:
    """``(P, G)`` LET-IoU (``TYPE_RANGE_ALIGNED``) with the sensor at ``sensor`` (3,)."""
    pred, gt = as_boxes(pred), as_boxes(gt)
    pred[:, :3] -= sensor
    gt[:, :3] -= sensor
    rows, cols = _grid(len(pred), len(gt))
    p, g = pred[rows], gt[cols]
    scale = np.sum(p[:, :3] * g[:, :3], axis=1) / np.maximum(np.sum(p[:, :3] ** 2, axis=1), EPSILON)
    p[:, :3] *= scale[:, None]
    return iou3d_pairs(p, g).reshape(len(pred), len(gt))


def longitudinal_affinity(
    pred: np.ndarray, gt: np.ndarray, sensor: np.ndarray, percentage: float, min_meter: float
) -> np.ndarray:
    """``(P, G)`` longitudinal affinity in [0, 1] (1: no error along the line of sight)."""
    p = as_boxes(pred)[:, None, :3] - sensor
    g = as_boxes(gt)[None, :, :3] - sensor
    gt_range = np.maximum(np.linalg.norm(g, axis=-1), EPSILON)
    pd_range = np.maximum(np.linalg.norm(p, axis=-1), EPSILON)
    cos = np.sum(p * g, axis=-1) / gt_range / pd_range
    # the proto's fields are float32, and so is the tolerance (iou.cc line 275)
    pct, min_m = float(np.float32(percentage)), float(np.float32(min_meter))
    tolerance = np.maximum(pct * gt_range, min_m).astype(np.float32).astype(np.float64)
    error = np.abs((pd_range * cos - gt_range) / tolerance)
    return np.clip(1.0 - error, 0.0, 1.0)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return np.mod(angle + np.pi, 2 * np.pi) - np.pi


def heading_accuracy(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``(P, G)`` heading accuracy ``1 - |dtheta| / pi`` (``|dtheta|`` in [0, pi])."""
    d = np.abs(_wrap(as_boxes(pred)[:, None, 6]) - _wrap(as_boxes(gt)[None, :, 6]))
    d = np.where(d > np.pi, 2 * np.pi - d, d)
    return np.clip(1.0 - d / np.pi, 0.0, 1.0)
