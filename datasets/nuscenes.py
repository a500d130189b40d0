"""nuScenes through nuscenes-devkit: open a dataroot and turn its tables into index records.

The index (see :mod:`bevkd.datasets.nuscenes_index`) is a normalised subset of the nuScenes
tables: ego poses, calibrations and sample_data rows once each, and per-split frame records
that reference them. GT boxes are converted here, once, from global to the keyframe's ego
frame in the :mod:`bevkd.pipeline.geometry` convention.

Splits: ``<root>/<version>/splits.json`` (``{"train": [scene names], "val": [...],
"unlabeled": [...]}``) when present, else the devkit's official scene splits of the version
(trainval: train, val; mini: mini_train, mini_val; test: test), with the first one's sweeps
as ``unlabeled``. The split that ``data.unlabeled_split`` names holds the LIDAR_TOP sweeps
(``is_key_frame`` false) of its scenes, each with the nearest camera image per channel; every
other split holds labelled keyframes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bevkd.pipeline.errors import DataError
from bevkd.pipeline.geometry import NUSCENES_CLASSES, invert_pose, pose_matrix, wrap_angle, yaw_of

TABLES = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)
SPLITS_FILE = "splits.json"
LIDAR = "LIDAR_TOP"
MAX_SWEEPS = 10  # earlier sweeps recorded per frame; DataConfig.lidar_sweeps picks how many to use
CAMERA_ORDER = (
    "CAM_FRONT_LEFT",
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_LEFT",
    "CAM_BACK",
    "CAM_BACK_RIGHT",
)


def check_dataroot(root: str | Path, version: str) -> Path:
    """The version folder, after checking that the root, the folder and all 13 tables exist."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist; pass --data DIR or set data.root")
    folder = root / version
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        hint = f" (found: {', '.join(found)}; set data.version)" if found else ""
        raise DataError(f"nuScenes version folder {folder} does not exist{hint}")
    missing = [f"{t}.json" for t in TABLES if not (folder / f"{t}.json").is_file()]
    if missing:
        raise DataError(f"{folder} is not a nuScenes version folder: missing {', '.join(missing)}")
    return folder


def open_nuscenes(root: str | Path, version: str) -> Any:
    """A devkit ``NuScenes`` for ``root``/``version`` (checked first, so errors name the path)."""
    folder = check_dataroot(root, version)
    from nuscenes.nuscenes import NuScenes

    try:
        return NuScenes(version=version, dataroot=str(root), verbose=False)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{_broken_table(folder)} is not valid JSON ({exc}); regenerate or re-download it"
        ) from None
    except KeyError as exc:
        raise DataError(missing_record(folder, exc)) from None


def _broken_table(folder: Path) -> str:
    """The first table of ``folder`` that does not parse (only called once one failed)."""
    for name in TABLES:
        path = folder / f"{name}.json"
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError:
            return str(path)
    return f"a table in {folder}"


def missing_record(folder: Path, exc: KeyError) -> str:
    """A message for a devkit ``KeyError``: which tables mention the missing key, so the user
    knows which record points at nothing (the devkit raises a bare ``KeyError: 'token'``)."""
    key = str(exc.args[0]) if exc.args else "?"
    needle = json.dumps(key)
    mentioned = [
        f"{name}.json" for name in TABLES if needle in (folder / f"{name}.json").read_text()
    ]
    where = f"referenced in {', '.join(mentioned)}" if mentioned else "referenced by the tables"
    return (
        f"{folder}: the tables are inconsistent: {key!r} is {where}, but no record of it exists "
        "(a missing row, or a sample without that sensor); regenerate or re-download the tables"
    )


def read_splits(root: str | Path, version: str) -> dict[str, list[str]]:
    """Scene names per split: ``splits.json`` if the dataset has one, else the devkit's."""
    path = Path(root) / version / SPLITS_FILE
    if path.is_file():
        try:
            splits = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
            raise DataError(f"{path} must map split names to lists of scene names")
        return {str(k): [str(s) for s in v] for k, v in splits.items()}
    from nuscenes.utils.splits import create_splits_scenes

    # No splits.json: the official scene splits of this version, train sweeps as "unlabeled".
    official = create_splits_scenes()
    for suffix, names in (
        ("trainval", ("train", "val")),
        ("mini", ("mini_train", "mini_val")),
        ("test", ("test",)),
    ):
        if version.endswith(suffix):
            out = {name: official[name] for name in names}
            out["unlabeled"] = official[names[0]]
            return out
    raise DataError(
        f"{path} not found, and {version} is not an official nuScenes version; add a splits.json"
    )


