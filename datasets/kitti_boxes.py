"""KITTI boxes <-> bevkd ego boxes, and KITTI boxes in the image.

KITTI box (rect frame, x right, y down, z forward): bottom centre ``(x, y, z)``, size
``(h, w, l)``, heading ``rotation_y`` with the length axis along ``(cos ry, 0, -sin ry)``.
bevkd box (ego = velo frame, x forward, y left, z up): ``(x, y, z, l, w, h, yaw, vx, vy)``
with z at the geometric centre and the length axis along ``(cos yaw, sin yaw, 0)``.

The conversion moves the *geometric centre* (bottom centre lifted by h/2, i.e. ``y - h/2`` in
rect, where y points down) and the *heading vector* through the calibration, so it stays exact
for KITTI's slightly tilted velo->rect rotation. For an untilted rig it reduces to the familiar
``yaw = -rotation_y - pi/2`` and ``z_velo = bottom_z_velo + h/2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bevkd.datasets.kitti_calib import KittiCalib, affine_inverse
from bevkd.datasets.kitti_labels import KittiObject
from bevkd.pipeline.geometry import BOX_DIM, wrap_angle

MIN_DEPTH = 0.1  # metres: corners closer to (or behind) the image plane do not project


def objects_to_ego_boxes(objects: Sequence[KittiObject], rect2velo: np.ndarray) -> np.ndarray:
    """``(N, 9)`` ego boxes of KITTI objects; ``rect2velo`` is the 4x4 rect -> velo transform.

    Velocities are 0 (KITTI labels have none).
    """
    out = np.zeros((len(objects), BOX_DIM), dtype=np.float64)
    if not objects:
        return out
    hwl = np.array([o.dimensions for o in objects], dtype=np.float64)
    bottom = np.array([o.location for o in objects], dtype=np.float64)
    ry = np.array([o.rotation_y for o in objects], dtype=np.float64)
    centre_rect = bottom - np.stack([np.zeros_like(ry), hwl[:, 0] / 2, np.zeros_like(ry)], axis=1)
    heading_rect = np.stack([np.cos(ry), np.zeros_like(ry), -np.sin(ry)], axis=1)
    out[:, :3] = centre_rect @ rect2velo[:3, :3].T + rect2velo[:3, 3]
    heading = heading_rect @ rect2velo[:3, :3].T
    out[:, 3] = hwl[:, 2]  # l
    out[:, 4] = hwl[:, 1]  # w
    out[:, 5] = hwl[:, 0]  # h
    out[:, 6] = np.arctan2(heading[:, 1], heading[:, 0])
    return out


def ego_boxes_to_rect(boxes: np.ndarray, velo2rect: np.ndarray) -> np.ndarray:
    """Inverse of :func:`objects_to_ego_boxes`: ``(N, 7)`` rect boxes
    ``(x, y, z, h, w, l, rotation_y)`` with ``(x, y, z)`` the bottom centre."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, BOX_DIM)
    centre = boxes[:, :3] @ velo2rect[:3, :3].T + velo2rect[:3, 3]
    out = np.zeros((len(boxes), 7), dtype=np.float64)
    out[:, :3] = centre
    out[:, 1] += boxes[:, 5] / 2  # geometric centre -> bottom (rect y points down)
    out[:, 3] = boxes[:, 5]
    out[:, 4] = boxes[:, 4]
    out[:, 5] = boxes[:, 3]
    out[:, 6] = _rotation_y(boxes[:, 6], affine_inverse(velo2rect)[:3, :3])
    return out


def _rotation_y(yaw: np.ndarray, rect2velo_rot: np.ndarray) -> np.ndarray:
    """The exact inverse of the yaw in :func:`objects_to_ego_boxes`: the ``ry`` whose heading
    ``(cos ry, 0, -sin ry)``, moved to velo and projected on x-y, points along ``yaw``.

    Parallel means ``u_x (R h)_y - u_y (R h)_x = 0`` with ``u = (cos yaw, sin yaw)``, i.e.
    ``A cos ry + B sin ry = 0``; of its two solutions keep the one pointing along ``u``.
    """
    r = rect2velo_rot
    ux, uy = np.cos(yaw), np.sin(yaw)
    a = ux * r[1, 0] - uy * r[0, 0]
    b = uy * r[0, 2] - ux * r[1, 2]
    ry = np.arctan2(-a, b)
    along = ux * (r[0, 0] * np.cos(ry) - r[0, 2] * np.sin(ry)) + uy * (
        r[1, 0] * np.cos(ry) - r[1, 2] * np.sin(ry)
    )
    return np.asarray(wrap_angle(np.where(along < 0, ry + np.pi, ry)))


