"""Frame conventions, the BEV grid, poses and boxes: the geometry every stage shares.

Conventions (for every dataset):

- **Ego/BEV frame**: x forward, y left, z up, metres. nuScenes: the ego vehicle frame
  (``ego_pose``), origin on the ground under the rear axle. KITTI: the velodyne frame.
- **BEV arrays** are ``(C, H, W)``: row ``i`` runs along +y, column ``j`` along +x, so
  ``array[:, i, j]`` covers ``x in [x_min + j*cell, x_min + (j+1)*cell)`` and likewise y.
- **Boxes** are ``(N, 9)`` float arrays ``(x, y, z, l, w, h, yaw, vx, vy)``: centre (z is the
  box's geometric centre, as in nuScenes), size along its own x (length), y (width), z
  (height), yaw about +z from +x, velocity in m/s in the same frame.
- **Transforms** are 4x4 homogeneous matrices named ``a2b``: ``p_b = a2b @ p_a``.

This module is a leaf: numpy and pyquaternion only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pyquaternion import Quaternion

BOX_FIELDS = ("x", "y", "z", "l", "w", "h", "yaw", "vx", "vy")
BOX_DIM = len(BOX_FIELDS)

# Channel map of CenterPoint box regression maps, shared by heads, targets and the store's
# ``box_regression`` fields. Offsets are the sub-cell position of the box centre, in cells,
# relative to the cell's corner: (centre_col - col, centre_row - row) in [0, 1). z: box centre
# height in metres; log_l/w/h: log of the size in metres; sin/cos of yaw; vx, vy in m/s, all
# in the ego frame.
REGRESSION_CHANNELS: tuple[str, ...] = (
    "offset_x",
    "offset_y",
    "z",
    "log_l",
    "log_w",
    "log_h",
    "sin_yaw",
    "cos_yaw",
    "vx",
    "vy",
)

NUSCENES_CLASSES = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)


@dataclass(frozen=True)
class BEVGrid:
    """A regular grid over the ego x-y plane. Rows follow y, columns follow x."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float
    cell: float

    @classmethod
    def from_range(cls, point_cloud_range: Sequence[float], cell: float) -> BEVGrid:
        x0, y0, _, x1, y1, _ = point_cloud_range
        return cls(float(x0), float(y0), float(x1), float(y1), float(cell))

    @property
    def H(self) -> int:
        return round((self.y_max - self.y_min) / self.cell)

    @property
    def W(self) -> int:
        return round((self.x_max - self.x_min) / self.cell)

    @property
    def shape(self) -> tuple[int, int]:
        return self.H, self.W

    def scaled(self, factor: int) -> BEVGrid:
        """The same area at ``factor`` times coarser cells (a downsampled feature scale)."""
        return BEVGrid(self.x_min, self.y_min, self.x_max, self.y_max, self.cell * factor)

    def xy_to_ij(self, xy: np.ndarray) -> np.ndarray:
        """Continuous (row, col) coordinates of points ``(..., 2)``; cell centres are at .5."""
        xy = np.asarray(xy, dtype=np.float64)
        col = (xy[..., 0] - self.x_min) / self.cell
        row = (xy[..., 1] - self.y_min) / self.cell
        return np.stack([row, col], axis=-1)

    def ij_to_xy(self, ij: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`xy_to_ij`."""
        ij = np.asarray(ij, dtype=np.float64)
        x = ij[..., 1] * self.cell + self.x_min
        y = ij[..., 0] * self.cell + self.y_min
        return np.stack([x, y], axis=-1)

    def cell_centers(self) -> np.ndarray:
        """``(H, W, 2)`` x, y of every cell centre."""
        rows, cols = np.meshgrid(np.arange(self.H) + 0.5, np.arange(self.W) + 0.5, indexing="ij")
        return self.ij_to_xy(np.stack([rows, cols], axis=-1))

    def contains(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy)
        return (
            (xy[..., 0] >= self.x_min)
            & (xy[..., 0] < self.x_max)
            & (xy[..., 1] >= self.y_min)
            & (xy[..., 1] < self.y_max)
        )

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "frame": "ego: x forward, y left, z up; rows along y, columns along x",
            "x_min": self.x_min,
            "y_min": self.y_min,
            "x_max": self.x_max,
            "y_max": self.y_max,
            "cell": self.cell,
            "H": self.H,
            "W": self.W,
        }

    @classmethod
    def from_dict(cls, data: dict) -> BEVGrid:
        return cls(data["x_min"], data["y_min"], data["x_max"], data["y_max"], data["cell"])


# ------------------------------------------------------------------------------------------
# Poses
# ------------------------------------------------------------------------------------------


def pose_matrix(translation: Sequence[float], rotation_wxyz: Sequence[float]) -> np.ndarray:
    """4x4 transform from a nuScenes-style record (translation + quaternion w, x, y, z)."""
    out = np.eye(4)
    out[:3, :3] = Quaternion(list(rotation_wxyz)).rotation_matrix
    out[:3, 3] = np.asarray(translation, dtype=np.float64)
    return out


def invert_pose(a2b: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    out = np.eye(4)
    rot = a2b[:3, :3]
    out[:3, :3] = rot.T
    out[:3, 3] = -rot.T @ a2b[:3, 3]
    return out


_IDENTITY = np.eye(4)


def transform_points(points: np.ndarray, a2b: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to ``(N, >=3)`` points; extra columns ride along unchanged."""
    out = np.array(points, dtype=points.dtype, copy=True)
    if np.array_equal(a2b, _IDENTITY):  # no augmentation: skip the float64 round trip
        return out
    xyz = points[:, :3].astype(np.float64)
    # Row by row of the 3x4 block: a (N, 3) @ (3, 3) matmul goes through BLAS, ~3x slower here.
    for row in range(3):
        r = a2b[row]
        out[:, row] = xyz[:, 0] * r[0] + xyz[:, 1] * r[1] + xyz[:, 2] * r[2] + r[3]
    return out


def yaw_of(rotation: np.ndarray) -> float:
    """Heading about +z of a rotation matrix (the yaw of its x axis)."""
    return float(np.arctan2(rotation[1, 0], rotation[0, 0]))


def wrap_angle(angle: np.ndarray | float) -> np.ndarray:
    """Wrap to [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


# ------------------------------------------------------------------------------------------
# Boxes
# ------------------------------------------------------------------------------------------


def transform_boxes(boxes: np.ndarray, a2b: np.ndarray) -> np.ndarray:
    """Move ``(N, 9)`` boxes by a transform whose rotation is about z (plus optional scale).

    Centres are transformed as points, yaw gains the transform's heading, velocities are
    rotated (and scaled), sizes are scaled by the transform's scale. A mirror (det < 0 in x-y)
    reflects yaw too, since yaw is carried as a direction vector.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, BOX_DIM)
    out = boxes.copy()
    lin = a2b[:3, :3]
    out[:, :3] = boxes[:, :3] @ lin.T + a2b[:3, 3]
    xy = lin[:2, :2]
    scale = float(np.sqrt(abs(np.linalg.det(xy))))
    direction = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6])], axis=1) @ xy.T
    out[:, 6] = wrap_angle(np.arctan2(direction[:, 1], direction[:, 0]))
    out[:, 3:6] = boxes[:, 3:6] * np.array([scale, scale, abs(lin[2, 2])])
    out[:, 7:9] = boxes[:, 7:9] @ xy.T
    return out


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """``(N, 8, 3)`` corners, in nuScenes ``Box.corners`` order (front 4, then back 4)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, BOX_DIM)
    l, w, h = boxes[:, 3:4], boxes[:, 4:5], boxes[:, 5:6]  # noqa: E741
    sx = np.array([1, 1, 1, 1, -1, -1, -1, -1]) / 2
    sy = np.array([1, -1, -1, 1, 1, -1, -1, 1]) / 2
    sz = np.array([1, 1, -1, -1, 1, 1, -1, -1]) / 2
    local = np.stack([l * sx, w * sy, h * sz], axis=-1)  # (N, 8, 3)
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    rot = np.zeros((len(boxes), 3, 3))
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1
    return np.einsum("nij,nkj->nki", rot, local) + boxes[:, None, :3]


def bev_corners(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4, 2)`` footprint corners in x, y (counter-clockwise from front-left)."""
    corners = box_corners(boxes)
    return corners[:, [0, 4, 5, 1], :2]


