"""The detection figures (``bevkd.viz.draw``) on real synthetic nuScenes / KITTI frames, and
the camera projection against a hand computation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from nuscenes_copy import private_copy
from PIL import Image

from bevkd.datasets.dataset import load_frames
from bevkd.datasets.frame import Frame
from bevkd.pipeline.config import load_config
from bevkd.pipeline.errors import DataError
from bevkd.pipeline.geometry import NUSCENES_CLASSES
from bevkd.viz.draw import draw_bev, draw_cameras, in_view, project_box_corners

DEEPSKYBLUE = (0, 191, 255)
LIME = (0, 255, 0)
ORANGE = (255, 165, 0)


@pytest.fixture(scope="module")
def frame(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Frame:
    """A real labelled val frame of the synthetic nuScenes dataset (6 cameras), read from a
    private copy (indexing writes into the root; the session fixture must stay as generated)."""
    root = private_copy(tiny_nuscenes, tmp_path_factory.mktemp("draw"))
    frames = load_frames(load_config(None, [f"data.root={root}"]), "val")
    labelled = [f for f in frames if f.has_label and len(f.boxes)]
    assert labelled, "the tiny dataset should have a labelled val frame"
    return labelled[0]


def _pixels_near(path: Path, color: tuple[int, int, int], tol: int = 40) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(rgb - np.array(color)).max(axis=-1) <= tol).sum())


def _box_on_axis(cam2ego: np.ndarray, distance: float) -> np.ndarray:
    """(1, 9) a 2 x 1 x 1.5 m box centred ``distance`` m along the camera's optical axis."""
    centre = cam2ego @ np.array([0.0, 0.0, distance, 1.0])
    return np.array([[*centre[:3], 2.0, 1.0, 1.5, 0.3, 0.0, 0.0]])


def test_projection_matches_a_hand_computation(frame: Frame) -> None:
    cam = next(c for c in frame.cameras if c.name == "CAM_FRONT")
    box = _box_on_axis(cam.cam2ego, 10.0)
    pixels, depth = project_box_corners(box, cam.cam2ego, cam.cam2img)
    assert pixels.shape == (1, 8, 2) and depth.shape == (1, 8)
    # Corners by hand: yaw about +z, z the box centre; ego -> camera by solving cam2ego.
    x, y, z, length, width, height, yaw = box[0, :7]
    rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    for corner_uv, corner_depth in zip(pixels[0], depth[0], strict=True):
        matches = []
        for sx in (-0.5, 0.5):
            for sy in (-0.5, 0.5):
                for sz in (-0.5, 0.5):
                    xy = rot @ np.array([sx * length, sy * width]) + [x, y]
                    p_cam = np.linalg.solve(cam.cam2ego, [*xy, z + sz * height, 1.0])[:3]
                    uvw = cam.cam2img @ p_cam
                    uv = uvw[:2] / uvw[2]
                    matches.append(
                        np.allclose(uv, corner_uv) and np.isclose(p_cam[2], corner_depth)
                    )
        assert sum(matches) == 1
    # Straight ahead: the centre column region, the mean depth the distance along the axis.
    cx, cy = cam.cam2img[0, 2], cam.cam2img[1, 2]
    assert abs(pixels[0, :, 0].mean() - cx) < 0.1 * cam.width
    assert abs(pixels[0, :, 1].mean() - cy) < 0.1 * cam.height
    assert depth.mean() == pytest.approx(10.0)


def test_in_view_keeps_boxes_ahead_and_drops_behind_and_outside(frame: Frame) -> None:
    cam = next(c for c in frame.cameras if c.name == "CAM_FRONT")
    boxes = np.concatenate(
        [
            _box_on_axis(cam.cam2ego, 10.0),  # ahead
            _box_on_axis(cam.cam2ego, -10.0),  # behind: would project onto the centre too
            _box_on_axis(cam.cam2ego, 0.5),  # straddles the camera plane
        ]
    )
    side = cam.cam2ego @ np.array([200.0, 0.0, 5.0, 1.0])  # in front, far right of the image
    boxes = np.concatenate([boxes, [[*side[:3], 2.0, 1.0, 1.5, 0.0, 0.0, 0.0]]])
    pixels, depth = project_box_corners(boxes, cam.cam2ego, cam.cam2img)
    assert (depth[1] < 0).all()
    assert in_view(pixels, depth, cam.width, cam.height).tolist() == [True, False, False, False]
    assert in_view(pixels[:0], depth[:0], cam.width, cam.height).shape == (0,)


def test_projection_accepts_kitti_3x4_projection(tiny_kitti: Path) -> None:
    """A KITTI frame's (cam2ego, K) gives the same pixels as rect2velo with the file's 3x4 P2."""
    from bevkd.datasets.kitti import calib_of, load_kitti_frames

    kitti = next(f for f in load_kitti_frames(tiny_kitti, "val", ("car",)) if len(f.boxes))
    (cam,) = kitti.cameras
    calib = calib_of(kitti)
    ours, depth = project_box_corners(kitti.boxes, cam.cam2ego, cam.cam2img)
    theirs, _ = project_box_corners(kitti.boxes, calib.rect2velo(), calib.P2)
    front = (depth > 0.1).all(axis=1)
    assert front.any()
    np.testing.assert_allclose(ours[front], theirs[front], atol=1e-6)
    padded = np.eye(4)
    padded[:3, :3] = cam.cam2img
    np.testing.assert_allclose(project_box_corners(kitti.boxes, cam.cam2ego, padded)[0], ours)


