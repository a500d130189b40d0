"""Overlaps of the KITTI metric against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from bevkd.eval.kitti_iou import bev_iou, box3d_iou, footprints, image_overlap


def _box(
    x: float = 0.0,
    z: float = 10.0,
    ry: float = 0.0,
    h: float = 1.5,
    w: float = 2.0,
    l: float = 4.0,  # noqa: E741
    y: float = 1.6,
) -> list[float]:
    return [x, y, z, h, w, l, ry]


def test_identical_boxes() -> None:
    a = np.array([_box(ry=0.3), _box(x=5, ry=-2.0, w=0.6, l=0.8, h=1.8)])
    np.testing.assert_allclose(np.diag(bev_iou(a, a)), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diag(box3d_iou(a, a)), 1.0, atol=1e-12)


def test_shifted_along_length() -> None:
    """Shift d along the 4 m length of a 4 x 2 footprint: IoU = (4 - d) / (4 + d)."""
    for ry in (0.0, 0.7, -2.3):
        for d in (0.5, 1.0, 3.0):
            direction = np.array([np.cos(ry), -np.sin(ry)])  # length axis in (x, z)
            moved = _box(x=d * direction[0], z=10 + d * direction[1], ry=ry)
            expected = (4 - d) / (4 + d)
            assert bev_iou([_box(ry=ry)], [moved])[0, 0] == pytest.approx(expected, abs=1e-9)
            assert box3d_iou([_box(ry=ry)], [moved])[0, 0] == pytest.approx(expected, abs=1e-9)


def test_rotated_footprints() -> None:
    # a 4 x 2 box against itself turned 90 degrees: a 2 x 2 overlap, union 8 + 8 - 4
    assert bev_iou([_box()], [_box(ry=np.pi / 2)])[0, 0] == pytest.approx(4 / 12, abs=1e-9)
    # a 2 x 2 square against itself turned 45 degrees: a regular octagon of area 8 (sqrt2 - 1)
    octagon = 8 * (np.sqrt(2) - 1)
    iou = bev_iou([_box(w=2, l=2)], [_box(w=2, l=2, ry=np.pi / 4)])[0, 0]
    assert iou == pytest.approx(octagon / (8 - octagon), abs=1e-9)
    # turning by pi maps a box onto itself
    assert bev_iou([_box(ry=0.4)], [_box(ry=0.4 + np.pi)])[0, 0] == pytest.approx(1.0)


def test_footprint_heading_matches_kitti() -> None:
    """ry = 0 points the length along +x; ry = pi/2 along -z (KITTI's (cos ry, 0, -sin ry))."""
    corners = footprints(np.array([_box(x=0, z=0, ry=np.pi / 2)]))[0]
    assert np.ptp(corners[:, 0]) == pytest.approx(2.0) and np.ptp(corners[:, 1]) == pytest.approx(
        4.0
    )
    assert corners[0, 1] == pytest.approx(-2.0)  # the front corners lie toward -z


def test_height_overlap_and_disjoint() -> None:
    # same footprint, half the 1.5 m height shared: inter V/2 over union 2V - V/2
    assert box3d_iou([_box()], [_box(y=1.6 + 0.75)])[0, 0] == pytest.approx(1 / 3, abs=1e-9)
    assert bev_iou([_box()], [_box(y=1.6 + 0.75)])[0, 0] == pytest.approx(1.0)
    assert box3d_iou([_box()], [_box(y=1.6 + 2.0)])[0, 0] == 0.0
    assert bev_iou([_box()], [_box(x=10.0)])[0, 0] == 0.0
    # a box touching at one edge only: zero area
    assert bev_iou([_box()], [_box(x=2.0, ry=0, l=4, w=2, z=13.0)])[0, 0] == pytest.approx(
        0.0, abs=1e-12
    )
    assert bev_iou(np.zeros((0, 7)), [_box()]).shape == (0, 1)


def test_image_overlap_criteria() -> None:
    a = np.array([[0, 0, 10, 10.0]])
    b = np.array([[5, 0, 15, 10.0], [20, 20, 30, 30.0], [0, 0, 10, 5.0]])
    np.testing.assert_allclose(image_overlap(a, b), [[50 / 150, 0, 0.5]])
    np.testing.assert_allclose(image_overlap(a, b, criterion=0), [[0.5, 0, 0.5]])
    np.testing.assert_allclose(image_overlap(a, b, criterion=1), [[0.5, 0, 1.0]])
