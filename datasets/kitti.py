"""KITTI object + KITTI raw as :class:`~bevkd.datasets.frame.Frame` records.

Roots (real KITTI layouts, nothing bevkd-specific):

- object root: ``<root>/object`` if it exists, else ``<root>`` itself; it holds
  ``{training,testing}/{image_2,velodyne,calib[,label_2]}/<id>.{png,bin,txt,txt}`` and
  optionally ``ImageSets/<split>.txt``.
- raw root: ``DataConfig.kitti_raw_root`` or ``<root>/raw``; it holds
  ``<date>/<date>_drive_<nnnn>_sync/{image_02,velodyne_points}/data/<frame>.{png,bin}`` and the
  date's calibration (see :func:`bevkd.datasets.kitti_calib.find_raw_calib`).

Each frame has one camera, ``CAM2`` (the left colour camera). The ego frame is the Velodyne
frame (x forward, y left, z up), so ``lidar2ego`` is the identity, ``points_dim`` is 4
(x, y, z, reflectance) and ``ego2global`` is the identity (KITTI object frames have no pose).
"""

from __future__ import annotations

import datetime as dt
import os
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from bevkd.datasets.frame import CameraRecord, Frame
from bevkd.datasets.kitti_boxes import ego_boxes_to_objects, objects_to_ego_boxes
from bevkd.datasets.kitti_calib import (
    KittiCalib,
    affine_inverse,
    find_raw_calib,
    read_object_calib,
)
from bevkd.datasets.kitti_labels import BEVKD_TO_KITTI, KITTI_TO_BEVKD, KittiObject, read_label
from bevkd.datasets.kitti_lists import SplitEntry, announce_list, read_split_list, split_list_path
from bevkd.pipeline.config import Config
from bevkd.pipeline.errors import DataError
from bevkd.pipeline.geometry import NUSCENES_CLASSES, points_in_boxes

CAMERA = "CAM2"
NOT_COUNTED = -1  # num_lidar_pts when points were not counted (KITTI labels carry no count)


@dataclass(frozen=True)
class KittiRoots:
    object_root: Path
    raw_root: Path


