"""KITTI calibration readers against hand-written real-format files (2011_09_26)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kitti_real_format import CALIB_2011_09_26, P2, R0_RECT, TR_VELO_TO_CAM, write_raw_calib

from bevkd.datasets.kitti_calib import find_raw_calib, read_object_calib, read_raw_calib
from bevkd.pipeline.errors import DataError


@pytest.fixture()
def object_calib(tmp_path: Path) -> Path:
    path = tmp_path / "000000.txt"
    path.write_text(CALIB_2011_09_26)
    return path


def test_object_calib_values(object_calib: Path) -> None:
    calib = read_object_calib(object_calib)
    np.testing.assert_allclose(calib.P2, P2, rtol=0, atol=1e-9)
    np.testing.assert_allclose(calib.R0_rect, R0_RECT, rtol=0, atol=1e-12)
    np.testing.assert_allclose(calib.Tr_velo_to_cam, TR_VELO_TO_CAM, rtol=0, atol=1e-12)
    assert calib.Tr_imu_to_velo is not None and calib.Tr_imu_to_velo[0, 3] == pytest.approx(
        -0.8086759
    )
    assert calib.P[1][0, 3] == pytest.approx(-387.5744)


def test_raw_format_matches_object_format(tmp_path: Path, object_calib: Path) -> None:
    write_raw_calib(tmp_path / "raw" / "2011_09_26")
    raw = read_raw_calib(tmp_path / "raw" / "2011_09_26")
    obj = read_object_calib(object_calib)
    for a, b in zip(raw.P, obj.P, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(raw.velo2rect(), obj.velo2rect(), rtol=1e-6, atol=1e-9)
    assert find_raw_calib(tmp_path / "raw", "2011_09_26").source == raw.source
    # CMKD's object-format per-date file is the fallback
    (tmp_path / "cmkd" / "calib").mkdir(parents=True)
    (tmp_path / "cmkd" / "calib" / "2011_09_26.txt").write_text(CALIB_2011_09_26)
    np.testing.assert_allclose(find_raw_calib(tmp_path / "cmkd", "2011_09_26").P2, P2)
    with pytest.raises(DataError, match=r"2011_09_30.*calib_cam_to_cam\.txt"):
        find_raw_calib(tmp_path / "raw", "2011_09_30")


def test_cam2_intrinsics_and_pose_reproduce_P2(object_calib: Path) -> None:
    """cam2img @ ego2cam must equal P2 @ R0_rect @ Tr_velo_to_cam, with cam2img = K (no
    translation column) and the baseline t = K^-1 P2[:, 3] folded into the pose."""
    calib = read_object_calib(object_calib)
    fx, cx, fy, cy = P2[0, 0], P2[0, 2], P2[1, 1], P2[1, 2]
    tz = P2[2, 3]
    ty = (P2[1, 3] - cy * tz) / fy
    tx = (P2[0, 3] - cx * tz) / fx
    assert tx == pytest.approx(0.059848, abs=1e-5)  # the ~6 cm cam0 -> cam2 offset
    np.testing.assert_allclose(calib.rect2cam(2)[:3, 3], [tx, ty, tz], rtol=1e-9)
    np.testing.assert_allclose(calib.cam2img(2), P2[:, :3])

    velo2rect = np.eye(4)
    velo2rect[:3, :3] = R0_RECT @ TR_VELO_TO_CAM[:, :3]
    velo2rect[:3, 3] = R0_RECT @ TR_VELO_TO_CAM[:, 3]
    points = np.array([[10.0, 2.0, -1.0, 1.0], [25.0, -4.0, 0.5, 1.0], [5.0, 0.0, 0.0, 1.0]])
    expected = (P2 @ velo2rect @ points.T).T
    expected = expected[:, :2] / expected[:, 2:]
    ego2cam = np.linalg.inv(calib.cam2ego(2))
    cam = (ego2cam @ points.T).T[:, :3]
    got = (calib.cam2img(2) @ cam.T).T
    np.testing.assert_allclose(got[:, :2] / got[:, 2:], expected, atol=1e-6)
    # the pose is (close to) rigid: KITTI's rotations are rounded, not exactly orthonormal
    rot = calib.cam2ego(2)[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-5)


def test_missing_key_names_file(tmp_path: Path) -> None:
    path = tmp_path / "calib.txt"
    path.write_text(
        "\n".join(line for line in CALIB_2011_09_26.splitlines() if not line.startswith("Tr_velo"))
    )
    with pytest.raises(DataError, match=r"calib\.txt: no 'Tr_velo_to_cam' line") as info:
        read_object_calib(path)
    assert "R0_rect (line 5)" in str(info.value)


def test_malformed_values_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "calib.txt"
    lines = CALIB_2011_09_26.splitlines()
    lines[4] = "R0_rect: 1 0 0 0 1 0 0 0"  # 8 numbers
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"calib\.txt:5: 'R0_rect' has 8 numbers, expected 9"):
        read_object_calib(path)
    lines[4] = "R0_rect: 1 0 0 0 1 0 0 0 x"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"calib\.txt:5: 'R0_rect' holds a non-number"):
        read_object_calib(path)
    with pytest.raises(DataError, match="not found"):
        read_object_calib(tmp_path / "missing.txt")


def test_raw_calib_missing_key(tmp_path: Path) -> None:
    write_raw_calib(tmp_path)
    velo = tmp_path / "calib_velo_to_cam.txt"
    velo.write_text(
        "\n".join(line for line in velo.read_text().splitlines() if not line.startswith("T:"))
    )
    with pytest.raises(DataError, match=r"calib_velo_to_cam\.txt: no 'T' line"):
        read_raw_calib(tmp_path)
