"""The synthetic world in nuScenes format, read back with plain nuscenes-devkit."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from bevkd.datasets.synthetic import generate, render_instance_mask
from bevkd.datasets.synthetic.catalog import KINDS, attribute_for
from bevkd.datasets.synthetic.nuscenes_frames import CAMERAS, CHANNELS, LIDAR, frame_at
from bevkd.datasets.synthetic.nuscenes_writer import (
    TRAIN_SCENES,
    VAL_SCENES,
    make_token,
    scene_names,
)
from bevkd.datasets.synthetic.placement import build_scene
from bevkd.datasets.synthetic.presets import get_preset
from bevkd.datasets.synthetic.world import EGO_CENTRE_X, EGO_SIZE, SceneWorld

TINY = get_preset("tiny")
SEED = 0


@pytest.fixture(scope="module")
def nusc(tiny_nuscenes: Path):
    from nuscenes import NuScenes

    return NuScenes(version="v1.0-trainval", dataroot=str(tiny_nuscenes), verbose=False)


@cache
def _world(scene: int) -> SceneWorld:
    return build_scene(SEED, scene, TINY.keyframes, TINY.sweeps_between)


def _world_actor_time(nusc, ann: dict) -> tuple[SceneWorld, int, float]:
    """The world scene, actor index and scene time behind an annotation."""
    sample = nusc.get("sample", ann["sample_token"])
    scene = scene_names(TINY).index(nusc.get("scene", sample["scene_token"])["name"])
    world = _world(scene)
    tokens = [make_token(SEED, TINY.name, "instance", scene, a) for a in range(len(world.actors))]
    time = float(world.frame_times[frame_at(world, scene, sample["timestamp"])])
    return world, tokens.index(ann["instance_token"]), time


def test_tables_sensors_and_splits(nusc, tiny_nuscenes: Path) -> None:
    from nuscenes.utils import splits

    assert len(nusc.scene) == TINY.scenes
    assert len(nusc.sample) == TINY.scenes * TINY.keyframes
    for sample in nusc.sample:
        assert set(sample["data"]) == set(CHANNELS)
        for channel, token in sample["data"].items():
            sd = nusc.get("sample_data", token)
            assert sd["is_key_frame"] and sd["filename"].startswith(f"samples/{channel}/")
            assert (tiny_nuscenes / sd["filename"]).is_file()
    sweeps = [sd for sd in nusc.sample_data if not sd["is_key_frame"]]
    assert Counter(sd["channel"] for sd in sweeps) == {
        c: TINY.scenes * TINY.keyframes * TINY.sweeps_between for c in CHANNELS
    }
    for sd in sweeps:
        assert (
            sd["filename"].startswith(f"sweeps/{sd['channel']}/")
            and (tiny_nuscenes / sd["filename"]).is_file()
        )
        # A sweep belongs to the next keyframe's sample and comes before it.
        assert sd["timestamp"] < nusc.get("sample", sd["sample_token"])["timestamp"]
    # Per channel, prev/next link every scene's sample_data in time order.
    for scene in nusc.scene:
        first = nusc.get("sample", scene["first_sample_token"])
        for channel in CHANNELS:
            sd = nusc.get("sample_data", first["data"][channel])
            while sd["prev"]:
                sd = nusc.get("sample_data", sd["prev"])
            stamps = [sd["timestamp"]]
            while sd["next"]:
                sd = nusc.get("sample_data", sd["next"])
                stamps.append(sd["timestamp"])
            assert stamps == sorted(stamps) and len(stamps) == TINY.keyframes * (
                1 + TINY.sweeps_between
            )
    saved = json.loads((tiny_nuscenes / "v1.0-trainval" / "splits.json").read_text())
    names = [s["name"] for s in nusc.scene]
    assert saved["train"] + saved["val"] == names and saved["unlabeled"] == saved["train"]
    # The devkit's predefined splits pick the same scenes, so eval_set="val" works as is.
    assert set(saved["train"]) <= set(splits.train) and set(saved["val"]) <= set(splits.val)
    assert [f"scene-{n:04d}" for n in TRAIN_SCENES] == splits.train[: len(TRAIN_SCENES)]
    assert [f"scene-{n:04d}" for n in VAL_SCENES] == splits.val[: len(VAL_SCENES)]


def test_lidar_files(nusc, tiny_nuscenes: Path) -> None:
    for sd in nusc.sample_data:
        if sd["channel"] != LIDAR:
            continue
        raw = np.fromfile(tiny_nuscenes / sd["filename"], dtype=np.float32)
        assert raw.size % 5 == 0
        points = raw.reshape(-1, 5)
        assert 15_000 < len(points) < 40_000
        assert set(np.unique(points[:, 4]).astype(int)) <= set(range(32))
        assert points[:, 3].min() >= 0 and points[:, 3].max() <= 255
        assert np.hypot(points[:, 0], points[:, 1]).max() <= 71.0
        # The ground (1.84 m below the sensor) is the lowest thing around.
        assert np.percentile(points[:, 2], 1) == pytest.approx(-1.84, abs=0.1)


def test_num_lidar_pts_equals_devkit_count(nusc) -> None:
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box

    counted = 0
    for sample in nusc.sample:
        path, boxes, _ = nusc.get_sample_data(sample["data"][LIDAR])
        points = LidarPointCloud.from_file(path).points[:3, :]
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            assert ann["num_lidar_pts"] == int(points_in_box(box, points).sum()), ann["token"]
            counted += ann["num_lidar_pts"] > 0
    assert counted > 100


def test_boxes_project_onto_rendered_objects(nusc) -> None:
    """The devkit's projection of each box lands on that object's pixels in the render."""
    from nuscenes.utils.geometry_utils import view_points

    checked = 0
    for sample in nusc.sample[:: TINY.keyframes - 1]:
        scene_name = nusc.get("scene", sample["scene_token"])["name"]
        for channel in CAMERAS:
            sd = nusc.get("sample_data", sample["data"][channel])
            _, boxes, intrinsic = nusc.get_sample_data(sd["token"])
            mask, tokens = render_instance_mask(
                TINY.name, SEED, scene_name, sd["timestamp"], channel
            )
            assert mask.shape == (sd["height"], sd["width"])
            for box in boxes:
                ann = nusc.get("sample_annotation", box.token)
                pixels = mask == tokens.index(ann["instance_token"])
                if pixels.sum() < 30 or box.corners()[2].min() < 0.5:
                    continue  # too small to judge, or partly behind the camera
                corners = view_points(box.corners(), intrinsic, normalize=True)[:2]
                rows, cols = np.nonzero(pixels)
                inside = (
                    (cols >= corners[0].min() - 1)
                    & (cols <= corners[0].max() + 1)
                    & (rows >= corners[1].min() - 1)
                    & (rows <= corners[1].max() + 1)
                )
                assert inside.mean() == 1.0, (channel, ann["token"])
                # And an unoccluded object inside the image fills a good part of its projected box.
                area = (corners[0].max() - corners[0].min()) * (corners[1].max() - corners[1].min())
                in_image = (
                    corners.min() >= 0
                    and corners[0].max() < sd["width"]
                    and corners[1].max() < sd["height"]
                )
                if ann["visibility_token"] == "4" and in_image:
                    assert pixels.sum() > 0.3 * area, (channel, ann["token"])
                checked += 1
    assert checked >= 20


def test_velocities_match_world(nusc) -> None:
    compared = 0
    for ann in nusc.sample_annotation:
        world, actor, time = _world_actor_time(nusc, ann)
        state = world.actors[actor].states(world.road, np.array([time]))[0]
        assert ann["translation"][:2] == pytest.approx(state[:2].tolist(), abs=1e-4)
        velocity = nusc.box_velocity(ann["token"])[:2]
        if not np.isnan(velocity).any():
            assert np.linalg.norm(velocity - state[7:9]) < 0.1 + 0.02 * np.linalg.norm(
                state[7:9]
            ), ann["token"]
            compared += 1
        # Attributes follow the class and the motion.
        spec = world.actors[actor]
        expected = attribute_for(KINDS[spec.kind], spec.moving, spec.parked)
        names = [nusc.get("attribute", a)["name"] for a in ann["attribute_tokens"]]
        assert names == ([expected] if expected else [])
        assert ann["translation"][2] == pytest.approx(ann["size"][2] / 2, abs=1e-3)  # on the ground
    assert compared > 100


def test_objects_do_not_overlap() -> None:
    from shapely.geometry import Polygon

    from bevkd.pipeline.geometry import bev_corners

    for scene in range(TINY.scenes):
        world = _world(scene)
        for time in world.frame_times:
            boxes = world.boxes(float(time))
            x, y, yaw = world.ego_pose(float(time))
            ego = np.array(
                [
                    [
                        x + EGO_CENTRE_X * np.cos(yaw),
                        y + EGO_CENTRE_X * np.sin(yaw),
                        0.8,
                        *EGO_SIZE,
                        yaw,
                        0,
                        0,
                    ]
                ]
            )
            polygons = [Polygon(c) for c in bev_corners(np.concatenate([ego, boxes]))]
            for i, a in enumerate(polygons):
                for b in polygons[i + 1 :]:
                    assert a.intersection(b).area < 1e-6


def test_demo_world_has_every_class() -> None:
    """The demo preset's annotations (world only, no rendering): all 10 classes, cars first."""
    demo = get_preset("demo")
    counts: Counter[str] = Counter()
    for scene in range(demo.scenes):
        world = build_scene(SEED, scene, demo.keyframes, demo.sweeps_between)
        for time in world.key_times:
            counts.update(
                KINDS[world.actors[a].kind].detection for a in world.annotated(float(time))
            )
    from bevkd.pipeline.geometry import NUSCENES_CLASSES

    assert set(counts) == set(NUSCENES_CLASSES)
    assert counts.most_common(1)[0][0] == "car"