def _pose7(record: dict) -> list[float]:
    return [float(v) for v in record["translation"]] + [float(v) for v in record["rotation"]]


class _Builder:
    """Collects the normalised tables while frames are added."""

    def __init__(self, nusc: Any) -> None:
        self.nusc = nusc
        self.ego_poses: dict[str, list[float]] = {}
        self.calibrations: dict[str, dict[str, Any]] = {}
        self.sample_data: dict[str, list[Any]] = {}

    def add_sample_data(self, sd: dict) -> str:
        """Record one sample_data row (and its pose and calibration); returns its token."""
        if sd["token"] not in self.sample_data:
            calib = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            if calib["token"] not in self.calibrations:
                intrinsic = calib.get("camera_intrinsic") or None
                self.calibrations[calib["token"]] = {
                    "sensor2ego": _pose7(calib),
                    "cam2img": intrinsic,
                }
            if sd["ego_pose_token"] not in self.ego_poses:
                self.ego_poses[sd["ego_pose_token"]] = _pose7(
                    self.nusc.get("ego_pose", sd["ego_pose_token"])
                )
            self.sample_data[sd["token"]] = [
                sd["filename"],
                int(sd["timestamp"]),
                calib["token"],
                sd["ego_pose_token"],
                int(sd.get("width") or 0),
                int(sd.get("height") or 0),
            ]
        return str(sd["token"])

    def sweeps(self, lidar_sd: dict) -> list[str]:
        """Tokens of up to MAX_SWEEPS earlier LiDAR sample_data, newest first."""
        out: list[str] = []
        sd = lidar_sd
        while sd["prev"] and len(out) < MAX_SWEEPS:
            sd = self.nusc.get("sample_data", sd["prev"])
            out.append(self.add_sample_data(sd))
        return out

    def record(
        self, token: str, scene: str, lidar_sd: dict, cameras: dict[str, dict]
    ) -> dict[str, Any]:
        return {
            "token": token,
            "scene": scene,
            "lidar": self.add_sample_data(lidar_sd),
            "sweeps": self.sweeps(lidar_sd),
            "cameras": {ch: self.add_sample_data(cameras[ch]) for ch in _camera_order(cameras)},
        }


def _camera_order(cameras: dict[str, Any]) -> list[str]:
    known = [c for c in CAMERA_ORDER if c in cameras]
    return known + sorted(c for c in cameras if c not in CAMERA_ORDER)


def ego_boxes(nusc: Any, sample: dict, global2ego: np.ndarray) -> dict[str, list]:
    """GT of one sample in the ego frame: boxes (N, 9), labels, num_lidar_pts (as lists).

    Category names map to detection classes as the devkit's detection eval does; others are
    dropped. Size: devkit ``wlh`` -> (l, w, h). Velocity: ``box_velocity`` (global, NaN when it
    cannot be estimated -> 0) rotated into the ego frame.
    """
    from nuscenes.eval.detection.utils import category_to_detection_name

    boxes, labels, num_pts = [], [], []
    rot = global2ego[:3, :3]
    for ann_token in sample["anns"]:
        ann = nusc.get("sample_annotation", ann_token)
        name = category_to_detection_name(ann["category_name"])
        if name is None:
            continue
        box2global = pose_matrix(ann["translation"], ann["rotation"])
        box2ego = global2ego @ box2global
        velocity = np.nan_to_num(
            np.asarray(nusc.box_velocity(ann_token), dtype=np.float64), nan=0.0
        )
        vx, vy = (rot @ velocity)[:2]
        w, l, h = ann["size"]  # noqa: E741 - the devkit stores width, length, height
        x, y, z = box2ego[:3, 3]
        boxes.append([x, y, z, l, w, h, float(wrap_angle(yaw_of(box2ego[:3, :3]))), vx, vy])
        labels.append(NUSCENES_CLASSES.index(name))
        num_pts.append(int(ann["num_lidar_pts"]))
    return {
        "boxes": [[float(v) for v in b] for b in boxes],
        "labels": labels,
        "num_lidar_pts": num_pts,
    }


