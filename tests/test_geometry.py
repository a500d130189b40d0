"""pipeline/geometry.py pinned against nuscenes-devkit's own Box, transform_matrix,
points_in_box and view_points."""

from __future__ import annotations

import numpy as np
import pytest
from nuscenes.utils.data_classes import Box, LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box, transform_matrix, view_points
from pyquaternion import Quaternion

from bevkd.datasets.depth import project_points
from bevkd.pipeline.geometry import (
    BEVGrid,
    bev_transform,
    box_corners,
    invert_pose,
    points_in_boxes,
    pose_matrix,
    transform_boxes,
    transform_points,
)

RNG = np.random.default_rng(7)


def _random_quaternion(rng: np.random.Generator) -> Quaternion:
    return Quaternion(rng.normal(size=4)).normalised


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 9) boxes with varied positions, sizes, yaws and velocities."""
    return np.column_stack(
        [
            rng.uniform(-40, 40, n),
            rng.uniform(-40, 40, n),
            rng.uniform(-2, 2, n),
            rng.uniform(0.5, 12, n),
            rng.uniform(0.4, 3, n),
            rng.uniform(0.5, 4, n),
            rng.uniform(-np.pi, np.pi, n),
            rng.uniform(-10, 10, n),
            rng.uniform(-10, 10, n),
        ]
    )


def _devkit_box(box: np.ndarray) -> Box:
    # Devkit sizes are (w, l, h): l runs along the box's own x axis.
    return Box(
        center=box[:3],
        size=[box[4], box[3], box[5]],
        orientation=Quaternion(axis=[0, 0, 1], angle=box[6]),
        velocity=(box[7], box[8], 0.0),
    )


def test_pose_matrix_matches_devkit_transform_matrix() -> None:
    for _ in range(10):
        t, q = RNG.normal(scale=100, size=3), _random_quaternion(RNG)
        ours = pose_matrix(t, q.elements)
        np.testing.assert_allclose(ours, transform_matrix(t, q, inverse=False), atol=1e-12)
        np.testing.assert_allclose(
            invert_pose(ours), transform_matrix(t, q, inverse=True), atol=1e-9
        )


def test_transform_points_matches_devkit_point_cloud() -> None:
    points = RNG.normal(scale=20, size=(100, 5)).astype(np.float32)
    a2b = pose_matrix(RNG.normal(size=3), _random_quaternion(RNG).elements)
    cloud = LidarPointCloud(points[:, :4].T.copy())
    cloud.transform(a2b)
    ours = transform_points(points, a2b)
    np.testing.assert_allclose(ours[:, :3], cloud.points[:3].T, atol=1e-4)
    np.testing.assert_array_equal(ours[:, 3:], points[:, 3:])  # extra columns ride along


def test_box_corners_match_devkit_box_corners() -> None:
    boxes = _random_boxes(RNG, 20)
    ours = box_corners(boxes)
    for box, corners in zip(boxes, ours, strict=True):
        np.testing.assert_allclose(corners, _devkit_box(box).corners().T, atol=1e-9)


def test_transform_boxes_matches_devkit_rotate_translate() -> None:
    boxes = _random_boxes(RNG, 20)
    yaw, shift = 0.7, np.array([3.0, -8.0, 0.5])
    a2b = pose_matrix(shift, Quaternion(axis=[0, 0, 1], angle=yaw).elements)
    ours = transform_boxes(boxes, a2b)
    for box, moved in zip(boxes, ours, strict=True):
        ref = _devkit_box(box)
        ref.rotate(Quaternion(matrix=a2b[:3, :3]))
        ref.translate(shift)
        np.testing.assert_allclose(moved[:3], ref.center, atol=1e-9)
        np.testing.assert_allclose(moved[[4, 3, 5]], ref.wlh, atol=1e-9)
        assert np.cos(moved[6] - ref.orientation.yaw_pitch_roll[0]) == pytest.approx(1.0)
        np.testing.assert_allclose(moved[7:9], ref.velocity[:2], atol=1e-9)


@pytest.mark.parametrize(
    "aug",
    [
        dict(flip_y=True),
        dict(flip_x=True),
        dict(rotation=-0.4, scale=1.05, flip_x=True, flip_y=True),
        dict(rotation=1.1, scale=0.95),
    ],
)
def test_transformed_boxes_have_the_transformed_corners(aug: dict) -> None:
    boxes = _random_boxes(RNG, 10)
    m = bev_transform(**aug)
    moved_corners = box_corners(transform_boxes(boxes, m))
    for before, after in zip(box_corners(boxes), moved_corners, strict=True):
        expected = transform_points(before, m)
        # A mirror reorders the corners, so compare them as sets.
        np.testing.assert_allclose(np.sort(after, axis=0), np.sort(expected, axis=0), atol=1e-9)


def test_points_in_boxes_matches_devkit_points_in_box() -> None:
    boxes = _random_boxes(RNG, 15)
    boxes[:, :2] = RNG.uniform(-5, 5, size=(15, 2))  # crowd them so points fall in several
    points = RNG.uniform(-10, 10, size=(4000, 3))
    points[:, 2] = RNG.uniform(-3, 3, 4000)
    ours = points_in_boxes(points, boxes)
    for row, box in zip(ours, boxes, strict=True):
        np.testing.assert_array_equal(row, points_in_box(_devkit_box(box), points.T))
    assert ours.any() and not ours.all()


def test_projection_matches_devkit_view_points() -> None:
    intrinsic = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])
    cam2ego = pose_matrix([1.7, 0.0, 1.5], [0.5, -0.5, 0.5, -0.5])  # nuScenes CAM_FRONT-like
    points = np.column_stack(
        [RNG.uniform(5, 50, 50), RNG.uniform(-10, 10, 50), RNG.uniform(-1, 3, 50)]
    )
    cam4 = np.eye(4)
    cam4[:3, :3] = intrinsic
    ours = project_points(points, cam2ego, cam4)
    in_cam = transform_points(points, invert_pose(cam2ego))
    ref = view_points(in_cam.T, intrinsic, normalize=True)
    np.testing.assert_allclose(ours[:, :2], ref[:2].T, atol=1e-6)
    np.testing.assert_allclose(ours[:, 2], in_cam[:, 2], atol=1e-9)


def test_bev_grid_rows_follow_y_and_columns_x() -> None:
    grid = BEVGrid.from_range((-25.6, -12.8, -2, 25.6, 12.8, 4), cell=0.8)
    assert grid.shape == (32, 64)
    ij = grid.xy_to_ij(np.array([[-25.6 + 0.4, -12.8 + 0.4], [25.6 - 0.4, 0.0]]))
    np.testing.assert_allclose(ij, [[0.5, 0.5], [16.0, 63.5]])
    np.testing.assert_allclose(grid.ij_to_xy(ij), [[-25.2, -12.4], [25.2, 0.0]])
