"""Waymo Open Dataset v2 (parquet) as :class:`~bevkd.datasets.frame.Frame` records, with
pyarrow and numpy only (no TensorFlow).

Root (a local path or an fsspec URL) laid out as the official bucket:
``{root}/{split}/{component}/{segment}.parquet``; components and column names are in
:mod:`bevkd.datasets.waymo_schema`. Reading is lazy, by segment and by column: listing a
segment's frames reads its vehicle poses, camera calibrations, camera-image keys and boxes,
never a range image or an image; :func:`load_points` and :func:`load_camera_image` read one
frame's rows (parquet filters on the key columns) when that frame is loaded.

- The ego frame is Waymo's vehicle frame (x forward, y left, z up, as bevkd's), so
  ``lidar2ego`` is the identity: :func:`load_points` gives the points of every laser and both
  returns in it (:mod:`bevkd.datasets.waymo_range`). ``ego2global`` is ``world_from_vehicle``.
- Cameras: Waymo's camera frame is x forward, y left, z up; ``cam2ego`` is given in bevkd's
  OpenCV frame (x right, y down, z forward). Waymo pixel coordinates put 0 at the left edge of
  the first pixel (``v2/perception/lidar.py:82``), OpenCV at its centre, so ``cam2img`` has
  the principal point (c_u - 0.5, c_v - 0.5). Distortion is kept in ``CameraRecord.distortion``.
- Boxes (vehicle frame): ``(x, y, z, size.x, size.y, size.z, heading, speed.x, speed.y)``;
  TYPE_VEHICLE -> car, TYPE_PEDESTRIAN -> pedestrian, TYPE_CYCLIST -> bicycle, TYPE_SIGN has
  no class. A frame with no ``lidar_box`` row, or a split without ``lidar_box`` files (the
  test split), is unlabelled (``has_label`` False), as nuScenes sweeps and KITTI raw frames.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bevkd.datasets import waymo_schema as ws
from bevkd.datasets.frame import CameraRecord, Frame
from bevkd.datasets.waymo_range import inclinations, range_image_to_points
from bevkd.pipeline.errors import DataError
from bevkd.pipeline.geometry import NUSCENES_CLASSES

WAYMO_TO_BEVKD = {
    ws.BOX_TYPES["TYPE_VEHICLE"]: "car",
    ws.BOX_TYPES["TYPE_PEDESTRIAN"]: "pedestrian",
    ws.BOX_TYPES["TYPE_CYCLIST"]: "bicycle",
}
RETURNS = ((ws.RETURN1_VALUES, ws.RETURN1_SHAPE), (ws.RETURN2_VALUES, ws.RETURN2_SHAPE))
CAMERA_BY_ID = {number: name for name, number in ws.CAMERA_NAMES.items()}
# Waymo camera axes (x forward, y left, z up) -> OpenCV camera axes (x right, y down, z forward).
OPENCV_FROM_WAYMO_CAMERA = np.array(
    [[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
)
PIXEL_EDGE_TO_CENTRE = 0.5  # Waymo pixel coordinate of the first pixel's centre
_NO_LABEL = (np.zeros((0, 9), np.float32), np.zeros((0,), np.int64), np.zeros((0,), np.int64))


@dataclass(frozen=True)
class Segment:
    """One segment of a split: where its component files are and how to read them."""

    root: str
    split: str
    name: str

    def path(self, component: str) -> str:
        return f"{self.root}/{self.split}/{component}/{self.name}.parquet"

    def split_has(self, component: str) -> bool:
        """Whether the split has a ``component`` folder (the test split has no ``lidar_box``);
        where it has one, every segment needs its file."""
        fs, path = fsspec.core.url_to_fs(f"{self.root}/{self.split}/{component}")
        return bool(fs.isdir(path))

    def read(
        self,
        component: str,
        columns: Sequence[str],
        filters: list[tuple[str, str, Any]] | None = None,
    ) -> pa.Table:
        """``columns`` of ``component``, rows matching ``filters`` only; errors name the file."""
        url = self.path(component)
        fs, path = fsspec.core.url_to_fs(url)
        where = f"Waymo segment {self.name} ({self.split}), component {component}"
        if not fs.exists(path):
            raise DataError(
                f"{where}: {url} not found; download the split's {component}/ folder "
                "(every segment needs one file per component)"
            )
        try:
            return pq.read_table(path, columns=list(columns), filters=filters, filesystem=fs)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(
                f"{where}: {url} is not a readable v2 parquet file ({exc}); re-download it"
            ) from None


def list_segments(root: str, split: str) -> list[str]:
    """Segment names of ``split``, from its ``vehicle_pose`` files, sorted."""
    fs, path = fsspec.core.url_to_fs(f"{_root(root)}/{split}/{ws.VEHICLE_POSE}")
    if not fs.isdir(path):
        raise DataError(f"no Waymo split {split!r} under {root}: {path} is not a folder")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{path}/*.parquet"))
    return [n.removesuffix(".parquet") for n in names]


def waymo_frames(
    root: str, split: str, classes: Sequence[str] = NUSCENES_CLASSES
) -> Iterator[Frame]:
    """The frames of ``split``, segment by segment, in time order within each."""
    for name in list_segments(root, split):
        yield from segment_frames(Segment(_root(root), split, name), classes)


def load_waymo_frames(
    root: str, split: str, classes: Sequence[str] = NUSCENES_CLASSES
) -> list[Frame]:
    return list(waymo_frames(root, split, classes))


def segment_frames(segment: Segment, classes: Sequence[str]) -> list[Frame]:
    """One Frame per ``vehicle_pose`` row of ``segment``."""
    poses = segment.read(ws.VEHICLE_POSE, [ws.TIMESTAMP, ws.WORLD_FROM_VEHICLE])
    stamps = poses.column(ws.TIMESTAMP).to_numpy()
    world_from_vehicle = _matrices(poses.column(ws.WORLD_FROM_VEHICLE))
    calibrations = _camera_calibrations(segment)
    images = segment.read(ws.CAMERA_IMAGE, [ws.TIMESTAMP, ws.CAMERA])
    taken = set(
        zip(
            images.column(ws.TIMESTAMP).to_pylist(),
            images.column(ws.CAMERA).to_pylist(),
            strict=True,
        )
    )
    labels = _boxes(segment, tuple(classes)) if segment.split_has(ws.LIDAR_BOX) else {}
    frames = []
    for i in np.argsort(stamps, kind="stable").tolist():
        stamp = int(stamps[i])
        cameras = tuple(
            _camera(segment, calib, stamp) for cid, calib in calibrations if (stamp, cid) in taken
        )
        label = labels.get(stamp)
        boxes, classes_of, points = label or _NO_LABEL
        frames.append(
            Frame(
                token=f"{segment.name}_{stamp}",
                scene=segment.name,
                timestamp=stamp,
                split=segment.split,
                has_label=label is not None,
                lidar_path=segment.path(ws.LIDAR),
                lidar2ego=np.eye(4),
                ego2global=world_from_vehicle[i],
                cameras=cameras,
                boxes=boxes,
                labels=classes_of,
                num_lidar_pts=points,
                points_dim=4,
                dataset="waymo",
            )
        )
    return frames


def _root(root: str) -> str:
    """``root`` without a trailing slash; a local path made absolute (frames store paths)."""
    if "://" in str(root):
        return str(root).rstrip("/")
    return str(fsspec.core.url_to_fs(str(root))[1]).rstrip("/")


def _matrices(column: pa.ChunkedArray) -> np.ndarray:
    """(N, 4, 4) from a column of row-major 16-value transforms."""
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float64).reshape(-1, 4, 4)


def _camera_calibrations(segment: Segment) -> list[tuple[int, dict[str, Any]]]:
    columns = [
        ws.CAMERA,
        ws.F_U,
        ws.F_V,
        ws.C_U,
        ws.C_V,
        *ws.DISTORTION,
        ws.CAMERA_EXTRINSIC,
        ws.WIDTH,
        ws.HEIGHT,
    ]
    rows = segment.read(ws.CAMERA_CALIBRATION, columns).to_pylist()
    return sorted((int(row[ws.CAMERA]), row) for row in rows)


def _camera(segment: Segment, calib: dict[str, Any], stamp: int) -> CameraRecord:
    cam2img = np.array(
        [
            [calib[ws.F_U], 0.0, calib[ws.C_U] - PIXEL_EDGE_TO_CENTRE],
            [0.0, calib[ws.F_V], calib[ws.C_V] - PIXEL_EDGE_TO_CENTRE],
            [0.0, 0.0, 1.0],
        ]
    )
    extrinsic = np.asarray(calib[ws.CAMERA_EXTRINSIC], dtype=np.float64).reshape(4, 4)
    return CameraRecord(
        name=CAMERA_BY_ID[int(calib[ws.CAMERA])],
        image_path=segment.path(ws.CAMERA_IMAGE),
        cam2ego=extrinsic @ OPENCV_FROM_WAYMO_CAMERA.T,
        cam2img=cam2img,
        width=int(calib[ws.WIDTH]),
        height=int(calib[ws.HEIGHT]),
        timestamp=stamp,
        distortion=tuple(float(calib[k]) for k in ws.DISTORTION),
    )


def _boxes(
    segment: Segment, classes: tuple[str, ...]
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per timestamp: boxes (N, 9) float32, labels (N,) into ``classes`` and LiDAR point
    counts (N,), for boxes whose type has a class in ``classes``; every timestamp with a row
    is present (possibly with no kept box)."""
    speed = ws.BOX_SPEED[:2]
    columns = [
        ws.TIMESTAMP,
        *ws.BOX_CENTER,
        *ws.BOX_SIZE,
        ws.BOX_HEADING,
        *speed,
        ws.BOX_TYPE,
        ws.NUM_POINTS,
    ]
    table = segment.read(ws.LIDAR_BOX, columns)
    values = np.stack(
        [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in columns[1:10]],
        axis=1,
    )
    values[:, 7:9] = np.nan_to_num(values[:, 7:9])  # speed is optional (box.py:75)
    stamps = table.column(ws.TIMESTAMP).to_numpy()
    names = [WAYMO_TO_BEVKD.get(t) for t in table.column(ws.BOX_TYPE).to_pylist()]
    counts = table.column(ws.NUM_POINTS).to_numpy()
    out = {}
    for stamp in np.unique(stamps).tolist():
        rows = [i for i in np.flatnonzero(stamps == stamp).tolist() if names[i] in classes]
        out[int(stamp)] = (
            values[rows].astype(np.float32).reshape(-1, 9),
            np.array([classes.index(str(names[i])) for i in rows], dtype=np.int64),
            counts[rows].astype(np.int64),
        )
    return out