def _scene_name(nusc: Any, scene_token: str) -> str:
    return str(nusc.get("scene", scene_token)["name"])


def build_tables(
    nusc: Any, splits: dict[str, list[str]], sweep_split: str = "unlabeled"
) -> dict[str, Any]:
    """The index body: normalised tables plus frame records per split (JSON-ready). The split
    named ``sweep_split`` (``data.unlabeled_split``) holds its scenes' LiDAR sweeps, unlabelled;
    every other split their labelled keyframes."""
    builder = _Builder(nusc)
    scene_of_name = {s["name"]: s for s in nusc.scene}
    frames: dict[str, list[dict]] = {}
    for split, names in splits.items():
        unknown = [n for n in names if n not in scene_of_name]
        if unknown:
            raise DataError(
                f"split '{split}' names scenes that are not in the dataset: {unknown[:5]}"
            )
        if split == sweep_split:
            frames[split] = _sweep_records(builder, [scene_of_name[n] for n in names])
        else:
            frames[split] = _keyframe_records(builder, [scene_of_name[n] for n in names])
    return {
        "sweep_split": sweep_split,
        "ego_poses": builder.ego_poses,
        "calibrations": builder.calibrations,
        "sample_data": builder.sample_data,
        "frames": frames,
    }


def _keyframe_records(builder: _Builder, scenes: list[dict]) -> list[dict]:
    nusc = builder.nusc
    out = []
    for scene in scenes:
        token = scene["first_sample_token"]
        while token:
            sample = nusc.get("sample", token)
            lidar_sd = nusc.get("sample_data", sample["data"][LIDAR])
            cameras = {
                ch: nusc.get("sample_data", sd_token)
                for ch, sd_token in sample["data"].items()
                if nusc.get("sample_data", sd_token)["sensor_modality"] == "camera"
            }
            record = builder.record(sample["token"], scene["name"], lidar_sd, cameras)
            ego2global = pose_matrix(*_split7(builder.ego_poses[lidar_sd["ego_pose_token"]]))
            record.update(ego_boxes(nusc, sample, invert_pose(ego2global)))
            record["has_label"] = True
            out.append(record)
            token = sample["next"]
    return out


def _split7(pose: list[float]) -> tuple[list[float], list[float]]:
    return pose[:3], pose[3:]


def _sweep_records(builder: _Builder, scenes: list[dict]) -> list[dict]:
    """Frames for the non-key LiDAR sweeps of ``scenes``, with the nearest camera per channel."""
    nusc = builder.nusc
    wanted = {s["token"]: s for s in scenes}
    lidar: dict[str, list[dict]] = defaultdict(list)
    cams: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for sd in nusc.sample_data:
        scene_token = nusc.get("sample", sd["sample_token"])["scene_token"]
        if scene_token not in wanted:
            continue
        if sd["channel"] == LIDAR and not sd["is_key_frame"]:
            lidar[scene_token].append(sd)
        elif sd["sensor_modality"] == "camera":
            cams[scene_token][sd["channel"]].append(sd)
    out = []
    for scene in scenes:
        channels = {
            ch: sorted(sds, key=lambda s: s["timestamp"])
            for ch, sds in cams[scene["token"]].items()
        }
        stamps = {ch: np.array([s["timestamp"] for s in sds]) for ch, sds in channels.items()}
        for sd in sorted(lidar[scene["token"]], key=lambda s: s["timestamp"]):
            nearest = {
                ch: channels[ch][int(np.argmin(np.abs(stamps[ch] - sd["timestamp"])))]
                for ch in channels
            }
            record = builder.record(sd["token"], scene["name"], sd, nearest)
            record.update({"boxes": [], "labels": [], "num_lidar_pts": [], "has_label": False})
            out.append(record)
    return out
