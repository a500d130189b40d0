"""Reading the files a :class:`~bevkd.datasets.frame.Frame` points at, with clear errors.

Every failure raises :class:`~bevkd.pipeline.errors.DataError` whose message names the frame,
the file and what is wrong with it, e.g.
``frame 0142 (token ab12cd34...): point file /x/y.pcd.bin is truncated (8190 bytes, expected a
multiple of 20)``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from bevkd.datasets.frame import CameraRecord, Frame
from bevkd.pipeline.errors import DataError
from bevkd.pipeline.geometry import transform_points

POINT_FIELDS = ("x", "y", "z", "intensity", "time_lag")


def describe(frame: Frame, index: int | None = None) -> str:
    """Short name of a frame for error messages: ``frame 0142 (token ab12cd34...)``."""
    number = f"frame {index:04d} " if index is not None else "frame "
    return f"{number}(token {frame.token[:8]}...)"


def load_point_file(path: str, dim: int, where: str = "") -> np.ndarray:
    """Read a little-endian float32 point file (nuScenes ``.pcd.bin``: dim 5, KITTI ``.bin``: 4).

    Returns ``(N, dim)`` float32. ``where`` prefixes error messages (see :func:`describe`).
    """
    prefix = f"{where}: " if where else ""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise DataError(f"{prefix}point file {path} not found; check the dataset root") from None
    except OSError as exc:
        raise DataError(f"{prefix}point file {path} cannot be read: {exc.strerror}") from None
    record = 4 * dim
    if size % record:
        raise DataError(
            f"{prefix}point file {path} is truncated ({size} bytes, expected a multiple of "
            f"{record}); re-download or regenerate it"
        )
    if size == 0:
        raise DataError(
            f"{prefix}point file {path} is empty (0 bytes, no points); re-download or regenerate it"
        )
    points = np.fromfile(path, dtype="<f4").reshape(-1, dim)
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(
            f"{prefix}point file {path} holds non-finite values (NaN or inf) in {bad.size} of "
            f"{len(points)} points (first: point {bad[0]}); re-download or regenerate it"
        )
    return points


def load_image(path: str, where: str = "") -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB."""
    return np.asarray(open_image(path, where))


def open_image(path: str, where: str = "") -> Any:
    """Read and decode an image file as an RGB ``PIL.Image`` (the loaders resize it as such,
    without a round trip through numpy)."""
    from PIL import Image, UnidentifiedImageError

    prefix = f"{where}: " if where else ""
    if not os.path.isfile(path):
        raise DataError(f"{prefix}camera image {path} not found; check the dataset root")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # decoded, and independent of the closed file
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{prefix}camera image {path} is not a readable image ({exc})") from None


def open_camera_image(camera: CameraRecord, where: str = "") -> Any:
    """``camera``'s image as an RGB ``PIL.Image``: its image file, or for Waymo frames its row
    of the segment's ``camera_image`` parquet file."""
    if camera.image_path.endswith(".parquet"):
        from bevkd.datasets.waymo import load_camera_image

        return load_camera_image(camera, where)
    return open_image(camera.image_path, where)


def load_points(frame: Frame, sweeps: int = 1, where: str = "") -> np.ndarray:
    """The frame's LiDAR points in its ego frame: ``(P, 5)`` x, y, z, intensity, time-lag.

    ``sweeps`` counts the keyframe: 1 reads only it; ``n`` adds up to ``n - 1`` earlier sweeps,
    each moved into the keyframe's LiDAR frame through the ego poses (``sweep2lidar``), with
    their time lag in seconds in the last column (0 for the keyframe). Frames with fewer
    recorded sweeps (the start of a scene) use what they have. Waymo frames have no point
    file: their range images are read (:func:`bevkd.datasets.waymo.load_points`).
    """
    where = where or describe(frame)
    if frame.dataset == "waymo":
        from bevkd.datasets.waymo import load_points as load_waymo_points

        return load_waymo_points(frame, where)
    key = load_point_file(frame.lidar_path, frame.points_dim, where)
    clouds = [_with_time_lag(key[:, :4], 0.0)]
    for sweep in frame.sweeps[: max(sweeps - 1, 0)]:
        raw = load_point_file(sweep.lidar_path, frame.points_dim, where)
        moved = transform_points(raw[:, :4], sweep.sweep2lidar.astype(np.float64))
        clouds.append(_with_time_lag(moved, sweep.time_lag))
    points = clouds[0] if len(clouds) == 1 else np.concatenate(clouds, axis=0)
    return transform_points(points, frame.lidar2ego)


def _with_time_lag(points: np.ndarray, lag: float) -> np.ndarray:
    out = np.empty((len(points), 5), dtype=np.float32)
    out[:, :4] = points
    out[:, 4] = lag
    return out
