"""The Waymo v2 (parquet) reader on the synthetic world's v2 export: points, boxes and camera
calibration against the world's own, the official names, errors and lazy reading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from bevkd.datasets import waymo
from bevkd.datasets import waymo_schema as ws
from bevkd.datasets.dataset import FrameDataset
from bevkd.datasets.frame import Frame
from bevkd.datasets.synthetic import generate
from bevkd.datasets.synthetic import lidar as ld
from bevkd.datasets.synthetic import waymo_frames as wf
from bevkd.datasets.synthetic.nuscenes_frames import scene_timestamp
from bevkd.datasets.synthetic.presets import get_preset
from bevkd.datasets.synthetic.snapshot import snapshot
from bevkd.datasets.waymo_range import inclinations, range_image_to_points, rotation_rpy
from bevkd.pipeline.config import DataConfig
from bevkd.pipeline.errors import DataError
from bevkd.pipeline.geometry import (
    NUSCENES_CLASSES,
    box_corners,
    invert_pose,
    points_in_boxes,
    transform_boxes,
)

SEED = 0
PRESET = get_preset("tiny")
OFFICIAL = json.loads((Path(__file__).parent / "data" / "waymo_v2_schema.json").read_text())
RANGE_QUANTUM = 1e-4  # m: float32 ranges up to 75 m (ulp < 1e-5) through float64 geometry


@pytest.fixture(scope="module")
def training(tiny_waymo: Path) -> list[Frame]:
    return waymo.load_waymo_frames(str(tiny_waymo), "training")


def _frame_index(frame: Frame) -> int:
    """The world frame (index into ``frame_times``) of a read frame of scene 0."""
    world, _ = wf.scene(SEED, 0, PRESET)
    stamps = [scene_timestamp(0, float(t)) for t in world.frame_times]
    return stamps.index(frame.timestamp)


def _world_points(index: int) -> np.ndarray:
    """(N, 4) x, y, z, intensity: the ray caster's TOP points of frame ``index`` of scene 0 in
    the vehicle frame (:func:`lidar.scan`, the point cloud the nuScenes and KITTI exports write)."""
    world, _ = wf.scene(SEED, 0, PRESET)
    snap = snapshot(world, float(world.frame_times[index]))
    lidar2ego = wf.top2ego(PRESET)
    spec = wf.top_spec(PRESET)
    rng = wf.frame_rng(SEED, 0, index)
    hits = ld.scan(spec, lidar2ego, snap.parts, world.road, snap.ego2global, 0.0, rng)
    out = hits[:, :4].astype(np.float64)
    out[:, :3] = out[:, :3] @ lidar2ego[:3, :3].T + lidar2ego[:3, 3]
    return out


# ---- (a) range images -> points ----------------------------------------------------------


@pytest.mark.parametrize("which", [0, 1])  # a sweep, then a keyframe
def test_points_are_the_ray_casters_hits(training: list[Frame], which: int) -> None:
    frame = training[which]
    index = _frame_index(frame)
    hits = _world_points(index)
    expected = hits[:, :3].astype(np.float64)

    points = waymo.load_points(frame)
    assert points.shape == (len(hits), 5)
    distance, nearest = cKDTree(expected).query(points[:, :3].astype(np.float64))
    assert distance.max() < RANGE_QUANTUM
    assert len(np.unique(nearest)) == len(hits)  # one to one
    np.testing.assert_array_equal(points[:, 3], hits[nearest, 3])  # intensity
    assert frame.lidar2ego.tolist() == np.eye(4).tolist()


def test_the_export_is_deterministic(tiny_waymo: Path, tmp_path: Path) -> None:
    generate(tmp_path, preset="tiny", seed=SEED, fmt="waymo")
    files = sorted(p.relative_to(tiny_waymo) for p in tiny_waymo.rglob("*.parquet"))
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet"))
    assert all((tiny_waymo / f).read_bytes() == (tmp_path / f).read_bytes() for f in files)


def test_rotation_is_the_official_3_2_1_euler() -> None:
    """transform_utils.get_rotation_matrix: yaw about z, then pitch about y, then roll about x."""
    rng = np.random.default_rng(0)
    roll, pitch, yaw = rng.uniform(-np.pi, np.pi, (3, 5))
    expected = Rotation.from_euler("ZYX", np.stack([yaw, pitch, roll], axis=1)).as_matrix()
    np.testing.assert_allclose(rotation_rpy(roll, pitch, yaw), expected, atol=1e-12)


def test_a_per_pixel_pose_moves_each_point_by_its_own_pose() -> None:
    """Each pixel goes laser -> vehicle (extrinsic) -> world (its own pose) -> the frame's
    vehicle frame; checked pixel by pixel with scipy rotations and 4x4 matrices."""
    rng = np.random.default_rng(1)
    height, width = 3, 8
    image = np.zeros((height, width, 4), np.float32)
    image[..., 0] = rng.uniform(2.0, 50.0, (height, width))
    image[0, 0, 0] = -1.0  # no return
    pose = rng.uniform(-0.2, 0.2, (height, width, 6)).astype(np.float32)
    pose[..., 3:] *= 100.0
    extrinsic, vehicle = np.eye(4), np.eye(4)
    extrinsic[:3, :3] = Rotation.from_euler("z", 0.7).as_matrix()
    extrinsic[:3, 3] = (1.4, 0.1, 2.2)
    vehicle[:3, :3] = Rotation.from_euler("z", -0.05).as_matrix()
    vehicle[:3, 3] = (10.0, -3.0, 0.5)
    incl = inclinations(-0.3, 0.05, None, height)
    xyz, _ = range_image_to_points(image, extrinsic, incl, pose, vehicle)

    expected = []
    for i, j in zip(*np.nonzero(image[..., 0] > 0), strict=True):
        az = np.pi - (j + 0.5) * 2 * np.pi / width - 0.7
        ray = np.array(
            [np.cos(az) * np.cos(incl[i]), np.sin(az) * np.cos(incl[i]), np.sin(incl[i])]
        )
        pixel = np.eye(4)
        pixel[:3, :3] = Rotation.from_euler("ZYX", pose[i, j, 2::-1].astype(np.float64)).as_matrix()
        pixel[:3, 3] = pose[i, j, 3:]
        laser = np.append(float(image[i, j, 0]) * ray, 1.0)
        expected.append((np.linalg.inv(vehicle) @ pixel @ extrinsic @ laser)[:3])
    np.testing.assert_allclose(xyz, np.array(expected), atol=1e-9)


def test_uniform_inclinations_are_bin_centres_top_row_first() -> None:
    np.testing.assert_allclose(inclinations(-0.1, 0.1, None, 4), [0.075, 0.025, -0.025, -0.075])
    np.testing.assert_allclose(
        inclinations(-1.0, 1.0, np.array([-0.3, 0.0, 0.2]), 3), [0.2, 0.0, -0.3]
    )


# ---- (b) boxes ------------------------------------------------------------------------------


def test_boxes_read_back_exactly(training: list[Frame]) -> None:
    world, _ = wf.scene(SEED, 0, PRESET)
    labelled = [f for f in training if f.has_label]
    assert labelled and len(labelled) == PRESET.keyframes
    for frame in labelled:
        index = _frame_index(frame)
        time = float(world.frame_times[index])
        snap = snapshot(world, time)
        points = np.zeros((0, 3))  # counts are compared below, against the world's own rows
        rows = wf.box_rows(world, time, snap.states, snap.ego2global, points)
        actors = [r["actor"] for r in rows]
        expected = transform_boxes(snap.states[actors], invert_pose(snap.ego2global))
        np.testing.assert_array_equal(frame.boxes, expected.astype(np.float32))
        names = [waymo.WAYMO_TO_BEVKD[wf.WAYMO_TYPES[world.actors[a].kind]] for a in actors]
        assert frame.labels.tolist() == [NUSCENES_CLASSES.index(n) for n in names]
        np.testing.assert_array_equal(frame.ego2global, snap.ego2global)


def test_point_counts_are_the_ray_casters_points_in_each_box(training: list[Frame]) -> None:
    """``num_lidar_points_in_box`` counts the world's own TOP points (:func:`lidar.scan`) in
    the world's boxes. (Recounting the read points in the float32 boxes may differ by a few:
    ground points under a car lie on its bottom face.)"""
    frame = next(f for f in training if f.has_label)
    index = _frame_index(frame)
    world, _ = wf.scene(SEED, 0, PRESET)
    snap = snapshot(world, float(world.frame_times[index]))
    ego = _world_points(index)[:, :3]
    rows = wf.box_rows(world, snap.time, snap.states, snap.ego2global, np.zeros((0, 3)))
    boxes = transform_boxes(snap.states[[r["actor"] for r in rows]], invert_pose(snap.ego2global))
    np.testing.assert_array_equal(frame.num_lidar_pts, points_in_boxes(ego, boxes).sum(axis=1))
    assert frame.num_lidar_pts.sum() > 0
    read = points_in_boxes(waymo.load_points(frame)[:, :3], frame.boxes).sum(axis=1)
    assert np.abs(read - frame.num_lidar_pts).max() <= 0.01 * frame.num_lidar_pts.max()


def test_sweeps_and_splits_without_boxes_are_unlabelled(
    tiny_waymo: Path, training: list[Frame], tmp_path: Path
) -> None:
    sweeps = [f for f in training if not f.has_label]
    assert len(sweeps) == PRESET.keyframes * PRESET.sweeps_between
    assert all(len(f.boxes) == 0 and len(f.labels) == 0 for f in sweeps)
    shutil.copytree(tiny_waymo / "training", tmp_path / "testing", ignore=_only_not("lidar_box"))
    frames = waymo.load_waymo_frames(str(tmp_path), "testing")
    assert len(frames) == len(training)
    assert not any(f.has_label for f in frames)
    assert len(waymo.load_points(frames[0])) > 0


def _only_not(folder: str) -> Any:
    return lambda _dir, names: [n for n in names if n == folder]


# ---- (c) cameras ----------------------------------------------------------------------------


def test_box_corners_project_as_the_world_projects_them(training: list[Frame]) -> None:
    world_camera = wf.front_camera(PRESET)
    world, _ = wf.scene(SEED, 0, PRESET)
    frame = next(f for f in training if f.has_label)
    (camera,) = frame.cameras
    assert (camera.name, camera.width, camera.height) == (
        "FRONT",
        world_camera.width,
        world_camera.height,
    )
    assert camera.distortion == (0.0,) * 5
    snap = snapshot(world, float(world.frame_times[_frame_index(frame)]))
    rows = wf.box_rows(world, float(snap.time), snap.states, snap.ego2global, np.zeros((0, 3)))
    truth = transform_boxes(snap.states[[r["actor"] for r in rows]], invert_pose(snap.ego2global))

    read_uv, _ = _project(
        box_corners(frame.boxes.astype(np.float64)), camera.cam2ego, camera.cam2img
    )
    own_uv, depth = _project(box_corners(truth), world_camera.cam2ego, world_camera.intrinsic)
    in_front = depth > 1.0
    assert in_front.sum() > 8
    assert np.abs(read_uv[in_front] - own_uv[in_front]).max() < 0.5


def _project(
    corners: np.ndarray, cam2ego: np.ndarray, cam2img: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (..., 2) and depths (...) of ego-frame points through an OpenCV camera."""
    ego2cam = invert_pose(cam2ego)
    uvw = (corners @ ego2cam[:3, :3].T + ego2cam[:3, 3]) @ cam2img.T
    return uvw[..., :2] / uvw[..., 2:], uvw[..., 2]