def test_draw_cameras_draws_gt_as_predictions(frame: Frame, tmp_path: Path) -> None:
    n = len(frame.boxes)
    scores = np.linspace(0.5, 1.0, n)
    out = draw_cameras(
        tmp_path / "nested" / "cams.png", frame, frame.boxes, scores, frame.labels,
        NUSCENES_CLASSES, gt_boxes=frame.boxes,
    )  # fmt: skip
    assert out.is_file()
    width, height = Image.open(out).size
    # 6 cameras in 2 rows of 3 panels, 4 inches wide each at 100 dpi.
    assert width == 1200 and height > 400
    empty = draw_cameras(
        tmp_path / "empty.png", frame, frame.boxes, scores, frame.labels, NUSCENES_CLASSES,
        score_threshold=1.5,
    )  # fmt: skip
    assert _pixels_near(out, DEEPSKYBLUE) > _pixels_near(empty, DEEPSKYBLUE) + 100
    # Predictions are drawn over GT; with all predictions thresholded away, GT shows green.
    gt_only = draw_cameras(
        tmp_path / "gt.png", frame, frame.boxes, scores, frame.labels, NUSCENES_CLASSES,
        gt_boxes=frame.boxes, score_threshold=1.5,
    )  # fmt: skip
    assert _pixels_near(gt_only, LIME) > _pixels_near(empty, LIME) + 100


def test_draw_cameras_skips_a_box_behind_the_camera(frame: Frame, tmp_path: Path) -> None:
    cam = next(c for c in frame.cameras if c.name == "CAM_FRONT")
    front_only = replace(frame, cameras=(cam,))
    draw = lambda name, boxes: draw_cameras(  # noqa: E731
        tmp_path / name, front_only, boxes, np.ones(len(boxes)), np.zeros(len(boxes), int),
        NUSCENES_CLASSES,
    )  # fmt: skip
    nothing = np.asarray(Image.open(draw("none.png", np.zeros((0, 9)))))
    behind = np.asarray(Image.open(draw("behind.png", _box_on_axis(cam.cam2ego, -10.0))))
    ahead = draw("ahead.png", _box_on_axis(cam.cam2ego, 10.0))
    assert nothing.shape[:2] == (int(4.0 * cam.height / cam.width * 100 + 40), 400)
    # Identical below the suptitle (which counts the prediction as above the threshold);
    # without the depth check the box would project mirrored onto the image centre.
    np.testing.assert_array_equal(behind[30:], nothing[30:])
    assert _pixels_near(ahead, DEEPSKYBLUE) > 50


def test_draw_cameras_names_an_unreadable_image(frame: Frame, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    broken = replace(frame, cameras=(replace(frame.cameras[0], image_path=str(bad)),))
    with pytest.raises(DataError, match=r"broken\.jpg"):
        draw_cameras(tmp_path / "x.png", broken, frame.boxes, np.ones(len(frame.boxes)),
                     frame.labels, NUSCENES_CLASSES)  # fmt: skip
    missing = replace(
        frame, cameras=(replace(frame.cameras[0], image_path=str(tmp_path / "no.jpg")),)
    )
    with pytest.raises(DataError, match=r"no\.jpg"):
        draw_cameras(tmp_path / "x.png", missing, frame.boxes, np.ones(len(frame.boxes)),
                     frame.labels, NUSCENES_CLASSES)  # fmt: skip


def test_draw_cameras_on_a_kitti_frame(tiny_kitti: Path, tmp_path: Path) -> None:
    from bevkd.datasets.kitti import load_kitti_frames

    kitti = next(f for f in load_kitti_frames(tiny_kitti, "val", ("car",)) if len(f.boxes))
    out = draw_cameras(tmp_path / "kitti.png", kitti, kitti.boxes, np.ones(len(kitti.boxes)),
                       kitti.labels, ("car",))  # fmt: skip
    assert Image.open(out).size[0] == 400  # one panel
    assert _pixels_near(out, DEEPSKYBLUE) > 50


def test_draw_bev_with_heatmap_teacher_and_gt(frame: Frame, tmp_path: Path) -> None:
    cfg = load_config(None, [])
    grid = cfg.grid.bev_grid
    assert grid.contains(frame.boxes[:, :2]).any(), "the frame should have GT inside the grid"
    n = len(frame.boxes)
    scores = np.full(n, 0.9)
    teacher = np.concatenate([frame.boxes, scores[:, None], frame.labels[:, None]], axis=1)
    heatmap = np.random.default_rng(0).random(grid.shape) * 0.2
    common = dict(heatmap=heatmap, title="frame 0")
    out = draw_bev(tmp_path / "a" / "bev.png", grid, frame.boxes, scores,
                   gt_boxes=frame.boxes, teacher_boxes=teacher, **common)  # fmt: skip
    assert out == tmp_path / "a" / "bev.png" and Image.open(out).size == (700, 700)
    # Above the threshold nothing of predictions or teacher; the legend line stays.
    quiet = draw_bev(tmp_path / "quiet.png", grid, frame.boxes, scores,
                     teacher_boxes=teacher, score_threshold=0.95, **common)  # fmt: skip
    assert _pixels_near(out, DEEPSKYBLUE) > _pixels_near(quiet, DEEPSKYBLUE) + 100
    assert _pixels_near(quiet, ORANGE) < 100
    gt_only = draw_bev(tmp_path / "gt.png", grid, frame.boxes, scores,
                       gt_boxes=frame.boxes, score_threshold=0.95, **common)  # fmt: skip
    assert _pixels_near(gt_only, LIME) > _pixels_near(quiet, LIME) + 100
    teacher_only = draw_bev(tmp_path / "teacher.png", grid, frame.boxes, np.zeros(n),
                            teacher_boxes=teacher, score_threshold=0.5, **common)  # fmt: skip
    assert _pixels_near(teacher_only, ORANGE) > _pixels_near(quiet, ORANGE) + 100
