"""The KITTI readers and metric on the synthetic world's KITTI export (``tiny_kitti``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bevkd.datasets.kitti import calib_of, load_kitti_frames
from bevkd.datasets.kitti_boxes import objects_to_ego_boxes
from bevkd.datasets.kitti_calib import read_object_calib
from bevkd.datasets.kitti_labels import read_label
from bevkd.datasets.kitti_lists import read_split_list, split_list_path
from bevkd.eval.kitti_ap import DIFFICULTIES, evaluate_kitti, run, write_detections
from bevkd.pipeline.config import load_config
from bevkd.pipeline.geometry import box_corners

CLASSES = ("car", "pedestrian", "bicycle")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "kitti" / "demo_lidar_teacher.yaml"


def test_every_list_indexes(tiny_kitti: Path) -> None:
    for split in ("train", "val", "test", "eigen_clean", "kitti_train_and_eigen_clean"):
        entries = read_split_list(split_list_path(split, tiny_kitti / "object"))
        frames = load_kitti_frames(tiny_kitti, split, CLASSES)
        assert [f.token for f in frames] == [e.token for e in entries] and frames
        assert [f.has_label for f in frames] == [
            e.kind == "object" and split != "test" for e in entries
        ]
        for frame in frames:
            (cam,) = frame.cameras
            with Image.open(cam.image_path) as image:
                assert image.size == (cam.width, cam.height)
            points = np.fromfile(frame.lidar_path, np.float32)
            assert points.size and points.size % 4 == 0
            np.testing.assert_allclose(cam.cam2img, calib_of(frame).P2[:, :3])
    train = load_kitti_frames(tiny_kitti, "train", CLASSES)
    assert sum(len(f.boxes) for f in train) > 0


def test_boxes_land_on_rendered_objects(tiny_kitti: Path) -> None:
    """Every labelled object, converted to the ego frame and projected through the frame's
    CAM2 record, covers that object's pixels in the re-rendered instance mask; an unoccluded,
    untruncated vehicle's box centre lands on the vehicle itself."""
    from bevkd.datasets.synthetic.kitti_export import render_kitti_instance_mask

    checked = centres = 0
    for frame in load_kitti_frames(tiny_kitti, "val", CLASSES):
        mask, actors = render_kitti_instance_mask("tiny", 0, f"training/{frame.token}")
        objects = read_label(tiny_kitti / "object" / "training" / "label_2" / f"{frame.token}.txt")
        assert len(objects) == len(actors)
        (cam,) = frame.cameras
        assert mask.shape == (cam.height, cam.width)
        ego2img = np.eye(4)
        ego2img[:3, :3] = cam.cam2img
        ego2img = ego2img @ np.linalg.inv(cam.cam2ego)
        calib = read_object_calib(
            Path(frame.lidar_path).parents[1] / "calib" / f"{frame.token}.txt"
        )
        rect2velo = calib.rect2velo()
        for obj, actor in zip(objects, actors, strict=True):
            if obj.type == "DontCare":
                continue
            box = objects_to_ego_boxes([obj], rect2velo)
            corners = np.concatenate([box_corners(box)[0], np.ones((8, 1))], axis=1) @ ego2img.T
            if corners[:, 2].min() < 0.5:
                continue  # a box reaching behind the camera has no meaningful projected extent
            uv = corners[:, :2] / corners[:, 2:3]
            # the box centre straight from the label through P2 lands on the same pixel (the
            # corners differ slightly: a box upright in velo is tilted ~0.01 rad in rect)
            x, y, z = obj.location
            uvw = calib.P2 @ np.array([x, y - obj.dimensions[0] / 2, z, 1.0])
            centre = ego2img @ np.r_[box[0, :3], 1.0]
            np.testing.assert_allclose(uvw[:2] / uvw[2], centre[:2] / centre[2], atol=1e-6)
            rows, cols = np.nonzero(mask == actor)
            assert len(rows), f"{frame.token}: {obj.type} not rendered"
            # pixel centres at integer coordinates; allow one pixel for rasterisation
            assert cols.min() >= uv[:, 0].min() - 1 and cols.max() <= uv[:, 0].max() + 1, (
                frame.token,
                obj,
            )
            assert rows.min() >= uv[:, 1].min() - 1 and rows.max() <= uv[:, 1].max() + 1, (
                frame.token,
                obj,
            )
            checked += 1
            if obj.type in ("Car", "Van", "Truck") and obj.occluded == 0 and obj.truncated == 0:
                u, v = np.round(centre[:2] / centre[2]).astype(int)
                assert mask[v, u] == actor, (frame.token, obj)
                centres += 1
    assert checked >= 10 and centres >= 2


def test_val_gt_as_predictions_scores_100(tiny_kitti: Path) -> None:
    """Acceptance: the val labels, given back as detections, score 100 AP|R40 for every class
    and difficulty that has GT (at the export's half resolution)."""
    cfg = load_config(CONFIG)
    assert cfg.data.kitti_pixel_scale == 0.5
    ids = [e.token for e in read_split_list(split_list_path("val", tiny_kitti / "object"))]
    labels = tiny_kitti / "object" / "training" / "label_2"
    gt = {i: read_label(labels / f"{i}.txt") for i in ids}
    dt = {
        i: [replace(o, score=1.0) for o in objs if o.type != "DontCare"] for i, objs in gt.items()
    }
    result = evaluate_kitti(gt, dt, image_scale=cfg.data.kitti_pixel_scale)
    present = 0
    for cls, per_metric in result["ap"].items():
        for metric, values in per_metric.items():
            for level in DIFFICULTIES:
                if result["num_gt"][cls][level]:
                    assert values[level] == pytest.approx(100.0), (cls, metric, level)
                    present += 1
                else:
                    assert values[level] is None
    assert result["num_gt"]["Car"]["moderate"] > 0 and present >= 9


def test_ego_boxes_round_trip_through_results_files(tiny_kitti: Path, tmp_path: Path) -> None:
    """GT boxes of the ego-frame Frames, written as KITTI detections and scored by ``run``:
    the 3D and BEV boxes come back exactly (100 AP wherever a class has GT)."""
    cfg = load_config(CONFIG, [f"data.root={tiny_kitti}"])
    results = tmp_path / "results"
    for frame in load_kitti_frames(tiny_kitti, "val", cfg.classes):
        write_detections(
            results, frame, frame.boxes, np.ones(len(frame.boxes)), frame.labels, cfg.classes
        )
    result = run(cfg, results, tmp_path / "eval", sampling="exact")
    assert result["image_scale"] == 0.5
    for cls in ("Car", "Pedestrian", "Cyclist"):
        for metric in ("3d", "bev"):
            for level in DIFFICULTIES:
                if result["num_gt"][cls][level]:
                    assert result["ap"][cls][metric][level] == pytest.approx(100.0), (
                        cls,
                        metric,
                        level,
                    )