def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(N_boxes, N_points)`` boolean mask of points inside each box (closed interval)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, BOX_DIM)
    if len(boxes) == 0:
        return np.zeros((0, len(points)), dtype=bool)
    rel = points[None, :, :3].astype(np.float64) - boxes[:, None, :3]
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    local_x = rel[..., 0] * c + rel[..., 1] * s
    local_y = -rel[..., 0] * s + rel[..., 1] * c
    return (
        (np.abs(local_x) <= boxes[:, 3:4] / 2)
        & (np.abs(local_y) <= boxes[:, 4:5] / 2)
        & (np.abs(rel[..., 2]) <= boxes[:, 5:6] / 2)
    )


# ------------------------------------------------------------------------------------------
# BEV augmentation as a matrix
# ------------------------------------------------------------------------------------------


def bev_transform(
    rotation: float = 0.0, scale: float = 1.0, flip_x: bool = False, flip_y: bool = False
) -> np.ndarray:
    """4x4 ego->augmented-ego transform: optional flips first, then rotation about z, then scale.

    ``flip_y`` mirrors across the x axis (y -> -y, a left/right flip); ``flip_x`` mirrors
    across the y axis (x -> -x, a front/back flip).
    """
    flip = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0, 1.0])
    c, s = np.cos(rotation), np.sin(rotation)
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return np.diag([scale, scale, scale, 1.0]) @ rot @ flip
