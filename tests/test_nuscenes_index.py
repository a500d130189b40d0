"""The nuScenes index: caching and rebuilds, and every record checked against the devkit."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes_copy import private_copy
from pyquaternion import Quaternion

from bevkd.datasets.loading import load_points
from bevkd.datasets.nuscenes_index import INDEX_FILE, INDEX_SCHEMA_VERSION, FrameIndex, load_index
from bevkd.pipeline.config import DataConfig
from bevkd.pipeline.errors import DataError
from bevkd.pipeline.geometry import NUSCENES_CLASSES, transform_points

VERSION = "v1.0-trainval"


@pytest.fixture(scope="module")
def root(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return private_copy(tiny_nuscenes, tmp_path_factory.mktemp("nuscenes_index"))


@pytest.fixture(scope="module")
def nusc(root: Path) -> NuScenes:
    return NuScenes(VERSION, str(root), verbose=False)


@pytest.fixture(scope="module")
def index(root: Path) -> FrameIndex:
    return load_index(DataConfig(root=str(root), version=VERSION))


@pytest.fixture()
def private_root(tiny_nuscenes: Path, tmp_path: Path) -> Path:
    """A copy of the tables that one test may change."""
    return private_copy(tiny_nuscenes, tmp_path / "root")


def test_index_is_stored_beside_the_tables_and_reused(private_root: Path) -> None:
    data = DataConfig(root=str(private_root), version=VERSION)
    first = load_index(data)
    assert first.path == (private_root / VERSION / INDEX_FILE).resolve()
    stored = json.loads(first.path.read_text())
    assert stored["schema_version"] == INDEX_SCHEMA_VERSION and stored["version"] == VERSION
    stamp = first.path.stat().st_mtime_ns
    second = load_index(data)
    assert second.path.stat().st_mtime_ns == stamp  # read, not rebuilt
    assert second.counts() == first.counts()


def test_index_is_rebuilt_when_a_table_or_the_schema_changes(private_root: Path) -> None:
    data = DataConfig(root=str(private_root), version=VERSION)
    path = load_index(data).path
    assert path is not None
    old = json.loads(path.read_text())["fingerprint"]
    table = private_root / VERSION / "sample_annotation.json"
    os.utime(table, ns=(table.stat().st_atime_ns, table.stat().st_mtime_ns + 10**9))
    assert json.loads(load_index(data).path.read_text())["fingerprint"] != old  # type: ignore[union-attr]

    body = json.loads(path.read_text())
    body["schema_version"] = INDEX_SCHEMA_VERSION - 1
    path.write_text(json.dumps(body))
    load_index(data)
    assert json.loads(path.read_text())["schema_version"] == INDEX_SCHEMA_VERSION


def test_unwritable_dataroot_falls_back_to_the_cache_dir(
    private_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A directory where the index file should go makes that location unwritable even for root.
    (private_root / VERSION / INDEX_FILE).mkdir()
    monkeypatch.setenv("BEVKD_CACHE_DIR", str(tmp_path / "cache"))
    index = load_index(DataConfig(root=str(private_root), version=VERSION))
    assert index.path is not None and index.path.parent == tmp_path / "cache" / "index"
    assert load_index(DataConfig(root=str(private_root), version=VERSION)).path == index.path


def test_splits_follow_splits_json(index: FrameIndex, nusc: NuScenes, root: Path) -> None:
    splits = json.loads((root / VERSION / "splits.json").read_text())
    for split in ("train", "val"):
        scenes = set(splits[split])
        expected = {
            s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes
        }
        frames = index.frames(split)
        assert {f.token for f in frames} == expected and len(frames) == len(expected)
        assert all(f.has_label and f.split == split for f in frames)
    unlabeled = index.frames("unlabeled")
    assert unlabeled, "the tiny world should have sweeps"
    for frame in unlabeled:
        sd = nusc.get("sample_data", frame.token)
        assert sd["channel"] == "LIDAR_TOP" and not sd["is_key_frame"]
        assert not frame.has_label and frame.boxes.shape == (0, 9)
        assert (
            nusc.get("scene", nusc.get("sample", sd["sample_token"])["scene_token"])["name"]
            in splits["unlabeled"]
        )


def _ego_pose(nusc: NuScenes, sd_token: str) -> dict:
    return nusc.get("ego_pose", nusc.get("sample_data", sd_token)["ego_pose_token"])


def test_boxes_match_devkit_boxes_moved_to_ego(index: FrameIndex, nusc: NuScenes) -> None:
    checked = 0
    for frame in index.frames("val"):
        sample = nusc.get("sample", frame.token)
        pose = _ego_pose(nusc, sample["data"]["LIDAR_TOP"])
        anns = [a for a in sample["anns"] if _detection_name(nusc, a) is not None]
        assert len(anns) == len(frame.boxes)
        for ann_token, box, label, npts in zip(
            anns, frame.boxes, frame.labels, frame.num_lidar_pts, strict=True
        ):
            ann = nusc.get("sample_annotation", ann_token)
            ref = nusc.get_box(ann_token)
            ref.velocity = nusc.box_velocity(ann_token)
            ref.translate(-np.array(pose["translation"]))
            ref.rotate(Quaternion(pose["rotation"]).inverse)
            np.testing.assert_allclose(box[:3], ref.center, atol=1e-6)
            np.testing.assert_allclose(box[[4, 3, 5]], ref.wlh, atol=1e-6)  # wlh -> l, w, h
            assert np.cos(box[6] - ref.orientation.yaw_pitch_roll[0]) == pytest.approx(
                1.0, abs=1e-9
            )
            np.testing.assert_allclose(box[7:9], np.nan_to_num(ref.velocity[:2]), atol=1e-6)
            assert NUSCENES_CLASSES[label] == _detection_name(nusc, ann_token)
            assert npts == ann["num_lidar_pts"]
            checked += 1
    assert checked > 0


def _detection_name(nusc: NuScenes, ann_token: str) -> str | None:
    from nuscenes.eval.detection.utils import category_to_detection_name

    return category_to_detection_name(nusc.get("sample_annotation", ann_token)["category_name"])


def test_cameras_project_like_the_devkit_chain(index: FrameIndex, nusc: NuScenes) -> None:
    """A global point seen through our cam2ego equals the devkit's global -> cam ego -> camera."""
    frame = index.frames("val")[0]
    sample = nusc.get("sample", frame.token)
    target = (
        np.array(nusc.get("sample_annotation", sample["anns"][0])["translation"])
        if sample["anns"]
        else np.zeros(3)
    )
    for camera in frame.cameras:
        sd = nusc.get("sample_data", sample["data"][camera.name])
        calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        point = Quaternion(pose["rotation"]).inverse.rotate(target - np.array(pose["translation"]))
        ref = Quaternion(calib["rotation"]).inverse.rotate(point - np.array(calib["translation"]))
        in_ego = transform_points(target[None], np.linalg.inv(frame.ego2global))
        ours = transform_points(in_ego, np.linalg.inv(camera.cam2ego))[0]
        np.testing.assert_allclose(ours, ref, atol=1e-6)
        np.testing.assert_allclose(camera.cam2img, calib["camera_intrinsic"])
        assert Path(camera.image_path).is_file() and camera.image_path.endswith(sd["filename"])