def test_devkit_detection_eval_on_val(nusc, tmp_path: Path) -> None:
    """GT submitted as predictions scores perfectly with eval_set="val"."""
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval
    from nuscenes.eval.detection.utils import category_to_detection_name

    val_scenes = {
        s["token"] for s in nusc.scene if s["name"] in scene_names(TINY)[TINY.train_scenes :]
    }
    results = {}
    for sample in nusc.sample:
        if sample["scene_token"] not in val_scenes:
            continue
        boxes = []
        for token in sample["anns"]:
            ann = nusc.get("sample_annotation", token)
            if ann["num_lidar_pts"] == 0:
                continue  # the devkit drops these from the GT, so they would count as false positives
            boxes.append(
                {
                    "sample_token": sample["token"],
                    "translation": ann["translation"],
                    "size": ann["size"],
                    "rotation": ann["rotation"],
                    "velocity": list(nusc.box_velocity(token)[:2]),
                    "detection_name": category_to_detection_name(ann["category_name"]),
                    "detection_score": 1.0,
                    "attribute_name": "",
                }
            )
        results[sample["token"]] = boxes
    path = tmp_path / "results.json"
    meta = {
        "use_camera": False,
        "use_lidar": True,
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }
    path.write_text(json.dumps({"meta": meta, "results": results}))
    evaluator = DetectionEval(
        nusc, config_factory("detection_cvpr_2019"), str(path), "val", str(tmp_path), verbose=False
    )
    metrics, _ = evaluator.evaluate()
    assert metrics.mean_dist_aps["car"] == pytest.approx(1.0)


