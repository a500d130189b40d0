"""KITTI object + raw index on a hand-written real-format root, split lists, point cropping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kitti_real_format import LABEL_LINES, P2, write_object_frame, write_raw_calib, write_raw_frame

from bevkd.datasets.kitti import (
    NOT_COUNTED,
    calib_of,
    camera_fov_mask,
    crop_points_to_camera,
    frames_from_config,
    load_kitti_frames,
)
from bevkd.datasets.kitti_lists import BUNDLED_SPLITS, read_split_list, split_list_path
from bevkd.pipeline.config import load_config
from bevkd.pipeline.errors import DataError
from bevkd.pipeline.geometry import NUSCENES_CLASSES


@pytest.fixture()
def kitti_root(tmp_path: Path) -> Path:
    """``<root>/object/{training,testing}``, ``<root>/raw/2011_09_26`` and a mixed list."""
    root = tmp_path / "kitti"
    write_object_frame(root / "object", "000001", LABEL_LINES)
    write_object_frame(root / "object", "000002", [])  # a labelled frame with no objects
    write_object_frame(root / "object", "000003", None)  # testing
    write_raw_calib(root / "raw" / "2011_09_26")
    raw = [write_raw_frame(root / "raw", "2011_09_26", 5, i) for i in (0, 3)]
    sets = root / "object" / "ImageSets"
    sets.mkdir()
    (sets / "mixed.txt").write_text("\n".join(["000001", raw[0], "000002", raw[1]]) + "\n")
    (sets / "test.txt").write_text("000003\n")
    return root


def test_mixed_list_builds_object_and_raw_frames(kitti_root: Path) -> None:
    classes = ("car", "pedestrian", "bicycle")
    frames = load_kitti_frames(kitti_root, "mixed", classes)
    assert [f.has_label for f in frames] == [True, False, True, False]
    obj, raw = frames[0], frames[1]
    assert obj.token == "000001" and obj.dataset == "kitti" and obj.points_dim == 4
    assert obj.split == "mixed" and obj.lidar_path.endswith("object/training/velodyne/000001.bin")
    np.testing.assert_array_equal(obj.lidar2ego, np.eye(4))
    # Car -> car, Cyclist -> bicycle; Truck is not in this class list; Van and DontCare never train
    assert (
        obj.labels.tolist() == [0, 2]
        and obj.boxes.shape == (2, 9)
        and obj.boxes.dtype == np.float32
    )
    assert obj.num_lidar_pts.tolist() == [NOT_COUNTED, NOT_COUNTED]
    np.testing.assert_allclose(obj.boxes[0, 3:6], [3.69, 1.87, 1.67], rtol=1e-6)  # l, w, h
    assert np.all(obj.boxes[:, 7:] == 0)
    (cam,) = obj.cameras
    assert cam.name == "CAM2" and (cam.width, cam.height) == (1242, 375)
    assert cam.image_path.endswith("object/training/image_2/000001.png")
    np.testing.assert_allclose(cam.cam2img, P2[:, :3])
    # all nuScenes classes: the Truck trains too
    assert load_kitti_frames(kitti_root, "mixed")[0].labels.tolist() == [
        NUSCENES_CLASSES.index("truck"),
        NUSCENES_CLASSES.index("car"),
        NUSCENES_CLASSES.index("bicycle"),
    ]
    assert len(frames[2].boxes) == 0 and frames[2].has_label

    assert raw.token == "2011_09_26/2011_09_26_drive_0005_sync/image_02/data/0000000000"
    assert raw.scene == "2011_09_26_drive_0005_sync" and len(raw.boxes) == 0
    assert raw.lidar_path.endswith("2011_09_26_drive_0005_sync/velodyne_points/data/0000000000.bin")
    assert raw.cameras[0].image_path.endswith("image_02/data/0000000000.png")
    np.testing.assert_allclose(raw.cameras[0].cam2ego, obj.cameras[0].cam2ego, atol=1e-9)
    # timestamps.txt: 13:02:25.964389 and 13:02:28.964389 -> 3 s apart, in microseconds
    assert frames[3].timestamp - raw.timestamp == 3_000_000
    np.testing.assert_allclose(calib_of(raw).P2, P2)
    np.testing.assert_allclose(calib_of(obj).P2, P2)


def test_test_split_reads_testing_without_labels(kitti_root: Path) -> None:
    (frame,) = load_kitti_frames(kitti_root, "test")
    assert not frame.has_label and "object/testing/" in frame.lidar_path


def test_point_counts_on_request(kitti_root: Path) -> None:
    frame = load_kitti_frames(kitti_root, "mixed", count_points=True)[0]
    points = np.fromfile(frame.lidar_path, np.float32).reshape(-1, 4)
    from bevkd.pipeline.geometry import points_in_boxes

    assert (
        frame.num_lidar_pts.tolist() == points_in_boxes(points[:, :3], frame.boxes).sum(1).tolist()
    )


def test_missing_frame_names_list_line_and_path(kitti_root: Path) -> None:
    lst = kitti_root / "bad.txt"
    lst.write_text("000001\n000009\n")
    with pytest.raises(
        DataError, match=r"bad\.txt:2: frame 000009: .*training/image_2/000009\.png not found"
    ):
        load_kitti_frames(kitti_root, str(lst))
    (kitti_root / "object" / "training" / "label_2" / "000002.txt").unlink()
    lst.write_text("000002\n")
    with pytest.raises(
        DataError, match=r"bad\.txt:1: frame 000002: .*label_2/000002\.txt not found"
    ):
        load_kitti_frames(kitti_root, str(lst))
    lst.write_text("\n2011_09_26/2011_09_26_drive_0005_sync/image_02/data/0000000007\n")
    with pytest.raises(
        DataError,
        match=r"bad\.txt:2: frame 2011_09_26/.*0000000007: .*image_02/data/0000000007\.png not found",
    ):
        load_kitti_frames(kitti_root, str(lst))
    lst.write_text("000001\n1234\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: '1234' is neither a KITTI object id"):
        load_kitti_frames(kitti_root, str(lst))
    with pytest.raises(DataError, match="no list for KITTI split 'nope'"):
        load_kitti_frames(kitti_root, "nope")


def test_raw_calibration_missing(kitti_root: Path) -> None:
    (kitti_root / "raw" / "2011_09_26" / "calib_velo_to_cam.txt").unlink()
    with pytest.raises(DataError, match=r"calib_velo_to_cam\.txt not found"):
        load_kitti_frames(kitti_root, "mixed")


def test_bundled_lists() -> None:
    assert split_list_path("train") == BUNDLED_SPLITS / "train.txt"
    mixed = read_split_list(split_list_path("kitti_train_and_eigen_clean"))
    kinds = [e.kind for e in mixed]
    assert len(mixed) == 18652 and kinds.count("object") == 3712 and kinds.count("raw") == 14940
    eigen = read_split_list(split_list_path("eigen_clean"))
    assert {e.date for e in eigen} == {"2011_09_30", "2011_10_03"}
    assert len({e.drive for e in eigen}) == 10
    assert [e.token for e in mixed[:3712]] == [
        e.token for e in read_split_list(split_list_path("train"))
    ]
    counts = {name: len(read_split_list(split_list_path(name))) for name in ("val", "test")}
    assert counts == {"val": 3769, "test": 7518}


def test_camera_crop(kitti_root: Path) -> None:
    frame = load_kitti_frames(kitti_root, "mixed")[0]
    points = np.array(
        [
            [10.0, 0.0, 0.0, 0.5],  # straight ahead
            [-10.0, 0.0, 0.0, 0.5],  # behind
            [5.0, 20.0, 0.0, 0.5],  # far left, outside the ~81 deg field of view
            [30.0, -5.0, -1.0, 0.5],  # ahead, right
            [10.0, 0.0, 6.0, 0.5],  # above the image
        ],
        dtype=np.float32,
    )
    assert camera_fov_mask(points, frame.cameras[0]).tolist() == [True, False, False, True, False]
    kept = crop_points_to_camera(points, frame)
    assert kept.shape == (2, 4) and kept.dtype == np.float32


def test_frames_from_config(kitti_root: Path, tmp_path: Path) -> None:
    raw_elsewhere = kitti_root / "raw"
    cfg = load_config(
        None,
        [
            "data.format=kitti",
            f"data.root={kitti_root / 'object'}",  # a root that is itself the object root
            f"data.kitti_raw_root={raw_elsewhere}",
            "classes=[car, pedestrian, bicycle]",
        ],
    )
    frames = frames_from_config(cfg, "mixed")
    assert len(frames) == 4 and frames[0].labels.tolist() == [0, 2]
