"""The KITTI recording car: calibration (the real 2011_09_26 values, intrinsics halved for
621x188 images), its camera and Velodyne HDL-64E, and the calibration files in the exact
KITTI text formats (object ``calib/<id>.txt``, raw ``calib_*.txt``).

Frames: velo (x forward, y left, z up) is bevkd's KITTI ego frame; the world's ego frame
(origin on the ground under the rear axle) is ``velo2ego`` away from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevkd.datasets.synthetic import camera as cm
from bevkd.pipeline.geometry import invert_pose

IMAGE_SCALE = 0.5  # of KITTI's 1242x375: KITTI's 2D height thresholds (40/25/25 px) halve
FULL_SIZE = (1242, 375)
IMAGE_SIZE = (round(FULL_SIZE[0] * IMAGE_SCALE), round(FULL_SIZE[1] * IMAGE_SCALE))  # 621 x 188
VELO_HEIGHT = 1.73  # m above the ground, as on the KITTI car
VELO_FORWARD = 1.2  # m ahead of the world ego frame's origin

_P = {  # 2011_09_26, full resolution
    0: (7.215377e02, 6.095593e02, 1.728540e02, 0.0, 0.0, 0.0),
    1: (7.215377e02, 6.095593e02, 1.728540e02, -3.875744e02, 0.0, 0.0),
    2: (7.215377e02, 6.095593e02, 1.728540e02, 4.485728e01, 2.163791e-01, 2.745884e-03),
    3: (7.215377e02, 6.095593e02, 1.728540e02, -3.395242e02, 2.199936e00, 2.729905e-03),
}
R0_RECT = np.array(
    [
        [9.999239e-01, 9.837760e-03, -7.445048e-03],
        [-9.869795e-03, 9.999421e-01, -4.278459e-03],
        [7.402527e-03, 4.351614e-03, 9.999631e-01],
    ]
)
TR_VELO_TO_CAM = np.array(
    [
        [7.533745e-03, -9.999714e-01, -6.166020e-04, -4.069766e-03],
        [1.480249e-02, 7.280733e-04, -9.998902e-01, -7.631618e-02],
        [9.998621e-01, 7.523790e-03, 1.480755e-02, -2.717806e-01],
    ]
)
TR_IMU_TO_VELO = np.array(
    [
        [9.999976e-01, 7.553071e-04, -2.035826e-03, -8.086759e-01],
        [-7.854027e-04, 9.998898e-01, -1.482298e-02, 3.195559e-01],
        [2.024406e-03, 1.482454e-02, 9.998881e-01, -7.997231e-01],
    ]
)


def projection(camera: int) -> np.ndarray:
    """P_camera (3, 4) for the stored image size (rows 0 and 1 scaled by IMAGE_SCALE)."""
    f, cx, cy, t0, t1, t2 = _P[camera]
    p = np.array([[f, 0.0, cx, t0], [0.0, f, cy, t1], [0.0, 0.0, 1.0, t2]])
    p[:2] *= IMAGE_SCALE
    return p


def _h(matrix: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def velo2ego() -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = (VELO_FORWARD, 0.0, VELO_HEIGHT)
    return out


def velo2rect() -> np.ndarray:
    """4x4 velo -> rectified reference camera frame (R0_rect @ Tr_velo_to_cam)."""
    return _h(R0_RECT) @ _h(TR_VELO_TO_CAM)


def camera2() -> cm.Camera:
    """The left colour camera (image_2) as a renderable camera in the world ego frame."""
    p2 = projection(2)
    intrinsic = p2[:, :3]
    offset = np.linalg.solve(intrinsic, p2[:, 3])  # cam2 = rect + offset
    rect2cam2 = np.eye(4)
    rect2cam2[:3, 3] = offset
    rect2ego = velo2ego() @ _affine_inverse(velo2rect())
    cam2ego = rect2ego @ invert_pose(rect2cam2)
    return cm.Camera("CAM2", IMAGE_SIZE[0], IMAGE_SIZE[1], intrinsic, cam2ego)


def _affine_inverse(matrix: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = np.linalg.inv(matrix[:3, :3])
    out[:3, 3] = -out[:3, :3] @ matrix[:3, 3]
    return out


def _row(values: np.ndarray) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(values, dtype=np.float64).reshape(-1))


def object_calib_text() -> str:
    """``calib/<id>.txt`` of KITTI object (also CMKD's one-file-per-date raw calibration)."""
    lines = [f"P{i}: {_row(projection(i))}" for i in range(4)]
    lines += [
        f"R0_rect: {_row(R0_RECT)}",
        f"Tr_velo_to_cam: {_row(TR_VELO_TO_CAM)}",
        f"Tr_imu_to_velo: {_row(TR_IMU_TO_VELO)}",
    ]
    return "\n".join(lines) + "\n\n"


def raw_calib_texts(calib_time: str) -> dict[str, str]:
    """The three files of a KITTI raw date: calib_cam_to_cam.txt, calib_velo_to_cam.txt,
    calib_imu_to_velo.txt. Unrectified cameras are given as already rectified (K from P_rect,
    no distortion), which is what the rectified ``_sync`` images are."""
    width, height = IMAGE_SIZE
    cam = [f"calib_time: {calib_time}", "corner_dist: 9.950000e-02"]
    for i in range(4):
        p = projection(i)
        k = p[:, :3]
        translation = np.linalg.solve(k, p[:, 3])
        cam += [
            f"S_0{i}: {_row(np.array([width, height]))}",
            f"K_0{i}: {_row(k)}",
            f"D_0{i}: {_row(np.zeros(5))}",
            f"R_0{i}: {_row(np.eye(3))}",
            f"T_0{i}: {_row(translation)}",
            f"S_rect_0{i}: {_row(np.array([width, height]))}",
            f"R_rect_0{i}: {_row(R0_RECT if i == 0 else np.eye(3))}",
            f"P_rect_0{i}: {_row(p)}",
        ]
    velo = [
        f"calib_time: {calib_time}",
        f"R: {_row(TR_VELO_TO_CAM[:, :3])}",
        f"T: {_row(TR_VELO_TO_CAM[:, 3])}",
        f"delta_f: {_row(np.zeros(2))}",
        f"delta_c: {_row(np.zeros(2))}",
    ]
    imu = [
        f"calib_time: {calib_time}",
        f"R: {_row(TR_IMU_TO_VELO[:, :3])}",
        f"T: {_row(TR_IMU_TO_VELO[:, 3])}",
    ]
    return {
        "calib_cam_to_cam.txt": "\n".join(cam) + "\n",
        "calib_velo_to_cam.txt": "\n".join(velo) + "\n",
        "calib_imu_to_velo.txt": "\n".join(imu) + "\n",
    }


@dataclass(frozen=True)
class KittiBox:
    """One object in KITTI label terms (rect frame): bottom centre, (h, w, l), rotation_y."""

    location: np.ndarray
    dimensions: tuple[float, float, float]
    rotation_y: float

    @property
    def alpha(self) -> float:
        """Observation angle: rotation_y minus the ray's azimuth."""
        x, _, z = self.location
        return float((self.rotation_y - np.arctan2(x, z) + np.pi) % (2 * np.pi) - np.pi)


def ego_box_to_kitti(box: np.ndarray) -> KittiBox:
    """A world-ego box (x, y, z centre, l, w, h, yaw, ...) in the rect frame."""
    to_rect = velo2rect() @ invert_pose(velo2ego())
    bottom = np.array([box[0], box[1], box[2] - box[5] / 2, 1.0])
    location = (to_rect @ bottom)[:3]
    heading = to_rect[:3, :3] @ np.array([np.cos(box[6]), np.sin(box[6]), 0.0])
    rotation_y = float(np.arctan2(-heading[2], heading[0]))
    return KittiBox(location, (float(box[5]), float(box[4]), float(box[3])), rotation_y)
