"""OpenPCDet's rotated bird's-eye-view IoU and ``nms_gpu``, restated on the CPU in numpy.

Transcribed from OpenPCDet at commit 8cacccec11db6f59bf6934600c9a175dae254806
(github.com/open-mmlab/OpenPCDet). Upstream runs this in CUDA; this is a line-by-line CPU
restatement of the same geometry (edge crossings + corners inside, angular sort, fan area),
not a different polygon-clipping algorithm, so its quirks come along:

- a corner counts as inside the other box within a 1 cm margin (``MARGIN = 1e-2``);
- two edges only count as crossing when they cross strictly (collinear or touching edges add
  nothing; the corners-inside test with its margin then supplies the polygon's vertices).

- edges that are collinear up to rounding (the same box given with heading h and h + pi) can
  pass the strict-crossing test and add a spurious vertex inside the polygon, which shrinks
  the fan area (8 -> 7.35 for a 4 x 2 box against itself turned by pi, in float64). Which
  pairs this hits depends on rounding, so it differs between this float64 code and
  upstream's float32 kernel; it needs exactly coincident edges, which predicted boxes from
  different cells or tasks do not have.

Upstream computes in float32 on the GPU; this computes in float64, so away from such
degenerate pairs IoUs agree to float32 rounding and a decision can only differ for an IoU
within ~1e-6 of the threshold. With the margin set to 0 the overlap equals the exact polygon
intersection (the tests check it against shapely).

Boxes are OpenPCDet's ``(x, y, z, dx, dy, dz, heading)``; only x, y, dx, dy, heading matter.
"""

from __future__ import annotations

import numpy as np

# iou3d_nms_kernel.cu lines 14 and 53
EPS = 1e-8
MARGIN = 1e-2


def box_corners_bev(boxes: np.ndarray) -> np.ndarray:
    """(M, 7) boxes -> (M, 5, 2) corners in the kernel's order, the first repeated last.

    iou3d_nms_kernel.cu lines 108-152 (``box_overlap``: axis-aligned corners
    (x1,y1),(x2,y1),(x2,y2),(x1,y2), each rotated about the centre by +heading with
    ``rotate_around_center``, lines 94-98).
    """
    cx, cy, half_x, half_y = boxes[:, 0], boxes[:, 1], boxes[:, 3] / 2, boxes[:, 4] / 2
    local = np.stack(
        [
            np.stack([-half_x, -half_y], -1),
            np.stack([half_x, -half_y], -1),
            np.stack([half_x, half_y], -1),
            np.stack([-half_x, half_y], -1),
        ],
        axis=1,
    )  # offsets from the centre, (M, 4, 2)
    cos, sin = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    x = local[..., 0] * cos - local[..., 1] * sin + cx[:, None]
    y = local[..., 0] * sin + local[..., 1] * cos + cy[:, None]
    corners = np.stack([x, y], axis=-1)
    return np.concatenate([corners, corners[:, :1]], axis=1)


def _cross3(p1: np.ndarray, p2: np.ndarray, p0: np.ndarray) -> np.ndarray:
    """iou3d_nms_kernel.cu lines 39-41: (p1 - p0) x (p2 - p0)."""
    return (p1[..., 0] - p0[..., 0]) * (p2[..., 1] - p0[..., 1]) - (p2[..., 0] - p0[..., 0]) * (
        p1[..., 1] - p0[..., 1]
    )


