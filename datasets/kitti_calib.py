"""KITTI calibration: the object format (``calib/<id>.txt``) and the raw format (per-date
``calib_cam_to_cam.txt`` + ``calib_velo_to_cam.txt``), read into one :class:`KittiCalib`.

Frames (KITTI's names):

- **velo**: the Velodyne frame, x forward, y left, z up. bevkd uses it as the ego frame.
- **cam0**: the reference camera, x right, y down, z forward. ``Tr_velo_to_cam``: velo -> cam0.
- **rect**: cam0 after stereo rectification, ``R0_rect``: cam0 -> rect. Labels live here.
- **cam2**: the left colour camera (``image_2`` / ``image_02``). Its projection
  ``P2 = K @ [I | t]`` maps *rect* points to pixels: the rectified cameras share the rect
  orientation and differ only by a translation ``t = K^-1 @ P2[:, 3]`` (mostly a baseline
  along x, ``t_x ~ P2[0, 3] / fx ~ 6 cm``). bevkd folds ``t`` into the extrinsics, so
  ``cam2img = K`` is a plain 3x3 intrinsic matrix and ``cam2ego`` is a true camera pose:
  ``cam2img @ (ego2cam @ p)[:3] == P2 @ (R0_rect @ Tr_velo_to_cam @ p)`` exactly.

The rotations in KITTI files are rounded and not exactly orthonormal, so inverses are true
matrix inverses (as the devkit and OpenPCDet take them), never transposes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bevkd.pipeline.errors import DataError

# Object-format key -> aliases used by other KITTI releases (tracking writes no colons and
# shorter names). The first name is the canonical one.
_OBJECT_KEYS: dict[str, tuple[str, ...]] = {
    "P0": ("P0",),
    "P1": ("P1",),
    "P2": ("P2",),
    "P3": ("P3",),
    "R0_rect": ("R0_rect", "R_rect"),
    "Tr_velo_to_cam": ("Tr_velo_to_cam", "Tr_velo_cam"),
    "Tr_imu_to_velo": ("Tr_imu_to_velo", "Tr_imu_velo"),
}


@dataclass(frozen=True)
class KittiCalib:
    """One frame's (or one recording date's) calibration, in KITTI object-format terms.

    ``P`` holds the rectified projections ``P0..P3`` (3, 4); ``R0_rect`` (3, 3) is cam0 ->
    rect; ``Tr_velo_to_cam`` (3, 4) is velo -> cam0; ``Tr_imu_to_velo`` (3, 4) or None.
    ``source`` names the file(s) read, for error messages.
    """

    P: tuple[np.ndarray, ...]
    R0_rect: np.ndarray
    Tr_velo_to_cam: np.ndarray
    Tr_imu_to_velo: np.ndarray | None
    source: str

    @property
    def P2(self) -> np.ndarray:  # KITTI's name
        return self.P[2]

    def velo2rect(self) -> np.ndarray:
        """4x4 velo -> rect: ``R0_rect @ Tr_velo_to_cam``."""
        return _homogeneous(self.R0_rect) @ _homogeneous(self.Tr_velo_to_cam)

    def rect2velo(self) -> np.ndarray:
        """4x4 rect -> velo (the inverse of :meth:`velo2rect`)."""
        return affine_inverse(self.velo2rect())

    def cam2img(self, camera: int = 2) -> np.ndarray:
        """3x3 intrinsics ``K`` of rectified camera ``camera`` (the left 3x3 block of ``P``)."""
        return self.P[camera][:, :3].copy()

    def rect2cam(self, camera: int = 2) -> np.ndarray:
        """4x4 rect -> camera ``camera``: a translation by ``K^-1 @ P[:, 3]``."""
        proj = self.P[camera]
        out = np.eye(4)
        out[:3, :3] = proj[:, :3]
        out = affine_inverse(out)  # K^-1
        out[:3, 3] = out[:3, :3] @ proj[:, 3]
        out[:3, :3] = np.eye(3)
        return out

    def cam2ego(self, camera: int = 2) -> np.ndarray:
        """4x4 camera ``camera`` (x right, y down, z forward) -> ego (velo)."""
        return self.rect2velo() @ affine_inverse(self.rect2cam(camera))


def affine_inverse(matrix: np.ndarray) -> np.ndarray:
    """Exact inverse of a 4x4 affine transform ``[A t; 0 1]``: ``[A^-1, -A^-1 t; 0 1]``, with
    ``A^-1`` from cofactors in plain floats (a LAPACK call per frame costs up to ~1 ms on a busy
    machine, numpy's small-array calls tens of microseconds)."""
    (a, b, c), (d, e, f), (g, h, i) = matrix[:3, :3].tolist()
    cof = [
        [e * i - f * h, c * h - b * i, b * f - c * e],
        [f * g - d * i, a * i - c * g, c * d - a * f],
        [d * h - e * g, b * g - a * h, a * e - b * d],
    ]
    det = a * cof[0][0] + b * cof[1][0] + c * cof[2][0]
    out = np.eye(4)
    out[:3, :3] = np.array(cof) / det
    out[:3, 3] = -out[:3, :3] @ matrix[:3, 3]
    return out


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def _read_entries(path: Path) -> dict[str, tuple[int, str]]:
    """``key -> (line number, value text)`` of a ``key: values`` (or ``key values``) file."""
    if not path.is_file():
        raise DataError(f"calibration file {path} not found; check the KITTI root")
    entries: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        # "P2: 7.2e+02 ..." (object, raw) or "R_rect 9.9e-01 ..." (tracking, no colon);
        # raw values may contain ':' themselves ("calib_time: 09-Jan-2012 13:57:47").
        if ":" in line:
            key, _, rest = line.partition(":")
        else:
            key, _, rest = line.strip().partition(" ")
        entries[key.strip()] = (number, rest.strip())
    return entries


def _matrix(
    entries: dict[str, tuple[int, str]], path: Path, names: tuple[str, ...], shape: tuple[int, int]
) -> np.ndarray:
    """Parse the first present key of ``names`` into ``shape``; errors name file and line."""
    for name in names:
        if name in entries:
            number, text = entries[name]
            try:
                values = [float(v) for v in text.split()]
            except ValueError:
                raise DataError(
                    f"{path}:{number}: '{name}' holds a non-number: '{text[:60]}'"
                ) from None
            if len(values) != shape[0] * shape[1]:
                raise DataError(
                    f"{path}:{number}: '{name}' has {len(values)} numbers, expected "
                    f"{shape[0] * shape[1]} ({shape[0]}x{shape[1]})"
                )
            return np.asarray(values, dtype=np.float64).reshape(shape)
    found = ", ".join(f"{k} (line {n})" for k, (n, _) in entries.items()) or "nothing"
    raise DataError(
        f"{path}: no '{names[0]}' line (expected '{names[0]}: {shape[0] * shape[1]} numbers'); "
        f"the file has {found}. Re-download the calibration or point the KITTI root elsewhere"
    )


def read_object_calib(path: str | Path) -> KittiCalib:
    """Read a KITTI object calibration file (``P0..P3, R0_rect, Tr_velo_to_cam,
    Tr_imu_to_velo``). The per-date raw calibrations CMKD ships use this same format.

    ``Tr_imu_to_velo`` is optional; every other key is required.
    """
    path = Path(path)
    entries = _read_entries(path)
    projections = tuple(_matrix(entries, path, _OBJECT_KEYS[f"P{i}"], (3, 4)) for i in range(4))
    imu_names = _OBJECT_KEYS["Tr_imu_to_velo"]
    return KittiCalib(
        P=projections,
        R0_rect=_matrix(entries, path, _OBJECT_KEYS["R0_rect"], (3, 3)),
        Tr_velo_to_cam=_matrix(entries, path, _OBJECT_KEYS["Tr_velo_to_cam"], (3, 4)),
        Tr_imu_to_velo=(
            _matrix(entries, path, imu_names, (3, 4))
            if any(n in entries for n in imu_names)
            else None
        ),
        source=str(path),
    )


def read_raw_calib(date_dir: str | Path) -> KittiCalib:
    """Read a KITTI raw recording date's calibration from ``<date_dir>/calib_cam_to_cam.txt``
    (``P_rect_00..03``, ``R_rect_00``), ``calib_velo_to_cam.txt`` (``R``, ``T``) and, when
    present, ``calib_imu_to_velo.txt`` (``R``, ``T``).
    """
    date_dir = Path(date_dir)
    cam_path = date_dir / "calib_cam_to_cam.txt"
    velo_path = date_dir / "calib_velo_to_cam.txt"
    cam = _read_entries(cam_path)
    velo = _read_entries(velo_path)
    projections = tuple(_matrix(cam, cam_path, (f"P_rect_0{i}",), (3, 4)) for i in range(4))
    velo_to_cam = np.concatenate(
        [_matrix(velo, velo_path, ("R",), (3, 3)), _matrix(velo, velo_path, ("T",), (3, 1))], axis=1
    )
    imu_path = date_dir / "calib_imu_to_velo.txt"
    imu_to_velo = None
    if imu_path.is_file():
        imu = _read_entries(imu_path)
        imu_to_velo = np.concatenate(
            [_matrix(imu, imu_path, ("R",), (3, 3)), _matrix(imu, imu_path, ("T",), (3, 1))], axis=1
        )
    return KittiCalib(
        P=projections,
        R0_rect=_matrix(cam, cam_path, ("R_rect_00",), (3, 3)),
        Tr_velo_to_cam=velo_to_cam,
        Tr_imu_to_velo=imu_to_velo,
        source=f"{cam_path} + {velo_path}",
    )


def raw_calib_candidates(raw_root: str | Path, date: str) -> list[Path]:
    """Where a recording date's calibration may live, in the order they are tried:
    the real raw download (``<raw_root>/<date>/calib_cam_to_cam.txt``), then an object-format
    per-date file as CMKD ships it (``<raw_root>/calib/<date>.txt``, ``<raw_root>/<date>.txt``,
    or CMKD's own layout ``raw/calib/<date>.txt`` beside ``raw/KITTI_Raw/``).
    """
    raw_root = Path(raw_root)
    return [
        raw_root / date / "calib_cam_to_cam.txt",
        raw_root / "calib" / f"{date}.txt",
        raw_root / f"{date}.txt",
        raw_root.parent / "calib" / f"{date}.txt",
    ]


def find_raw_calib(raw_root: str | Path, date: str) -> KittiCalib:
    """The calibration of recording ``date`` under ``raw_root`` (see :func:`raw_calib_candidates`)."""
    candidates = raw_calib_candidates(raw_root, date)
    if candidates[0].is_file():
        return read_raw_calib(candidates[0].parent)
    for path in candidates[1:]:
        if path.is_file():
            return read_object_calib(path)
    tried = ", ".join(str(p) for p in candidates)
    raise DataError(
        f"no calibration for KITTI raw date {date}: tried {tried}. Download the date's "
        f"calibration ({date}_calib.zip) into the raw root"
    )