def _segment_of(path: str) -> Segment:
    """The segment of a component file path ``{root}/{split}/{component}/{segment}.parquet``."""
    root, split, _, name = path.rsplit("/", 3)
    return Segment(root, split, name.removesuffix(".parquet"))


def load_points(frame: Frame, where: str = "") -> np.ndarray:
    """The frame's points, every laser and both returns, in the vehicle (ego) frame:
    ``(P, 5)`` float32 x, y, z, intensity, elongation: Waymo's five point features (a single
    sweep, so the column nuScenes gives the time-lag holds the elongation instead)."""
    segment = _segment_of(frame.lidar_path)
    at = [(ws.TIMESTAMP, "=", frame.timestamp)]
    lidar = segment.read(
        ws.LIDAR,
        [ws.LASER, *(column for pair in RETURNS for column in pair)],
        at,
    )
    if not lidar.num_rows:
        raise DataError(
            f"{where or frame.token}: {segment.path(ws.LIDAR)} has no row at timestamp "
            f"{frame.timestamp}"
        )
    calib = {
        row[ws.LASER]: row
        for row in segment.read(
            ws.LIDAR_CALIBRATION,
            [ws.LASER, ws.LIDAR_EXTRINSIC, ws.BEAM_MIN, ws.BEAM_MAX, ws.BEAM_VALUES],
        ).to_pylist()
    }
    clouds = []
    for i, laser in enumerate(lidar.column(ws.LASER).to_pylist()):
        if laser not in calib:
            raise DataError(
                f"{where or frame.token}: {segment.path(ws.LIDAR_CALIBRATION)} has no "
                f"calibration of laser {laser}"
            )
        row = calib[laser]
        extrinsic = np.asarray(row[ws.LIDAR_EXTRINSIC], dtype=np.float64).reshape(4, 4)
        pixel_pose = _top_pose(segment, frame.timestamp) if laser == ws.LASER_NAMES["TOP"] else None
        for values, shape in RETURNS:
            image = _image(lidar, values, shape, i)
            if image is None:
                continue
            incl = inclinations(row[ws.BEAM_MIN], row[ws.BEAM_MAX], row[ws.BEAM_VALUES], len(image))
            xyz, features = range_image_to_points(
                image,
                extrinsic,
                incl,
                pixel_pose,
                frame.ego2global if pixel_pose is not None else None,
            )
            cloud = np.zeros((len(xyz), 5), dtype=np.float32)
            cloud[:, :3] = xyz
            cloud[:, 3:5] = features
            clouds.append(cloud)
    return np.concatenate(clouds) if clouds else np.zeros((0, 5), np.float32)