def test_camera_extrinsic_uses_waymo_camera_axes(tiny_waymo: Path) -> None:
    """x forward (the optical axis), y left, z up: independent of the reader's conversion."""
    path = next((tiny_waymo / "training" / ws.CAMERA_CALIBRATION).glob("*.parquet"))
    row = pq.read_table(path).to_pylist()[0]
    extrinsic = np.array(row[ws.CAMERA_EXTRINSIC]).reshape(4, 4)
    cv = wf.front_camera(PRESET).cam2ego  # columns: right, down, forward
    np.testing.assert_allclose(extrinsic[:3, 0], cv[:3, 2], atol=1e-12)
    np.testing.assert_allclose(extrinsic[:3, 1], -cv[:3, 0], atol=1e-12)
    np.testing.assert_allclose(extrinsic[:3, 2], -cv[:3, 1], atol=1e-12)
    assert row[ws.SHUTTER_DIRECTION] == ws.GLOBAL_SHUTTER


def test_camera_image_is_the_jpeg_of_the_frame(training: list[Frame]) -> None:
    camera = training[0].cameras[0]
    image = waymo.load_camera_image(camera)
    assert image.size == (camera.width, camera.height)
    assert 20 < float(np.asarray(image).mean()) < 235


# ---- (d) official names ---------------------------------------------------------------------


