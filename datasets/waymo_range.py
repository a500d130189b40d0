"""Waymo range images to points, in numpy, as the official TensorFlow code does it.

The official path (``waymo-open-dataset-tf-2-12-0`` 1.6.7) is
``v2/perception/utils/lidar_utils.py:60-139`` (``convert_range_image_to_cartesian``) over
``utils/range_image_utils.py:256-299`` (``compute_range_image_polar``), ``:302-385``
(``compute_range_image_cartesian``) and ``:699-718`` (``compute_inclination``), with the
per-pixel pose of ``lidar_utils.py:36-57`` and ``utils/transform_utils.py:77-126``;
``:142-178`` (``convert_range_image_to_point_cloud``) keeps pixels with range > 0. Like
``utils/frame_utils.py:104-181``, only the TOP laser has a per-pixel pose.
"""

from __future__ import annotations

import numpy as np


def inclinations(low: float, high: float, values: np.ndarray | None, height: int) -> np.ndarray:
    """(H,) beam inclination (rad) of each range-image row, row 0 the top beam.

    ``values`` (bottom beam first) when the calibration has them, else ``height`` uniform beams
    at ``low + (0.5 + i) / height * (high - low)`` (``compute_inclination``); either is then
    reversed (``lidar_utils.py:92-104``)."""
    if values is not None and len(values):
        beams = np.asarray(values, dtype=np.float64)
        if len(beams) != height:
            raise ValueError(f"{len(beams)} beam inclinations for a range image of {height} rows")
    else:
        beams = low + (0.5 + np.arange(height)) / height * (high - low)
    return beams[::-1]


def azimuths(width: int, extrinsic: np.ndarray) -> np.ndarray:
    """(W,) azimuth (rad) of each column in the laser frame: column ``j`` looks along
    ``((W - j - 0.5) / W * 2 - 1) * pi`` in the vehicle frame, less the laser's own yaw
    ``atan2(R[1, 0], R[0, 0])`` (``range_image_utils.py:285-291``)."""
    correction = np.arctan2(extrinsic[1, 0], extrinsic[0, 0])
    ratios = (np.arange(width, 0, -1, dtype=np.float64) - 0.5) / width
    return (ratios * 2.0 - 1.0) * np.pi - correction


def rotation_rpy(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """(..., 3, 3) ``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` (``transform_utils.get_rotation_matrix``)."""
    cr, sr = np.cos(roll), np.sin(roll)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    return np.stack(
        [
            np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], axis=-1),
            np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], axis=-1),
            np.stack([-sp, cp * sr, cp * cr], axis=-1),
        ],
        axis=-2,
    )


def range_image_to_points(
    range_image: np.ndarray,
    extrinsic: np.ndarray,
    inclination: np.ndarray,
    pixel_pose: np.ndarray | None = None,
    vehicle_pose: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Points of one range image return, in the vehicle frame of ``vehicle_pose``.

    ``range_image``: (H, W, C) with range, intensity and elongation in channels 0, 1, 2;
    ``extrinsic``: 4x4 laser -> vehicle; ``inclination``: (H,) from :func:`inclinations`;
    ``pixel_pose``: (H, W, 6) roll, pitch, yaw, x, y, z (vehicle -> world at each pixel's
    time), with ``vehicle_pose`` (4x4 world_from_vehicle of the frame) to come back by.
    Returns (P, 3) float64 xyz and (P, 2) float32 intensity and elongation (channels 1 and 2)
    of the pixels with range > 0, row-major.
    """
    width = range_image.shape[1]
    rows, cols = np.nonzero(range_image[..., 0] > 0)
    r = range_image[rows, cols, 0].astype(np.float64)
    incl = inclination[rows]
    az = azimuths(width, extrinsic)[cols]
    local = np.stack(
        [np.cos(az) * np.cos(incl) * r, np.sin(az) * np.cos(incl) * r, np.sin(incl) * r], axis=-1
    )
    xyz = local @ extrinsic[:3, :3].T + extrinsic[:3, 3]
    if pixel_pose is not None:
        if vehicle_pose is None:
            raise ValueError("a per-pixel pose needs the frame's vehicle pose")
        pose = pixel_pose[rows, cols].astype(np.float64)
        world = np.einsum("nij,nj->ni", rotation_rpy(pose[:, 0], pose[:, 1], pose[:, 2]), xyz)
        world += pose[:, 3:6]
        rot, trans = vehicle_pose[:3, :3], vehicle_pose[:3, 3]
        xyz = (world - trans) @ rot  # world -> vehicle: R^T (p - t)
    return xyz, range_image[rows, cols, 1:3].astype(np.float32)