def rect_box_corners(rect_boxes: np.ndarray) -> np.ndarray:
    """``(N, 8, 3)`` corners of rect boxes ``(x, y, z, h, w, l, ry)``, bottom 4 then top 4
    (the devkit's ``computeBox3D`` order)."""
    rect_boxes = np.asarray(rect_boxes, dtype=np.float64).reshape(-1, 7)
    h, w, l = rect_boxes[:, 3:4], rect_boxes[:, 4:5], rect_boxes[:, 5:6]  # noqa: E741
    xs = l * np.array([1, 1, -1, -1, 1, 1, -1, -1]) / 2
    ys = -h * np.array([0, 0, 0, 0, 1, 1, 1, 1])
    zs = w * np.array([1, -1, -1, 1, 1, -1, -1, 1]) / 2
    c, s = np.cos(rect_boxes[:, 6:7]), np.sin(rect_boxes[:, 6:7])
    # rotation about y: local x -> (cos, 0, -sin), local z -> (sin, 0, cos)
    x = c * xs + s * zs
    z = -s * xs + c * zs
    return np.stack([x, ys, z], axis=-1) + rect_boxes[:, None, :3]


def objects_to_rect(objects: Sequence[KittiObject]) -> np.ndarray:
    """``(N, 7)`` rect boxes ``(x, y, z, h, w, l, ry)`` of KITTI objects."""
    if not objects:
        return np.zeros((0, 7))
    return np.array([(*o.location, *o.dimensions, o.rotation_y) for o in objects], np.float64)


def image_boxes(rect_boxes: np.ndarray, P2: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``(N, 4)`` 2D boxes (left, top, right, bottom) of rect boxes projected with ``P2``,
    clipped to the image ``(width, height)`` as OpenPCDet does. Corners nearer than
    ``MIN_DEPTH`` are dropped; a box with no projectable corner gets an empty box (0, 0, 0, 0),
    which the metric ignores as too small."""
    corners = rect_box_corners(rect_boxes)  # (N, 8, 3)
    homo = np.concatenate([corners, np.ones((*corners.shape[:2], 1))], axis=-1) @ P2.T
    depth = homo[..., 2]
    valid = depth > MIN_DEPTH
    uv = homo[..., :2] / np.where(valid, depth, 1.0)[..., None]
    big = np.float64(1e12)
    lo = np.where(valid[..., None], uv, big).min(axis=1)
    hi = np.where(valid[..., None], uv, -big).max(axis=1)
    width, height = image_size
    out = np.concatenate(
        [np.clip(lo, 0, [width - 1, height - 1]), np.clip(hi, 0, [width - 1, height - 1])], axis=1
    )
    out[~valid.any(axis=1)] = 0.0
    return out


def ego_boxes_to_objects(
    boxes: np.ndarray,
    types: Sequence[str],
    scores: np.ndarray,
    calib: KittiCalib,
    image_size: tuple[int, int],
) -> list[KittiObject]:
    """Detections in the ego frame -> KITTI detection lines (with scores) for evaluation.

    ``boxes`` (N, 9), ``types`` KITTI type names (see ``BEVKD_TO_KITTI``), ``scores`` (N,),
    ``image_size`` = (width, height) of ``image_2``. ``truncated``/``occluded`` are written as 0
    (the metric ignores them for detections); ``alpha = ry - atan2(x, z)``.
    """
    rect = ego_boxes_to_rect(boxes, calib.velo2rect())
    bbox = image_boxes(rect, calib.P2, image_size)
    alpha = wrap_angle(rect[:, 6] - np.arctan2(rect[:, 0], rect[:, 2]))
    return [
        KittiObject(
            type=types[i],
            truncated=0.0,
            occluded=0,
            alpha=float(alpha[i]),
            bbox=(float(bbox[i, 0]), float(bbox[i, 1]), float(bbox[i, 2]), float(bbox[i, 3])),
            dimensions=(float(rect[i, 3]), float(rect[i, 4]), float(rect[i, 5])),
            location=(float(rect[i, 0]), float(rect[i, 1]), float(rect[i, 2])),
            rotation_y=float(wrap_angle(rect[i, 6])),
            score=float(scores[i]),
        )
        for i in range(len(rect))
    ]
