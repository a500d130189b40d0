"""Hand-written KITTI files in the real on-disk formats, for the KITTI reader tests.

The calibration is KITTI raw's 2011_09_26 (as CMKD ships it in object format); the raw-format
files carry the same matrices under their raw names (``P_rect_02``, ``R_rect_00``, ``R``/``T``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CALIB_2011_09_26 = """\
P0: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 0.000000000000e+00 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P1: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 -3.875744000000e+02 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P2: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 4.485728000000e+01 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 2.163791000000e-01 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 2.745884000000e-03
P3: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 -3.395242000000e+02 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 2.199936000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 2.729905000000e-03
R0_rect: 9.999239000000e-01 9.837760000000e-03 -7.445048000000e-03 -9.869795000000e-03 9.999421000000e-01 -4.278459000000e-03 7.402527000000e-03 4.351614000000e-03 9.999631000000e-01
Tr_velo_to_cam: 7.533745000000e-03 -9.999714000000e-01 -6.166020000000e-04 -4.069766000000e-03 1.480249000000e-02 7.280733000000e-04 -9.998902000000e-01 -7.631618000000e-02 9.998621000000e-01 7.523790000000e-03 1.480755000000e-02 -2.717806000000e-01
Tr_imu_to_velo: 9.999976000000e-01 7.553071000000e-04 -2.035826000000e-03 -8.086759000000e-01 -7.854027000000e-04 9.998898000000e-01 -1.482298000000e-02 3.195559000000e-01 2.024406000000e-03 1.482454000000e-02 9.998881000000e-01 -7.997231000000e-01
"""

# The same numbers as matrices, typed in from the lines above (not parsed by the code under test).
P2 = np.array(
    [
        [7.215377e02, 0.0, 6.095593e02, 4.485728e01],
        [0.0, 7.215377e02, 1.728540e02, 2.163791e-01],
        [0.0, 0.0, 1.0, 2.745884e-03],
    ]
)
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

# A real KITTI label file's lines (training/label_2/000001.txt style).
LABEL_LINES = [
    "Truck 0.00 0 -1.57 599.41 156.40 629.75 189.25 2.85 2.63 12.34 0.47 1.49 69.44 -1.56",
    "Car 0.00 0 1.85 387.63 181.54 423.81 203.12 1.67 1.87 3.69 -16.53 2.39 58.49 1.57",
    "Cyclist 0.00 3 -1.65 676.60 163.95 688.98 193.93 1.86 0.60 2.02 4.59 1.32 45.84 -1.55",
    "Van 0.00 1 -1.51 555.71 169.93 583.62 193.62 2.06 1.86 4.49 -2.57 1.62 54.62 -1.55",
    "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10",
]


def _matrix_text(matrix: np.ndarray) -> str:
    return " ".join(f"{v:.6e}" for v in np.asarray(matrix).ravel())


def write_raw_calib(date_dir: Path) -> None:
    """``calib_cam_to_cam.txt`` + ``calib_velo_to_cam.txt`` in KITTI raw's layout."""
    date_dir.mkdir(parents=True, exist_ok=True)
    projections = {}
    for line in CALIB_2011_09_26.splitlines():
        key, _, values = line.partition(":")
        projections[key] = np.array([float(v) for v in values.split()])
    lines = ["calib_time: 09-Jan-2012 13:57:47", "corner_dist: 9.950000e-02"]
    for cam in range(4):
        proj = projections[f"P{cam}"].reshape(3, 4)
        lines += [
            f"S_0{cam}: 1.392000e+03 5.120000e+02",
            f"K_0{cam}: {_matrix_text(proj[:, :3])}",
            f"D_0{cam}: -3.728755e-01 2.037299e-01 2.219027e-03 1.383707e-03 -7.233722e-02",
            f"R_0{cam}: {_matrix_text(np.eye(3))}",
            f"T_0{cam}: 0.000000e+00 0.000000e+00 0.000000e+00",
            f"S_rect_0{cam}: 1.242000e+03 3.750000e+02",
            f"R_rect_0{cam}: {_matrix_text(R0_RECT if cam == 0 else np.eye(3))}",
            f"P_rect_0{cam}: {_matrix_text(proj)}",
        ]
    (date_dir / "calib_cam_to_cam.txt").write_text("\n".join(lines) + "\n")
    (date_dir / "calib_velo_to_cam.txt").write_text(
        "calib_time: 15-Mar-2012 11:37:16\n"
        f"R: {_matrix_text(TR_VELO_TO_CAM[:, :3])}\n"
        f"T: {_matrix_text(TR_VELO_TO_CAM[:, 3])}\n"
        "delta_f: 0.000000e+00 0.000000e+00\n"
        "delta_c: 0.000000e+00 0.000000e+00\n"
    )


def write_png(path: Path, width: int = 1242, height: int = 375) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 90, 90)).save(path)


def write_points(path: Path, count: int = 64, seed: int = 0) -> np.ndarray:
    """Random (count, 4) float32 points in front of the car, written as a KITTI ``.bin``."""
    rng = np.random.default_rng(seed)
    points = np.stack(
        [
            rng.uniform(2, 40, count),
            rng.uniform(-10, 10, count),
            rng.uniform(-1.5, 1, count),
            rng.uniform(0, 1, count),
        ],
        axis=1,
    ).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    points.tofile(path)
    return points


def write_object_frame(object_root: Path, frame_id: str, labels: list[str] | None) -> None:
    """One ``training`` (with labels) or ``testing`` (labels None) object frame."""
    subset = object_root / ("training" if labels is not None else "testing")
    write_png(subset / "image_2" / f"{frame_id}.png")
    write_points(subset / "velodyne" / f"{frame_id}.bin")
    (subset / "calib").mkdir(parents=True, exist_ok=True)
    (subset / "calib" / f"{frame_id}.txt").write_text(CALIB_2011_09_26)
    if labels is not None:
        (subset / "label_2").mkdir(parents=True, exist_ok=True)
        (subset / "label_2" / f"{frame_id}.txt").write_text("\n".join(labels) + "\n")


def write_raw_frame(raw_root: Path, date: str, drive: int, frame: int) -> str:
    """One raw frame (image_02 + velodyne_points); returns its split-list line."""
    name = f"{date}_drive_{drive:04d}_sync"
    base = raw_root / date / name
    write_png(base / "image_02" / "data" / f"{frame:010d}.png")
    write_points(base / "velodyne_points" / "data" / f"{frame:010d}.bin", seed=frame)
    stamps = base / "image_02" / "timestamps.txt"
    if not stamps.exists():
        stamps.write_text("".join(f"2011-09-26 13:02:{25 + i}.964389445\n" for i in range(10)))
    return f"{date}/{name}/image_02/data/{frame:010d}"