def test_the_listed_names_are_the_official_ones() -> None:
    official = OFFICIAL["components"]
    for component, columns in ws.COLUMNS.items():
        for name, arrow_type in columns.items():
            assert official[component].get(name) == str(arrow_type), (component, name)
    enums = OFFICIAL["enums"]
    assert {k: v for k, v in enums["LaserName"].items() if k != "UNKNOWN"} == ws.LASER_NAMES
    assert {k: v for k, v in enums["BoxType"].items() if k != "TYPE_UNKNOWN"} == ws.BOX_TYPES
    assert ws.CAMERA_NAMES.items() <= enums["CameraName"].items()


def test_the_export_writes_official_names(tiny_waymo: Path) -> None:
    for component, columns in ws.COLUMNS.items():
        path = next((tiny_waymo / "training" / component).glob("*.parquet"))
        assert pq.read_schema(path).names == list(columns)


# ---- (e) errors -----------------------------------------------------------------------------


def test_a_truncated_file_is_named(tiny_waymo: Path, training: list[Frame], tmp_path: Path) -> None:
    shutil.copytree(tiny_waymo / "training", tmp_path / "training")
    segment = training[0].scene
    lidar = tmp_path / "training" / ws.LIDAR / f"{segment}.parquet"
    lidar.write_bytes(lidar.read_bytes()[:1000])
    frames = waymo.load_waymo_frames(str(tmp_path), "training")  # listing reads no range image
    with pytest.raises(DataError, match=rf"{segment}.*component lidar: {lidar} is not a readable"):
        waymo.load_points(frames[0])
    poses = tmp_path / "training" / ws.VEHICLE_POSE / f"{segment}.parquet"
    poses.write_bytes(poses.read_bytes()[:-40])
    with pytest.raises(DataError, match=rf"{poses} is not a readable v2 parquet file"):
        waymo.load_waymo_frames(str(tmp_path), "training")