def _segment_intersections(
    p1: np.ndarray, p0: np.ndarray, q1: np.ndarray, q0: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Strict crossings of segments p0-p1 and q0-q1, points (..., 2): (flag (...), point (..., 2)).

    iou3d_nms_kernel.cu lines 63-92 (``intersection``) with ``check_rect_cross`` (43-49).
    """
    rect = (
        (np.minimum(p0[..., 0], p1[..., 0]) <= np.maximum(q0[..., 0], q1[..., 0]))
        & (np.minimum(q0[..., 0], q1[..., 0]) <= np.maximum(p0[..., 0], p1[..., 0]))
        & (np.minimum(p0[..., 1], p1[..., 1]) <= np.maximum(q0[..., 1], q1[..., 1]))
        & (np.minimum(q0[..., 1], q1[..., 1]) <= np.maximum(p0[..., 1], p1[..., 1]))
    )
    s1 = _cross3(q0, p1, p0)
    s2 = _cross3(p1, q1, p0)
    s3 = _cross3(p0, q1, q0)
    s4 = _cross3(q1, p1, q0)
    flag = rect & (s1 * s2 > 0) & (s3 * s4 > 0)
    s5 = _cross3(q1, p1, p0)
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = s5 - s1
        by_area = (s5[..., None] * q0 - s1[..., None] * q1) / denom[..., None]
        # line-line fallback of lines 83-88, used when |s5 - s1| <= EPS
        a0, b0 = p0[..., 1] - p1[..., 1], p1[..., 0] - p0[..., 0]
        c0 = p0[..., 0] * p1[..., 1] - p1[..., 0] * p0[..., 1]
        a1, b1 = q0[..., 1] - q1[..., 1], q1[..., 0] - q0[..., 0]
        c1 = q0[..., 0] * q1[..., 1] - q1[..., 0] * q0[..., 1]
        d = a0 * b1 - a1 * b0
        by_lines = np.stack([(b0 * c1 - b1 * c0) / d, (a1 * c0 - a0 * c1) / d], axis=-1)
    point = np.where((np.abs(denom) > EPS)[..., None], by_area, by_lines)
    return flag, point


def _inside(boxes: np.ndarray, points: np.ndarray, margin: float) -> np.ndarray:
    """Whether each point (M, 2) lies in its box (M, 7), with the 1 cm margin.

    iou3d_nms_kernel.cu lines 51-61 (``check_in_box2d``: rotate by -heading, compare halves).
    """
    cos, sin = np.cos(-boxes[:, 6]), np.sin(-boxes[:, 6])
    dx, dy = points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1]
    rot_x = dx * cos + dy * (-sin)
    rot_y = dx * sin + dy * cos
    return (np.abs(rot_x) < boxes[:, 3] / 2 + margin) & (np.abs(rot_y) < boxes[:, 4] / 2 + margin)


def box_overlap_bev(box_a: np.ndarray, boxes_b: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    """Intersection area in BEV of one box (7,) with each of (M, 7) boxes -> (M,).

    iou3d_nms_kernel.cu lines 104-225 (``box_overlap``), vectorised over the M boxes.
    ``margin`` is upstream's 1 cm; 0 gives the exact intersection (for tests).
    """
    boxes_b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 7)
    boxes_a = np.broadcast_to(np.asarray(box_a, dtype=np.float64), boxes_b.shape)
    m = boxes_b.shape[0]
    ca, cb = box_corners_bev(boxes_a), box_corners_bev(boxes_b)
    # lines 160-174: edge i of a against edge j of b, i-major -> (M, 16)
    flag, point = _segment_intersections(
        ca[:, 1:, None], ca[:, :4, None], cb[:, None, 1:], cb[:, None, :4]
    )
    points, valid = [point.reshape(m, 16, 2)], [flag.reshape(m, 16)]
    # lines 177-194: corners of b inside a, corners of a inside b (interleaved as upstream)
    for k in range(4):
        points.append(cb[:, k, None])
        valid.append(_inside(boxes_a, cb[:, k], margin)[:, None])
        points.append(ca[:, k, None])
        valid.append(_inside(boxes_b, ca[:, k], margin)[:, None])
    ok = np.concatenate(valid, axis=1)  # (M, 24)
    pts = np.where(ok[..., None], np.concatenate(points, axis=1), 0.0)  # (M, 24, 2), unused -> 0
    cnt = ok.sum(axis=1)
    # lines 196-197: the polygon's centre is the mean of its vertices
    centre = pts.sum(axis=1) / np.maximum(cnt, 1)[:, None]
    # lines 200-209: bubble sort by atan2 about the centre, ascending (stable, like argsort)
    angle = np.arctan2(pts[..., 1] - centre[:, None, 1], pts[..., 0] - centre[:, None, 0])
    angle = np.where(ok, angle, np.inf)
    order = np.argsort(angle, axis=1, kind="stable")
    pts = np.take_along_axis(pts, order[..., None], axis=1)
    ok = np.take_along_axis(ok, order, axis=1)
    # lines 219-224: fan of triangles from the first vertex, |sum| / 2
    rel = pts - pts[:, :1]
    tri = rel[:, :-1, 0] * rel[:, 1:, 1] - rel[:, :-1, 1] * rel[:, 1:, 0]
    tri = np.where(ok[:, :-1] & ok[:, 1:], tri, 0.0)
    area = np.abs(tri.sum(axis=1)) / 2.0
    return np.where(cnt > 0, area, 0.0).reshape(m)


def iou_bev(box_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Rotated BEV IoU of one box (7,) with each of (M, 7) boxes -> (M,).

    iou3d_nms_kernel.cu lines 227-234 (``iou_bev``: overlap / max(sa + sb - overlap, EPS)).
    """
    box_a = np.asarray(box_a, dtype=np.float64)
    boxes_b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 7)
    # Speed only: boxes whose circumcircles (grown by the margin) are apart have no crossing
    # and no corner inside, so upstream's overlap is exactly 0 for them.
    reach = (
        np.hypot(box_a[3], box_a[4]) / 2 + np.hypot(boxes_b[:, 3], boxes_b[:, 4]) / 2 + 4 * MARGIN
    )
    near = np.hypot(boxes_b[:, 0] - box_a[0], boxes_b[:, 1] - box_a[1]) < reach
    overlap = np.zeros(boxes_b.shape[0])
    if near.any():
        overlap[near] = box_overlap_bev(box_a, boxes_b[near])
    sa = box_a[3] * box_a[4]
    sb = boxes_b[:, 3] * boxes_b[:, 4]
    return overlap / np.maximum(sa + sb - overlap, EPS)


