"""The synthetic world in KITTI object + raw layouts, read back with numpy and line splitting."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bevkd.datasets.synthetic import generate, render_kitti_instance_mask
from bevkd.datasets.synthetic.catalog import KINDS
from bevkd.datasets.synthetic.kitti_export import plan
from bevkd.datasets.synthetic.kitti_rig import IMAGE_SIZE
from bevkd.datasets.synthetic.placement import build_scene
from bevkd.datasets.synthetic.presets import get_preset

SEED = 0
TYPES = {
    "Car",
    "Van",
    "Truck",
    "Pedestrian",
    "Person_sitting",
    "Cyclist",
    "Tram",
    "Misc",
    "DontCare",
}
OBJECT_CALIB = {
    "P0": 12,
    "P1": 12,
    "P2": 12,
    "P3": 12,
    "R0_rect": 9,
    "Tr_velo_to_cam": 12,
    "Tr_imu_to_velo": 12,
}
RAW_LINE = re.compile(r"^(\d{4}_\d{2}_\d{2})/\1_drive_\d{4}_sync/image_02/data/\d{10}$")


def _calib(path: Path) -> dict[str, np.ndarray]:
    """``key: numbers`` lines; raw files' ``calib_time: <date time>`` is checked and skipped."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, values = line.split(":", 1)
            if key == "calib_time":
                assert re.fullmatch(r" \d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d", values)
                continue
            out[key] = np.array(values.split(), dtype=np.float64)
    return out


def _ids(root: Path, name: str) -> list[str]:
    return (root / "object" / "ImageSets" / f"{name}.txt").read_text().split("\n")


def _labels(path: Path) -> list[list[str]]:
    return [line.split(" ") for line in path.read_text().splitlines()]


def test_object_files_parse(tiny_kitti: Path) -> None:
    train, val, test = _ids(tiny_kitti, "train"), _ids(tiny_kitti, "val"), _ids(tiny_kitti, "test")
    assert train and val and test and not set(train) & set(val)
    assert all(re.fullmatch(r"\d{6}", i) for i in train + val + test)
    for subset, ids in (("training", train + val), ("testing", test)):
        base = tiny_kitti / "object" / subset
        assert sorted(p.stem for p in (base / "image_2").iterdir()) == sorted(ids)
        for frame_id in ids:
            with Image.open(base / "image_2" / f"{frame_id}.png") as image:
                assert image.format == "PNG" and image.size == IMAGE_SIZE and image.mode == "RGB"
            raw = np.fromfile(base / "velodyne" / f"{frame_id}.bin", dtype=np.float32)
            points = raw.reshape(-1, 4)
            assert raw.size % 4 == 0 and len(points) > 20_000
            assert points[:, 3].min() >= 0.0 and points[:, 3].max() <= 1.0
            assert np.percentile(points[:, 2], 1) == pytest.approx(-1.73, abs=0.1)  # the ground
            calib = _calib(base / "calib" / f"{frame_id}.txt")
            assert {k: len(v) for k, v in calib.items()} == OBJECT_CALIB
        assert (base / "label_2").is_dir() == (subset == "training")
    for frame_id in train + val:
        for fields in _labels(tiny_kitti / "object" / "training" / "label_2" / f"{frame_id}.txt"):
            assert len(fields) == 15 and fields[0] in TYPES
            numbers = [float(v) for v in fields[1:]]
            assert int(fields[2]) in ((-1,) if fields[0] == "DontCare" else (0, 1, 2, 3))
            assert all(re.fullmatch(r"-?\d+\.\d\d", v) for v in fields[4:8])  # 2D box, 2 decimals
            left, top, right, bottom = numbers[3:7]
            assert (
                0 <= left <= right <= IMAGE_SIZE[0] - 1 and 0 <= top <= bottom <= IMAGE_SIZE[1] - 1
            )