def kitti_roots(root: str | Path, raw_root: str | Path = "") -> KittiRoots:
    """Resolve the object and raw roots from a dataset root (see the module docstring)."""
    root = Path(root)
    object_root = root / "object" if (root / "object").is_dir() else root
    return KittiRoots(object_root, Path(raw_root) if str(raw_root) else root / "raw")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG from its header (24 bytes), other formats through PIL."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return int(width), int(height)
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def train_boxes(
    objects: Sequence[KittiObject],
    rect2velo: np.ndarray,
    classes: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Training boxes ``(N, 9)`` float32 in the ego frame and labels ``(N,)`` int64 into
    ``classes``: objects whose KITTI type maps (``KITTI_TO_BEVKD``) to a name in ``classes``."""
    keep = [o for o in objects if KITTI_TO_BEVKD.get(o.type) in classes]
    boxes = objects_to_ego_boxes(keep, rect2velo).astype(np.float32)
    labels = np.array([classes.index(KITTI_TO_BEVKD[o.type]) for o in keep], dtype=np.int64)
    return boxes, labels


def _camera(
    image_path: str,
    cam2ego: np.ndarray,
    cam2img: np.ndarray,
    timestamp: int,
    size: tuple[int, int] | None = None,
) -> CameraRecord:
    width, height = image_size(Path(image_path)) if size is None else size
    return CameraRecord(CAMERA, image_path, cam2ego, cam2img, width, height, timestamp)


_DRIVE_IMAGE_SIZE: dict[str, tuple[int, int]] = {}


def _drive_image_size(drive: str, image: str) -> tuple[int, int]:
    """One size per raw drive (its images all come from one rectified camera), read from the
    first of its images that is asked for."""
    if drive not in _DRIVE_IMAGE_SIZE:
        _DRIVE_IMAGE_SIZE[drive] = image_size(Path(image))
    return _DRIVE_IMAGE_SIZE[drive]


def _require(paths: Sequence[str], where: str, token: str) -> None:
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{where}: frame {token}: {path} not found; check the KITTI root")


def object_frame(
    object_root: str,
    entry: SplitEntry,
    subset: str,
    split: str,
    classes: Sequence[str],
    where: str,
) -> Frame:
    """A KITTI object frame; ``subset`` is ``training`` (labelled) or ``testing``.
    ``object_root`` is absolute (paths are stored as given)."""
    base = os.path.join(object_root, subset)
    image = os.path.join(base, "image_2", f"{entry.token}.png")
    lidar = os.path.join(base, "velodyne", f"{entry.token}.bin")
    calib_path = os.path.join(base, "calib", f"{entry.token}.txt")
    label = os.path.join(base, "label_2", f"{entry.token}.txt")
    has_label = subset == "training"
    _require([image, lidar, calib_path, *([label] if has_label else [])], where, entry.token)
    calib = read_object_calib(calib_path)
    rect2velo = calib.rect2velo()
    cam2ego = rect2velo @ affine_inverse(calib.rect2cam(2))
    boxes = np.zeros((0, 9), np.float32)
    labels = np.zeros((0,), np.int64)
    if has_label:
        boxes, labels = train_boxes(read_label(label), rect2velo, classes)
    return Frame(
        token=entry.token,
        scene=entry.token,  # object frames come from unknown drives: each is its own scene
        timestamp=0,
        split=split,
        has_label=has_label,
        lidar_path=lidar,
        lidar2ego=np.eye(4),
        ego2global=np.eye(4),
        cameras=(_camera(image, cam2ego, calib.cam2img(2), 0),),
        boxes=boxes,
        labels=labels,
        num_lidar_pts=np.full(len(boxes), NOT_COUNTED, np.int64),
        points_dim=4,
        dataset="kitti",
    )


def raw_frame(raw_root: str, entry: SplitEntry, split: str, where: str) -> Frame:
    """An unlabelled KITTI raw frame (``has_label`` False, no boxes); ``raw_root`` absolute."""
    drive = os.path.join(raw_root, entry.date, entry.drive)
    image = os.path.join(drive, "image_02", "data", f"{entry.frame}.png")
    lidar = os.path.join(drive, "velodyne_points", "data", f"{entry.frame}.bin")
    _require([image, lidar], where, entry.token)
    calib, cam2ego = _raw_calib(raw_root, entry.date)
    size = _drive_image_size(drive, image)
    stamp = _drive_timestamps(os.path.join(drive, "image_02", "timestamps.txt"))
    index = int(entry.frame)
    if index >= len(stamp):
        _no_timestamp(drive, bool(stamp))
    timestamp = stamp[index] if index < len(stamp) else 0
    return Frame(
        token=entry.token,
        scene=entry.drive,
        timestamp=timestamp,
        split=split,
        has_label=False,
        lidar_path=lidar,
        lidar2ego=np.eye(4),
        ego2global=np.eye(4),
        cameras=(_camera(image, cam2ego.copy(), calib.cam2img(2), timestamp, size),),
        points_dim=4,
        dataset="kitti",
    )


@lru_cache(maxsize=64)
def _raw_calib(raw_root: str, date: str) -> tuple[KittiCalib, np.ndarray]:
    """A recording date's calibration and its CAM2 pose, read once per date."""
    calib = find_raw_calib(raw_root, date)
    return calib, calib.cam2ego(2)


@cache
def _no_timestamp(drive: str, short: bool) -> None:
    """Say once per drive (on stderr) that its raw frames get timestamp 0."""
    why = "has fewer lines than its frames" if short else "is missing"
    print(f"[kitti] {drive}/image_02/timestamps.txt {why}: those raw frames get timestamp 0 "
          "(only their order within the drive is lost; nothing in bevkd reads raw timestamps)",
          file=sys.stderr)  # fmt: skip


@lru_cache(maxsize=64)
def _drive_timestamps(path: str) -> tuple[int, ...]:
    """Microseconds since the epoch (UTC) per frame from a raw ``timestamps.txt``; () if absent."""
    file = Path(path)
    if not file.is_file():
        return ()
    out = []
    for line in file.read_text().splitlines():
        text = line.strip()
        if not text:
            continue
        # "2011-09-26 13:02:25.964389445": keep microseconds (Python parses at most 6 digits)
        stamp = dt.datetime.strptime(text[:26], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC)
        out.append(int(stamp.timestamp() * 1_000_000))
    return tuple(out)


def load_kitti_frames(
    root: str | Path,
    split: str,
    classes: Sequence[str] = NUSCENES_CLASSES,
    raw_root: str | Path = "",
    subset: str | None = None,
    count_points: bool = False,
) -> list[Frame]:
    """Frames of a KITTI split list, in list order.

    ``split``: a list name (``train``, ``val``, ``test``, ``eigen_clean``,
    ``kitti_train_and_eigen_clean``, ...) or a path to a list file; see
    :func:`~bevkd.datasets.kitti_lists.split_list_path`. ``subset``: where object ids live,
    ``training`` or ``testing``; default ``testing`` for the ``test`` list, else ``training``.
    ``count_points``: read every labelled frame's points to fill ``num_lidar_pts`` (slow on
    real KITTI); otherwise it holds ``NOT_COUNTED`` (-1).

    Errors name the list file, the line and the missing path.
    """
    roots = kitti_roots(root, raw_root)
    list_path = split_list_path(split, roots.object_root)
    announce_list(split, list_path)
    subset = subset or ("testing" if list_path.stem == "test" else "training")
    if subset not in ("training", "testing"):
        raise DataError(f"KITTI object subset must be 'training' or 'testing', got '{subset}'")
    classes = tuple(classes)
    object_root, raw_root_abs = str(roots.object_root.absolute()), str(roots.raw_root.absolute())
    frames = []
    for entry in read_split_list(list_path):
        where = f"{list_path}:{entry.line}"
        if entry.kind == "object":
            frame = object_frame(object_root, entry, subset, split, classes, where)
            if count_points and len(frame.boxes):
                frame = _with_point_counts(frame)
        else:
            frame = raw_frame(raw_root_abs, entry, split, where)
        frames.append(frame)
    return frames


def _with_point_counts(frame: Frame) -> Frame:
    from dataclasses import replace

    from bevkd.datasets.loading import load_point_file

    points = load_point_file(frame.lidar_path, 4, f"frame {frame.token}")
    inside = points_in_boxes(points[:, :3], frame.boxes).sum(axis=1)
    return replace(frame, num_lidar_pts=inside.astype(np.int64))


def calib_of(frame: Frame) -> KittiCalib:
    """The calibration of a KITTI frame, found from its LiDAR path (object:
    ``<subset>/velodyne/<id>.bin`` -> ``<subset>/calib/<id>.txt``; raw: the drive's date)."""
    lidar = Path(frame.lidar_path)
    if lidar.parent.name == "velodyne":
        return read_object_calib(lidar.parent.parent / "calib" / f"{lidar.stem}.txt")
    if lidar.parent.name == "data" and lidar.parent.parent.name == "velodyne_points":
        drive = lidar.parent.parent.parent
        return _raw_calib(str(drive.parent.parent), drive.parent.name)[0]
    raise DataError(f"frame {frame.token}: {lidar} is not in a KITTI object or raw layout")


def camera_fov_mask(points: np.ndarray, camera: CameraRecord) -> np.ndarray:
    """``(P,)`` bool: points ``(P, >=3)`` in the ego frame that project inside ``camera``'s
    image with positive depth (OpenPCDet's ``get_fov_flag``, which CMKD uses)."""
    ego2cam = affine_inverse(camera.cam2ego)
    xyz = points[:, :3].astype(np.float64) @ ego2cam[:3, :3].T + ego2cam[:3, 3]
    depth = xyz[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = xyz @ camera.cam2img.T
        u, v = uvw[:, 0] / depth, uvw[:, 1] / depth
    return (depth > 0) & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)


def crop_points_to_camera(points: np.ndarray, frame: Frame) -> np.ndarray:
    """Keep the points ``(P, C)`` (ego frame, before any BEV augmentation) that the frame's
    camera sees; ``DataConfig.crop_points_to_camera`` turns this on for KITTI."""
    mask = np.zeros(len(points), dtype=bool)
    for camera in frame.cameras:
        mask |= camera_fov_mask(points, camera)
    return points[mask]


def frames_from_config(cfg: Config, split: str) -> list[Frame]:
    """Frames of the KITTI list ``split`` (e.g. ``cfg.data.train_split``) for a config:
    ``data.root``, ``data.kitti_raw_root`` and ``cfg.classes``."""
    return load_kitti_frames(cfg.data.root, split, cfg.classes, cfg.data.kitti_raw_root)


def detections_to_kitti(
    frame: Frame,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
) -> list[KittiObject]:
    """Ego-frame detections ``(N, 9)`` with ``scores`` and ``labels`` (ids into ``classes``) as
    KITTI detection lines; classes without a KITTI type (``BEVKD_TO_KITTI``) are dropped."""
    types = [BEVKD_TO_KITTI.get(classes[int(label)]) for label in labels]
    keep = [i for i, t in enumerate(types) if t is not None]
    camera = frame.cameras[0]
    return ego_boxes_to_objects(
        np.asarray(boxes, np.float64)[keep],
        [str(types[i]) for i in keep],
        np.asarray(scores, np.float64)[keep],
        calib_of(frame),
        (camera.width, camera.height),
    )