def _image(table: pa.Table, values: str, shape: str, row: int) -> np.ndarray | None:
    """Row ``row`` of a range-image column pair as an (H, W, C) float32 array (None if null)."""
    cell = table.column(values)[row]
    if not cell.is_valid:
        return None
    dims = table.column(shape)[row].as_py()
    return np.asarray(cell.values.to_numpy(zero_copy_only=False), np.float32).reshape(dims)


def _top_pose(segment: Segment, stamp: int) -> np.ndarray:
    """(H, W, 6) per-pixel pose of the TOP laser at ``stamp``."""
    table = segment.read(
        ws.LIDAR_POSE,
        [ws.POSE_VALUES, ws.POSE_SHAPE],
        [(ws.TIMESTAMP, "=", stamp), (ws.LASER, "=", ws.LASER_NAMES["TOP"])],
    )
    pose = _image(table, ws.POSE_VALUES, ws.POSE_SHAPE, 0) if table.num_rows else None
    if pose is None:
        raise DataError(f"{segment.path(ws.LIDAR_POSE)}: no TOP laser pose at timestamp {stamp}")
    return pose


def load_camera_image(camera: CameraRecord, where: str = "") -> Any:
    """The JPEG of ``camera`` (a record of :func:`segment_frames`) decoded as an RGB
    ``PIL.Image``."""
    from PIL import Image, UnidentifiedImageError

    segment = _segment_of(camera.image_path)
    table = segment.read(
        ws.CAMERA_IMAGE,
        [ws.IMAGE],
        [(ws.TIMESTAMP, "=", camera.timestamp), (ws.CAMERA, "=", ws.CAMERA_NAMES[camera.name])],
    )
    prefix = f"{where}: " if where else ""
    if not table.num_rows:
        raise DataError(
            f"{prefix}{camera.image_path} has no {camera.name} image at timestamp "
            f"{camera.timestamp}"
        )
    try:
        with Image.open(BytesIO(table.column(ws.IMAGE)[0].as_py())) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(
            f"{prefix}{camera.image_path}: the {camera.name} image at timestamp "
            f"{camera.timestamp} is not a readable JPEG ({exc})"
        ) from None
