"""``num_lidar_pts`` exactly as nuscenes-devkit 1.2.0 would count it, without importing the
devkit (its import pulls in sklearn, scipy.stats and matplotlib: seconds per process).

The arithmetic below repeats, operation for operation, ``NuScenes.get_sample_data`` (box moved
into the sensor frame), ``Box.corners`` and ``geometry_utils.points_in_box``, so float
rounding is the same; ``tests/test_synthetic_nuscenes.py`` checks every count against the
devkit itself.
"""

from __future__ import annotations

import numpy as np
from pyquaternion import Quaternion


def box_corners_in_sensor(
    translation: list[float],
    size: list[float],
    rotation: list[float],
    ego: tuple[list[float], list[float]],
    sensor: tuple[list[float], list[float]],
) -> np.ndarray:
    """(3, 8) corners of an annotation (global ``translation``, ``size`` w, l, h, ``rotation``)
    in a sensor frame, given the ego pose and the sensor calibration (translation, rotation)."""
    center = np.array(translation)
    wlh = np.array(size)
    orientation = Quaternion(rotation)
    for shift, turn in (ego, sensor):
        center += -np.array(shift)
        quaternion = Quaternion(turn).inverse
        center = np.dot(quaternion.rotation_matrix, center)
        orientation = quaternion * orientation
    w, l, h = wlh * 1.0  # noqa: E741 - the devkit's names
    x_corners = l / 2 * np.array([1, 1, 1, 1, -1, -1, -1, -1])
    y_corners = w / 2 * np.array([1, -1, -1, 1, 1, -1, -1, 1])
    z_corners = h / 2 * np.array([1, 1, -1, -1, 1, 1, -1, -1])
    corners = np.vstack((x_corners, y_corners, z_corners))
    corners = np.dot(orientation.rotation_matrix, corners)
    x, y, z = center
    corners[0, :] = corners[0, :] + x
    corners[1, :] = corners[1, :] + y
    corners[2, :] = corners[2, :] + z
    return corners


def points_in_corners(corners: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N,) bool: which of ``points`` (3, N) lie in the box with ``corners`` (3, 8)."""
    p1 = corners[:, 0]
    p_x = corners[:, 4]
    p_y = corners[:, 1]
    p_z = corners[:, 3]
    i = p_x - p1
    j = p_y - p1
    k = p_z - p1
    v = points - p1.reshape((-1, 1))
    iv = np.dot(i, v)
    jv = np.dot(j, v)
    kv = np.dot(k, v)
    mask_x = np.logical_and(iv >= 0, iv <= np.dot(i, i))
    mask_y = np.logical_and(jv >= 0, jv <= np.dot(j, j))
    mask_z = np.logical_and(kv >= 0, kv <= np.dot(k, k))
    return np.logical_and(np.logical_and(mask_x, mask_y), mask_z)


def count_points(points: np.ndarray, corners: np.ndarray) -> int:
    """Points (3, N float32, sensor frame) inside the box. Points far from the box are
    skipped first; the test itself runs point by point, so the count is unchanged."""
    centre = corners.mean(axis=1)
    reach = float(np.linalg.norm(corners[:, 0] - corners[:, 6])) / 2 + 0.05
    near = np.flatnonzero(np.all(np.abs(points - centre[:, None]) <= reach, axis=0))
    return int(points_in_corners(corners, points[:, near]).sum())