def test_a_missing_component_file_is_named(tiny_waymo: Path, tmp_path: Path) -> None:
    shutil.copytree(
        tiny_waymo / "training", tmp_path / "training", ignore=_only_not(ws.CAMERA_IMAGE)
    )
    with pytest.raises(
        DataError, match=r"component camera_image: .*camera_image/.*\.parquet not found"
    ):
        waymo.load_waymo_frames(str(tmp_path), "training")
    with pytest.raises(DataError, match="no Waymo split 'validation'"):
        waymo.load_waymo_frames(str(tmp_path), "validation")


# ---- (f) lazy reading -----------------------------------------------------------------------


def test_reading_is_lazy_by_segment_and_column(
    training: list[Frame], tiny_waymo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str], Any]] = []
    read_table = pq.read_table

    def spy(path: str, columns: list[str] | None = None, filters: Any = None, **kw: Any) -> Any:
        calls.append((Path(path).parent.name, columns or [], filters))
        return read_table(path, columns=columns, filters=filters, **kw)

    monkeypatch.setattr(pq, "read_table", spy)
    frames = waymo.load_waymo_frames(str(tiny_waymo), "training")
    listed = {component for component, _, _ in calls}
    assert listed == {ws.VEHICLE_POSE, ws.CAMERA_CALIBRATION, ws.CAMERA_IMAGE, ws.LIDAR_BOX}
    assert all(ws.IMAGE not in columns for _, columns, _ in calls)  # keys only, no JPEG

    calls.clear()
    waymo.load_points(frames[0])
    waymo.load_camera_image(frames[0].cameras[0])
    assert {c for c, _, _ in calls} == {
        ws.LIDAR,
        ws.LIDAR_CALIBRATION,
        ws.LIDAR_POSE,
        ws.CAMERA_IMAGE,
    }
    for component, columns, filters in calls:
        assert columns and set(columns) <= set(ws.COLUMNS[component]), component
        if component != ws.LIDAR_CALIBRATION:  # one row per laser, read whole
            assert (ws.TIMESTAMP, "=", frames[0].timestamp) in filters


def test_an_fsspec_url_reads_the_same(tiny_waymo: Path, training: list[Frame]) -> None:
    fs = fsspec.filesystem("memory")
    for path in (tiny_waymo / "training").rglob("*.parquet"):
        fs.pipe(f"/waymo/training/{path.parent.name}/{path.name}", path.read_bytes())
    try:
        frames = waymo.load_waymo_frames("memory://waymo", "training")
        assert [f.token for f in frames] == [f.token for f in training]
        assert frames[1].lidar_path.startswith("memory://waymo/training/lidar/")
        np.testing.assert_array_equal(waymo.load_points(frames[1]), waymo.load_points(training[1]))
    finally:
        fs.rm("/waymo", recursive=True)


def test_a_frame_dataset_loads_waymo_frames(training: list[Frame]) -> None:
    """The rest of bevkd reads Waymo frames through the same loaders as any other."""
    data = DataConfig(cameras=("FRONT",), image_size=(64, 96), depth_stride=8)
    sample = FrameDataset(training, data)[1]
    assert sample.images.shape == (1, 3, 64, 96)
    assert len(sample.points) == len(waymo.load_points(training[1]))
    assert sample.gt_boxes.shape == (len(training[1].boxes), 9)
    assert (sample.depth > 0).any()


def test_overwriting_a_waymo_export_with_another_format_clears_its_splits(tmp_path: Path) -> None:
    from bevkd.stages.make_demo_data import run

    root = tmp_path / "world"
    run(root, preset="tiny", seed=0, fmt="waymo")
    assert (root / "training").is_dir()
    run(root, preset="tiny", seed=0, fmt="kitti", overwrite=True)
    assert not (root / "training").exists() and not (root / "validation").exists()
    assert (root / "object").is_dir()