def test_multisweep_points_match_devkit(index: FrameIndex, nusc: NuScenes) -> None:
    frame = next(f for f in index.frames("val") if len(f.sweeps) >= 2)
    sample = nusc.get("sample", frame.token)
    ref, times = LidarPointCloud.from_file_multisweep(
        nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=3, min_distance=0.0
    )
    ours = transform_points(load_points(frame, sweeps=3), np.linalg.inv(frame.lidar2ego))
    np.testing.assert_allclose(ours[:, :4], ref.points[:4].T, atol=2e-4)
    np.testing.assert_allclose(ours[:, 4], times[0], atol=1e-6)
    assert (ours[:, 4] > 0).any()


def test_frames_survive_the_json_round_trip(index: FrameIndex, root: Path) -> None:
    reread = FrameIndex(root.resolve(), json.loads(json.dumps(index.body)))
    for a, b in zip(index.frames("val"), reread.frames("val"), strict=True):
        for field in dataclasses.fields(a):
            va, vb = getattr(a, field.name), getattr(b, field.name)
            if isinstance(va, np.ndarray):
                np.testing.assert_array_equal(va, vb)
        assert a.token == b.token and len(a.cameras) == len(b.cameras)


def test_the_split_data_unlabeled_split_names_holds_sweeps(private_root: Path) -> None:
    """Before, only a split literally named "unlabeled" was built from sweeps: another name for
    it silently returned labelled keyframes."""
    splits_path = private_root / VERSION / "splits.json"
    splits = json.loads(splits_path.read_text())
    splits["raw_sweeps"] = splits.pop("unlabeled")
    splits_path.write_text(json.dumps(splits))
    renamed = load_index(
        DataConfig(root=str(private_root), version=VERSION, unlabeled_split="raw_sweeps")
    )
    sweeps = renamed.frames("raw_sweeps")
    assert sweeps and not any(f.has_label for f in sweeps)
    assert all(f.has_label for f in renamed.frames("train"))
    # The same dataset read under the default name: that split is now keyframes, and the index
    # is rebuilt for it rather than reused.
    default = load_index(DataConfig(root=str(private_root), version=VERSION))
    assert default.body["sweep_split"] == "unlabeled"
    keyframes = default.frames("raw_sweeps")
    assert all(f.has_label for f in keyframes)
    assert not {f.token for f in keyframes} & {f.token for f in sweeps}
    with pytest.raises(DataError, match="no split 'unlabeled'"):
        default.frames("unlabeled")
