"""The nuScenes frame index: built once per dataroot and version, stored as versioned JSON.

Stored at ``<root>/<version>/bevkd_index.json``, or, when the dataroot is read-only, under
the cache dir (``$BEVKD_CACHE_DIR``, default ``work/cache``) as
``index/<sha256(root, version)[:16]>.json``. It is rebuilt when its schema version differs or
the tables changed (a hash of the name, size and mtime of every table and ``splits.json``).

Paths inside are relative to the dataroot, so a moved dataroot keeps a valid index.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bevkd.datasets.frame import CameraRecord, Frame, SweepRecord
from bevkd.datasets.nuscenes import (
    SPLITS_FILE,
    TABLES,
    build_tables,
    check_dataroot,
    missing_record,
    open_nuscenes,
    read_splits,
)
from bevkd.pipeline.config import DataConfig
from bevkd.pipeline.errors import DataError
from bevkd.pipeline.geometry import invert_pose, pose_matrix

INDEX_SCHEMA_VERSION = 1
INDEX_FILE = "bevkd_index.json"


def tables_fingerprint(root: str | Path, version: str) -> str:
    """sha256 over (name, size, mtime_ns) of the 13 tables and ``splits.json``."""
    folder = Path(root) / version
    digest = hashlib.sha256()
    for name in [f"{t}.json" for t in TABLES] + [SPLITS_FILE]:
        path = folder / name
        if path.is_file():
            stat = path.stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("BEVKD_CACHE_DIR", "work/cache"))


def index_locations(root: str | Path, version: str) -> list[Path]:
    """Where the index may live, in order of preference: beside the tables, then the cache."""
    key = hashlib.sha256(f"{Path(root).resolve()}\n{version}".encode()).hexdigest()[:16]
    return [Path(root) / version / INDEX_FILE, cache_dir() / "index" / f"{key}.json"]


class FrameIndex:
    """Frames of one dataroot/version per split; ``frames(split)`` builds :class:`Frame` records."""

    def __init__(self, root: str | Path, body: dict[str, Any], path: Path | None = None) -> None:
        self.root = Path(root)
        self.body = body
        self.path = path
        self._cache: dict[str, list[Frame]] = {}

    @property
    def version(self) -> str:
        return str(self.body["version"])

    @property
    def splits(self) -> list[str]:
        return list(self.body["frames"])

    def __len__(self) -> int:
        return sum(len(v) for v in self.body["frames"].values())

    def counts(self) -> dict[str, int]:
        return {split: len(records) for split, records in self.body["frames"].items()}

    def frames(self, split: str) -> list[Frame]:
        """All frames of ``split``: labelled keyframes, or the sweeps of the index's
        ``sweep_split`` (``data.unlabeled_split`` when it was built)."""
        if split not in self.body["frames"]:
            raise DataError(
                f"{self.root}: no split '{split}' in the index (splits: {', '.join(self.splits)})"
            )
        if split not in self._cache:
            self._cache[split] = [self._frame(r, split) for r in self.body["frames"][split]]
        return self._cache[split]

    # Records -> Frames ---------------------------------------------------------------------

    def _pose(self, sd_token: str) -> tuple[np.ndarray, np.ndarray]:
        """(sensor2ego, ego2global) of a sample_data row."""
        row = self.body["sample_data"][sd_token]
        calib = self.body["calibrations"][row[2]]["sensor2ego"]
        ego = self.body["ego_poses"][row[3]]
        return pose_matrix(calib[:3], calib[3:]), pose_matrix(ego[:3], ego[3:])

    def _frame(self, rec: dict[str, Any], split: str) -> Frame:
        tables = self.body["sample_data"]
        lidar_row = tables[rec["lidar"]]
        lidar2ego, ego2global = self._pose(rec["lidar"])
        global2lidar = invert_pose(ego2global @ lidar2ego)
        sweeps = []
        for sd_token in rec["sweeps"]:
            sweep2ego, sweep_ego2global = self._pose(sd_token)
            sweeps.append(
                SweepRecord(
                    lidar_path=str(self.root / tables[sd_token][0]),
                    sweep2lidar=global2lidar @ sweep_ego2global @ sweep2ego,
                    time_lag=(lidar_row[1] - tables[sd_token][1]) * 1e-6,
                )
            )
        global2ego = invert_pose(ego2global)
        cameras = []
        for channel, sd_token in rec["cameras"].items():
            row = tables[sd_token]
            cam2cam_ego, cam_ego2global = self._pose(sd_token)
            cameras.append(
                CameraRecord(
                    name=channel,
                    image_path=str(self.root / row[0]),
                    # Into the frame's ego (the LiDAR timestamp), through the camera's own pose.
                    cam2ego=global2ego @ cam_ego2global @ cam2cam_ego,
                    cam2img=np.asarray(
                        self.body["calibrations"][row[2]]["cam2img"], dtype=np.float64
                    ),
                    width=row[4],
                    height=row[5],
                    timestamp=row[1],
                )
            )
        return Frame(
            token=rec["token"],
            scene=rec["scene"],
            timestamp=lidar_row[1],
            split=split,
            has_label=bool(rec["has_label"]),
            lidar_path=str(self.root / lidar_row[0]),
            lidar2ego=lidar2ego,
            ego2global=ego2global,
            cameras=tuple(cameras),
            sweeps=tuple(sweeps),
            boxes=np.asarray(rec["boxes"], dtype=np.float64).reshape(-1, 9),
            labels=np.asarray(rec["labels"], dtype=np.int64),
            num_lidar_pts=np.asarray(rec["num_lidar_pts"], dtype=np.int64),
            points_dim=5,
            dataset="nuscenes",
        )


def build_index(root: str | Path, version: str, sweep_split: str = "unlabeled") -> dict[str, Any]:
    """Read the tables through the devkit and return the index body (JSON-ready); the split
    ``sweep_split`` holds sweeps (see :func:`bevkd.datasets.nuscenes.build_tables`)."""
    start = time.perf_counter()
    nusc = open_nuscenes(root, version)
    splits = read_splits(root, version)
    if sweep_split not in splits and not (Path(root) / version / SPLITS_FILE).is_file():
        splits[sweep_split] = splits.pop("unlabeled")  # the official splits' sweeps, renamed
    try:
        body = build_tables(nusc, splits, sweep_split)
    except KeyError as exc:
        raise DataError(missing_record(Path(root) / version, exc)) from None
    body.update(
        schema_version=INDEX_SCHEMA_VERSION,
        dataset="nuscenes",
        version=version,
        fingerprint=tables_fingerprint(root, version),
        build_seconds=round(time.perf_counter() - start, 3),
    )
    return body


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            body = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None  # missing or half-written: rebuild
    return body if isinstance(body, dict) else None


def _write(path: Path, body: dict[str, Any]) -> bool:
    """Write atomically (temp file + rename); False when the location is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".bevkd_index.", suffix=".tmp")
    except OSError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, separators=(",", ":"))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; others sharing the dataroot read it
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return False
    return True


def load_index(data: DataConfig, rebuild: bool = False) -> FrameIndex:
    """The index of ``data.root``/``data.version``: read if current, else built and stored."""
    check_dataroot(data.root, data.version)
    root = Path(data.root).resolve()
    fingerprint = tables_fingerprint(root, data.version)
    locations = index_locations(root, data.version)
    if not rebuild:
        for path in locations:
            body = _read(path)
            if (
                body is not None
                and body.get("schema_version") == INDEX_SCHEMA_VERSION
                and body.get("version") == data.version
                and body.get("fingerprint") == fingerprint
                and body.get("sweep_split", "unlabeled") == data.unlabeled_split
            ):
                return FrameIndex(root, body, path)
    body = build_index(root, data.version, data.unlabeled_split)
    for path in locations:
        if _write(path, body):
            return FrameIndex(root, body, path)
    return FrameIndex(root, body, None)  # nowhere writable: use it unsaved