def test_same_seed_same_bytes(tiny_nuscenes: Path, tmp_path: Path) -> None:
    """Regenerated in two worker processes (the fixture ran in one): identical files."""
    again = generate(tmp_path / "again", preset="tiny", seed=SEED, fmt="nuscenes", workers=2)
    first = sorted(p.relative_to(tiny_nuscenes) for p in tiny_nuscenes.rglob("*") if p.is_file())
    second = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        assert (tiny_nuscenes / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_stage_refuses_foreign_folders_and_reuses_its_own(
    tiny_nuscenes: Path, tmp_path: Path
) -> None:
    from bevkd.pipeline.errors import DataError
    from bevkd.stages.make_demo_data import GENERATOR_VERSION, STAMP, run

    with pytest.raises(DataError, match="not empty"):
        run(tiny_nuscenes, preset="tiny", seed=SEED, fmt="nuscenes")
    done = tmp_path / "done"
    done.mkdir()
    stamp = {
        "preset": "tiny",
        "seed": SEED,
        "format": "nuscenes",
        "generator_version": GENERATOR_VERSION,
    }
    (done / STAMP).write_text(json.dumps(stamp))
    assert run(done, preset="tiny", seed=SEED, fmt="nuscenes") == done
    assert [p.name for p in done.iterdir()] == [STAMP]  # recorded as written: nothing redone