def iou_bev_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(N, 7) x (M, 7) -> (N, M) rotated BEV IoU; iou3d_nms_kernel.cu lines 279-293
    (``boxes_iou_bev_kernel``, row a against column b)."""
    boxes_a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 7)
    boxes_b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 7)
    out = np.zeros((boxes_a.shape[0], boxes_b.shape[0]))
    for i, box in enumerate(boxes_a):
        out[i] = iou_bev(box, boxes_b)
    return out


def nms_gpu(
    boxes: np.ndarray,
    scores: np.ndarray,
    thresh: float,
    pre_maxsize: int | None = None,
    post_maxsize: int | None = None,
) -> np.ndarray:
    """Greedy rotated-BEV NMS -> indices into ``boxes`` of the kept boxes, by descending score.

    Mirrors iou3d_nms_utils.py lines 120-135 (``nms_gpu``: sort by score, descending, cut to
    ``pre_maxsize``), the CUDA ``nms_kernel`` (iou3d_nms_kernel.cu lines 295-339: bit i of
    row r set when ``iou_bev(box r, box i) > thresh`` for i after r) and the host loop of
    iou3d_nms.cpp lines 137-183 (walk boxes in order; a box not yet removed is kept and
    removes every later box its row marks). Only kept boxes suppress. ``post_maxsize`` cuts
    the kept list as model_nms_utils.py line 20 does (``keep_idx[:NMS_POST_MAXSIZE]``); the
    loop may stop there because later keeps cannot change earlier ones.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    if pre_maxsize is not None:
        order = order[:pre_maxsize]
    sorted_boxes = boxes[order]
    removed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        if post_maxsize is not None and len(keep) >= post_maxsize:
            break
        later = np.arange(i + 1, len(order))
        later = later[~removed[later]]
        if later.size:
            removed[later] |= iou_bev(sorted_boxes[i], sorted_boxes[later]) > thresh
    return order[np.asarray(keep, dtype=np.int64)]


def class_agnostic_nms(
    box_scores: np.ndarray,
    box_preds: np.ndarray,
    nms_thresh: float,
    pre_maxsize: int,
    post_maxsize: int,
) -> np.ndarray:
    """Indices of the boxes kept, in kept order (descending score).

    model_nms_utils.py lines 6-25 (``class_agnostic_nms`` with ``score_thresh=None``, as
    center_head.py line 337-341 calls it): top ``NMS_PRE_MAXSIZE`` scores, ``nms_gpu`` on
    ``boxes[:, 0:7]``, keep the first ``NMS_POST_MAXSIZE``. ``nms_gpu`` receives the config as
    ``**kwargs`` whose upper-case ``NMS_PRE_MAXSIZE`` does not bind its ``pre_maxsize``, so
    its own cut is a no-op; the top-k cut here is the one that acts.
    """
    box_scores = np.asarray(box_scores)
    if box_scores.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    k = min(pre_maxsize, box_scores.shape[0])
    indices = np.argsort(-box_scores, kind="stable")[:k]
    keep = nms_gpu(
        np.asarray(box_preds)[indices, :7],
        box_scores[indices],
        nms_thresh,
        post_maxsize=post_maxsize,
    )
    return indices[keep[:post_maxsize]]
