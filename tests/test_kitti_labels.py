"""KITTI labels: parsing, writing, bad lines, and camera-rect <-> ego box conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kitti_real_format import CALIB_2011_09_26, LABEL_LINES, P2, R0_RECT, TR_VELO_TO_CAM

from bevkd.datasets.kitti_boxes import (
    ego_boxes_to_objects,
    ego_boxes_to_rect,
    image_boxes,
    objects_to_ego_boxes,
    objects_to_rect,
)
from bevkd.datasets.kitti_calib import read_object_calib
from bevkd.datasets.kitti_labels import KittiObject, read_label, write_label
from bevkd.pipeline.errors import DataError
from bevkd.pipeline.geometry import points_in_boxes, wrap_angle


def _velo2rect_by_hand() -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = R0_RECT @ TR_VELO_TO_CAM[:, :3]
    out[:3, 3] = R0_RECT @ TR_VELO_TO_CAM[:, 3]
    return out


def test_read_real_label_lines(tmp_path: Path) -> None:
    path = tmp_path / "000001.txt"
    path.write_text("\n".join(LABEL_LINES) + "\n\n")
    objects = read_label(path)
    assert [o.type for o in objects] == ["Truck", "Car", "Cyclist", "Van", "DontCare"]
    car = objects[1]
    assert car.dimensions == (1.67, 1.87, 3.69)  # h, w, l
    assert car.location == (-16.53, 2.39, 58.49)
    assert car.rotation_y == 1.57 and car.occluded == 0 and car.score is None
    assert car.height_px == pytest.approx(203.12 - 181.54)
    assert objects[4].occluded == -1 and objects[4].location == (-1000.0, -1000.0, -1000.0)


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    source.write_text("\n".join(LABEL_LINES) + "\n")
    objects = read_label(source)
    scored = [KittiObject(**{**o.__dict__, "score": 0.25 * i}) for i, o in enumerate(objects)]
    write_label(tmp_path / "out" / "b.txt", scored)
    again = read_label(tmp_path / "out" / "b.txt")
    assert again == scored
    write_label(tmp_path / "empty.txt", [])
    assert read_label(tmp_path / "empty.txt") == []


def test_wrong_field_count_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "000007.txt"
    path.write_text(
        LABEL_LINES[0]
        + "\n"
        + "Car 0.00 0 1.85 387.63 181.54 423.81 203.12 1.67 1.87 3.69 -16.53 2.39\n"
    )
    with pytest.raises(DataError, match=r"000007\.txt:2: expected 15 fields .* got 13"):
        read_label(path)
    path.write_text(
        "Car 0.00 zero 1.85 387.63 181.54 423.81 203.12 1.67 1.87 3.69 -16.53 2.39 58.49 1.57\n"
    )
    with pytest.raises(DataError, match=r"000007\.txt:1: a numeric field is not a number"):
        read_label(path)


def test_object_to_ego_box_by_hand() -> None:
    """The Car of LABEL_LINES through the 2011_09_26 calibration, computed step by step."""
    car = KittiObject(
        "Car",
        0.0,
        0,
        1.85,
        (387.63, 181.54, 423.81, 203.12),
        (1.67, 1.87, 3.69),
        (-16.53, 2.39, 58.49),
        1.57,
    )
    rect2velo = np.linalg.inv(_velo2rect_by_hand())
    h, w, l = 1.67, 1.87, 3.69  # noqa: E741
    centre_rect = np.array([-16.53, 2.39 - h / 2, 58.49, 1.0])  # y points down: lift by h/2
    centre = rect2velo @ centre_rect
    heading_rect = np.array([np.cos(1.57), 0.0, -np.sin(1.57)])  # length axis in rect
    heading = rect2velo[:3, :3] @ heading_rect
    expected = [centre[0], centre[1], centre[2], l, w, h, np.arctan2(heading[1], heading[0]), 0, 0]

    box = objects_to_ego_boxes([car], rect2velo)[0]
    np.testing.assert_allclose(box, expected, atol=1e-9)
    # the rough rules hold to within the rig's small tilt: x ~ z_rect, y ~ -x_rect, yaw ~ -ry - pi/2
    assert box[0] == pytest.approx(58.49 + 0.27, abs=1.0) and box[1] == pytest.approx(
        16.53, abs=0.5
    )
    assert float(wrap_angle(box[6] - (-1.57 - np.pi / 2))) == pytest.approx(0.0, abs=0.02)
    bottom = rect2velo @ np.array([-16.53, 2.39, 58.49, 1.0])
    assert box[2] == pytest.approx(bottom[2] + h / 2, abs=0.02)


def test_ego_rect_round_trip_and_points_inside() -> None:
    rect2velo = np.linalg.inv(_velo2rect_by_hand())
    objects = [
        KittiObject("Car", 0, 0, 0, (0, 0, 0, 0), (1.5, 1.6, 4.0), (2.0, 1.7, 12.0), -1.2),
        KittiObject("Pedestrian", 0, 0, 0, (0, 0, 0, 0), (1.8, 0.6, 0.8), (-3.0, 1.6, 7.5), 2.9),
    ]
    boxes = objects_to_ego_boxes(objects, rect2velo)
    rect = ego_boxes_to_rect(boxes, _velo2rect_by_hand())
    np.testing.assert_allclose(rect[:, :6], objects_to_rect(objects)[:, :6], atol=1e-9)
    np.testing.assert_allclose(
        wrap_angle(rect[:, 6] - objects_to_rect(objects)[:, 6]), 0, atol=1e-12
    )
    # the heading inverse is exact all the way round, despite the rig's tilt
    ry = np.linspace(-np.pi, np.pi, 37)[:-1]
    many = [
        KittiObject("Car", 0, 0, 0, (0, 0, 0, 0), (1.5, 1.6, 4.0), (1.0, 1.7, 20.0), float(r))
        for r in ry
    ]
    back = ego_boxes_to_rect(objects_to_ego_boxes(many, rect2velo), _velo2rect_by_hand())
    np.testing.assert_allclose(wrap_angle(back[:, 6] - ry), 0, atol=1e-12)
    # a point just inside the top of the box in rect (y = bottom - h + eps) is inside in ego
    top_rect = np.array([2.0, 1.7 - 1.5 + 0.02, 12.0, 1.0])
    below_rect = np.array([2.0, 1.7 + 0.05, 12.0, 1.0])
    pts = np.stack([rect2velo @ top_rect, rect2velo @ below_rect])[:, :3]
    inside = points_in_boxes(pts, boxes[:1])[0]
    assert inside.tolist() == [True, False]


def test_image_boxes_enclose_projected_centre(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text(CALIB_2011_09_26)
    calib = read_object_calib(tmp_path / "c.txt")
    rect = np.array([[2.0, 1.7, 12.0, 1.5, 1.6, 4.0, -1.2], [0.0, 1.6, -5.0, 1.5, 1.6, 4.0, 0.0]])
    boxes = image_boxes(rect, P2, (1242, 375))
    centre = P2 @ np.array([2.0, 1.7 - 0.75, 12.0, 1.0])
    u, v = centre[:2] / centre[2]
    assert boxes[0, 0] < u < boxes[0, 2] and boxes[0, 1] < v < boxes[0, 3]
    # the devkit's computeBox3D corners, projected by hand: min/max is the 2D box
    c, s = np.cos(-1.2), np.sin(-1.2)
    xs = np.array([2, 2, -2, -2, 2, 2, -2, -2.0])
    ys = np.array([0, 0, 0, 0, -1.5, -1.5, -1.5, -1.5])
    zs = np.array([0.8, -0.8, -0.8, 0.8, 0.8, -0.8, -0.8, 0.8])
    corners = np.stack([c * xs + s * zs + 2.0, ys + 1.7, -s * xs + c * zs + 12.0, np.ones(8)])
    uvw = P2 @ corners
    uv = uvw[:2] / uvw[2]
    np.testing.assert_allclose(boxes[0], [*uv.min(axis=1), *uv.max(axis=1)], atol=1e-9)
    assert boxes[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # behind the camera: nothing projects
    # detections written from ego boxes carry the same geometry and the projected 2D box
    ego = objects_to_ego_boxes(
        [KittiObject("Car", 0, 0, 0, (0, 0, 0, 0), (1.5, 1.6, 4.0), (2.0, 1.7, 12.0), -1.2)],
        calib.rect2velo(),
    )
    (det,) = ego_boxes_to_objects(ego, ["Car"], np.array([0.9]), calib, (1242, 375))
    assert det.score == 0.9 and det.type == "Car"
    np.testing.assert_allclose(det.location, (2.0, 1.7, 12.0), atol=1e-9)
    np.testing.assert_allclose(det.bbox, boxes[0], atol=1e-6)
    assert det.alpha == pytest.approx(float(wrap_angle(-1.2 - np.arctan2(2.0, 12.0))))