def test_raw_drives_calib_and_lists(tiny_kitti: Path) -> None:
    eigen = (tiny_kitti / "object" / "ImageSets" / "eigen_clean.txt").read_text().splitlines()
    assert eigen and all(RAW_LINE.match(line) for line in eigen)
    for line in eigen:
        date, drive, _, _, frame = line.split("/")
        base = tiny_kitti / "raw" / date / drive
        assert (base / "image_02" / "data" / f"{frame}.png").is_file()
        assert (base / "velodyne_points" / "data" / f"{frame}.bin").stat().st_size % 16 == 0
    mixed = (
        (tiny_kitti / "object" / "ImageSets" / "kitti_train_and_eigen_clean.txt")
        .read_text()
        .splitlines()
    )
    assert mixed == _ids(tiny_kitti, "train") + eigen
    date = eigen[0].split("/")[0]
    cam = _calib(tiny_kitti / "raw" / date / "calib_cam_to_cam.txt")
    velo = _calib(tiny_kitti / "raw" / date / "calib_velo_to_cam.txt")
    imu = _calib(tiny_kitti / "raw" / date / "calib_imu_to_velo.txt")
    per_date = _calib(tiny_kitti / "raw" / "calib" / f"{date}.txt")
    obj = _calib(tiny_kitti / "object" / "training" / "calib" / "000000.txt")
    assert per_date.keys() == obj.keys()
    for i in range(4):
        assert len(cam[f"P_rect_0{i}"]) == 12 and cam[f"S_rect_0{i}"].tolist() == list(IMAGE_SIZE)
        np.testing.assert_array_equal(cam[f"P_rect_0{i}"], per_date[f"P{i}"])
    np.testing.assert_array_equal(cam["R_rect_00"], per_date["R0_rect"])
    np.testing.assert_array_equal(
        np.concatenate([velo["R"].reshape(3, 3), velo["T"][:, None]], 1).reshape(-1),
        per_date["Tr_velo_to_cam"],
    )
    np.testing.assert_array_equal(
        np.concatenate([imu["R"].reshape(3, 3), imu["T"][:, None]], 1).reshape(-1),
        per_date["Tr_imu_to_velo"],
    )
    for drive in {line.split("/")[1] for line in eigen}:
        frames = [line for line in eigen if f"/{drive}/" in line]
        stamps = (
            (tiny_kitti / "raw" / date / drive / "image_02" / "timestamps.txt")
            .read_text()
            .splitlines()
        )
        assert len(stamps) == len(frames) and all(
            re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9}", s) for s in stamps
        )


def _box_extent(fields: list[str], p2: np.ndarray) -> np.ndarray | None:
    """u_min, v_min, u_max, v_max of a label's 3D box projected with P2 (None when a corner
    is near or behind the image plane, where projecting corners says nothing)."""
    h, w, l, x, y, z, ry = (float(v) for v in fields[8:15])  # noqa: E741
    xs = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * l / 2
    zs = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
    ys = np.array([0, 0, 0, 0, -h, -h, -h, -h])
    rot = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    corners = rot @ np.stack([xs, ys, zs]) + np.array([[x], [y], [z]])
    uvw = p2 @ np.vstack([corners, np.ones(8)])
    if uvw[2].min() < 0.5:
        return None
    uv = uvw[:2] / uvw[2]
    return np.array([uv[0].min(), uv[1].min(), uv[0].max(), uv[1].max()])


def test_labels_land_on_rendered_objects(tiny_kitti: Path) -> None:
    """Each label's 3D box, projected with P2, encloses its object's pixels; its 2D box holds
    them; fully visible objects fill their 2D box; types follow the documented mapping."""
    tiny = get_preset("tiny")
    scene_of = {where: scene for what, scene, _, where in plan(tiny) if what in ("train", "val")}
    checked = 0
    easy = 0
    for frame_id in _ids(tiny_kitti, "train") + _ids(tiny_kitti, "val"):
        world = build_scene(SEED, scene_of[frame_id], tiny.keyframes, tiny.sweeps_between)
        calib = _calib(tiny_kitti / "object" / "training" / "calib" / f"{frame_id}.txt")
        p2 = calib["P2"].reshape(3, 4)
        labels = _labels(tiny_kitti / "object" / "training" / "label_2" / f"{frame_id}.txt")
        mask, actors = render_kitti_instance_mask("tiny", SEED, f"training/{frame_id}")
        assert len(actors) == len(labels)
        for fields, actor in zip(labels, actors, strict=True):
            rows, cols = np.nonzero(mask == actor)
            assert len(rows) > 0
            left, top, right, bottom = (float(v) for v in fields[4:8])
            assert (
                cols.min() >= left
                and cols.max() <= right
                and rows.min() >= top
                and rows.max() <= bottom
            )
            if fields[0] == "DontCare":
                continue
            assert (
                fields[0] == KINDS[world.actors[actor].kind].kitti
            )  # the documented class mapping
            extent = _box_extent(fields, p2)
            if extent is None:
                continue
            # 2 decimals in the label move corners by up to about a pixel.
            assert extent[0] - 1.5 <= cols.min() and cols.max() <= extent[2] + 1.5
            assert extent[1] - 1.5 <= rows.min() and rows.max() <= extent[3] + 1.5
            box_area = (right - left + 1) * (bottom - top + 1)
            if int(fields[2]) == 0 and float(fields[1]) == 0:
                assert len(rows) > 0.25 * box_area  # fully visible: the object fills its box
            easy += (bottom - top >= 40 * 0.5) and fields[2] == "0" and float(fields[1]) <= 0.15
            checked += 1
    assert checked > 30 and easy > 5


def test_same_seed_same_bytes(tiny_kitti: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", preset="tiny", seed=SEED, fmt="kitti")
    first = sorted(p.relative_to(tiny_kitti) for p in tiny_kitti.rglob("*") if p.is_file())
    second = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        assert (tiny_kitti / rel).read_bytes() == (again / rel).read_bytes(), rel
