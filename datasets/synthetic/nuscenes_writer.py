"""The nuScenes tables: the 13 JSON files of ``<root>/v1.0-trainval/``, ``splits.json`` and
the map mask, assembled from rendered frames. Tokens are md5 hashes of (seed, what, which),
so the same seed gives byte-identical tables.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from bevkd.datasets.nuscenes import TABLES
from bevkd.datasets.synthetic import road as rd
from bevkd.datasets.synthetic.catalog import ATTRIBUTES, CATEGORIES, VISIBILITY
from bevkd.datasets.synthetic.nuscenes_frames import (
    CHANNELS,
    LIDAR,
    FrameOutput,
    log_name,
    scene_rig,
)
from bevkd.datasets.synthetic.placement import scene_road
from bevkd.datasets.synthetic.presets import Preset

VERSION = "v1.0-trainval"
LOCATION = "boston-seaport"
MAP_RESOLUTION = 2.0  # m per pixel of maps/<token>.png (pass map_resolution=2.0 to NuScenes)
MAP_SIZE = 1000  # pixels; covers global x, y in [0, 2000) m


# The first scenes of the devkit's predefined train and val splits (nuscenes.utils.splits;
# copied so that writing a dataset never imports the devkit, whose import takes seconds).
TRAIN_SCENES = (
    1,
    2,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    26,
    27,
    28,
    29,
    30,
    31,
    32,
    33,
    34,
    41,
    42,
    43,
    44,
    45,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
)
VAL_SCENES = (3, 12, 13, 14, 15, 16, 17, 18, 35, 36, 38, 39, 92, 93, 94, 95)


def scene_names(preset: Preset) -> list[str]:
    """Real nuScenes scene names: the first train scenes, then the first val scenes, so the
    devkit's predefined "train" / "val" splits select exactly these scenes."""
    if preset.train_scenes > len(TRAIN_SCENES) or preset.val_scenes > len(VAL_SCENES):
        raise ValueError(
            f"preset {preset.name}: at most {len(TRAIN_SCENES)} train and {len(VAL_SCENES)} val scenes"
        )
    names = [f"scene-{n:04d}" for n in TRAIN_SCENES[: preset.train_scenes]]
    return names + [f"scene-{n:04d}" for n in VAL_SCENES[: preset.val_scenes]]


def make_token(seed: int, preset: str, kind: str, *key: object) -> str:
    """A 32-hex nuScenes token for record ``kind`` ``key`` of the dataset (seed, preset)."""
    text = "/".join(str(k) for k in (seed, preset, kind, *key))
    return hashlib.md5(text.encode()).hexdigest()


class Tables:
    """Builds the table rows; ``token(kind, *key)`` is deterministic in the seed."""

    def __init__(self, seed: int, preset: Preset) -> None:
        self.seed = seed
        self.preset = preset
        self.rows: dict[str, list[dict]] = defaultdict(list)

    def token(self, kind: str, *key: object) -> str:
        return make_token(self.seed, self.preset.name, kind, *key)

    def add_static(self) -> None:
        for name, description in CATEGORIES:
            self.rows["category"].append(
                {"token": self.token("category", name), "name": name, "description": description}
            )
        for name, description in ATTRIBUTES:
            self.rows["attribute"].append(
                {"token": self.token("attribute", name), "name": name, "description": description}
            )
        for token, level, description in VISIBILITY:
            self.rows["visibility"].append(
                {"description": description, "token": token, "level": level}
            )
        for channel in CHANNELS:
            modality = "lidar" if channel == LIDAR else "camera"
            self.rows["sensor"].append(
                {"token": self.token("sensor", channel), "channel": channel, "modality": modality}
            )

    def add_scene(self, scene: int, name: str, description: str, frames: list[FrameOutput]) -> None:
        """All records of one scene from its frames (in time order)."""
        log = self.token("log", scene)
        self.rows["log"].append(
            {
                "token": log,
                "logfile": log_name(scene),
                "vehicle": log_name(scene)[:4],
                "date_captured": log_name(scene)[5:15],
                "location": LOCATION,
            }
        )
        calib_token = {}
        sizes = {}
        for calib in scene_rig(self.seed, scene, self.preset):
            sizes[calib.channel] = (calib.width, calib.height)
            calib_token[calib.channel] = self.token("calibrated_sensor", scene, calib.channel)
            self.rows["calibrated_sensor"].append(
                {
                    "token": calib_token[calib.channel],
                    "sensor_token": self.token("sensor", calib.channel),
                    "translation": calib.translation,
                    "rotation": calib.rotation,
                    "camera_intrinsic": calib.intrinsic,
                }
            )
        keys = [f for f in frames if f.is_key]
        sample_of_key = {f.frame: self.token("sample", scene, f.frame) for f in keys}
        for i, f in enumerate(keys):
            self.rows["sample"].append(
                {
                    "token": sample_of_key[f.frame],
                    "timestamp": f.timestamp,
                    "prev": sample_of_key[keys[i - 1].frame] if i > 0 else "",
                    "next": sample_of_key[keys[i + 1].frame] if i + 1 < len(keys) else "",
                    "scene_token": self.token("scene", scene),
                }
            )
        self._sample_data(scene, frames, sample_of_key, calib_token, sizes)
        self._annotations(scene, keys, sample_of_key)
        self.rows["scene"].append(
            {
                "token": self.token("scene", scene),
                "log_token": log,
                "nbr_samples": len(keys),
                "first_sample_token": sample_of_key[keys[0].frame],
                "last_sample_token": sample_of_key[keys[-1].frame],
                "name": name,
                "description": description,
            }
        )

    def _sample_data(
        self,
        scene: int,
        frames: list[FrameOutput],
        sample_of_key: dict[int, str],
        calib_token: dict[str, str],
        sizes: dict[str, tuple[int, int]],
    ) -> None:
        # A sweep belongs to the next keyframe's sample, as in nuScenes (the devkit
        # interpolates a sweep's boxes between that sample and the one before).
        owner, upcoming = {}, None
        for f in reversed(frames):
            upcoming = sample_of_key.get(f.frame, upcoming)
            owner[f.frame] = upcoming
        for channel in CHANNELS:
            sd = [self.token("sample_data", scene, f.frame, channel) for f in frames]
            for i, f in enumerate(frames):
                pose = self.token("ego_pose", scene, f.frame, channel)
                self.rows["ego_pose"].append(
                    {
                        "token": pose,
                        "timestamp": f.timestamp,
                        "rotation": f.ego_rotation,
                        "translation": f.ego_translation,
                    }
                )
                camera = channel != LIDAR
                self.rows["sample_data"].append(
                    {
                        "token": sd[i],
                        "sample_token": owner[f.frame],
                        "ego_pose_token": pose,
                        "calibrated_sensor_token": calib_token[channel],
                        "timestamp": f.timestamp,
                        "fileformat": "jpg" if camera else "pcd",
                        "is_key_frame": f.is_key,
                        "height": sizes[channel][1],
                        "width": sizes[channel][0],
                        "filename": f.files[channel],
                        "prev": sd[i - 1] if i > 0 else "",
                        "next": sd[i + 1] if i + 1 < len(frames) else "",
                    }
                )

    def _annotations(
        self, scene: int, keys: list[FrameOutput], sample_of_key: dict[int, str]
    ) -> None:
        tracks: dict[int, list[tuple[FrameOutput, int]]] = defaultdict(list)
        for f in keys:
            for j, ann in enumerate(f.annotations):
                tracks[ann.actor].append((f, j))
        for actor in sorted(tracks):
            track = tracks[actor]
            tokens = [self.token("sample_annotation", scene, f.frame, actor) for f, _ in track]
            instance = self.token("instance", scene, actor)
            first = track[0][0].annotations[track[0][1]]
            self.rows["instance"].append(
                {
                    "token": instance,
                    "category_token": self.token("category", first.category),
                    "nbr_annotations": len(track),
                    "first_annotation_token": tokens[0],
                    "last_annotation_token": tokens[-1],
                }
            )
            for i, (f, j) in enumerate(track):
                ann = f.annotations[j]
                self.rows["sample_annotation"].append(
                    {
                        "token": tokens[i],
                        "sample_token": sample_of_key[f.frame],
                        "instance_token": instance,
                        "visibility_token": ann.visibility,
                        "attribute_tokens": [self.token("attribute", ann.attribute)]
                        if ann.attribute
                        else [],
                        "translation": ann.translation,
                        "size": ann.size,
                        "rotation": ann.rotation,
                        "prev": tokens[i - 1] if i > 0 else "",
                        "next": tokens[i + 1] if i + 1 < len(track) else "",
                        "num_lidar_pts": ann.num_lidar_pts,
                        "num_radar_pts": 0,
                    }
                )

    def add_map(self, root: Path, scenes: Iterable[int]) -> None:
        """One map record for all logs, with a coarse drivable-surface mask of every road."""
        token = self.token("map")
        filename = f"maps/{token}.png"
        self.rows["map"].append(
            {
                "category": "semantic_prior",
                "token": token,
                "filename": filename,
                "log_tokens": [self.token("log", s) for s in scenes],
            }
        )
        (root / "maps").mkdir(parents=True, exist_ok=True)
        write_map_mask(root / filename, [scene_road(self.seed, s) for s in scenes])

    def write(self, root: Path) -> None:
        folder = root / VERSION
        folder.mkdir(parents=True, exist_ok=True)
        for name in TABLES:
            with open(folder / f"{name}.json", "w") as handle:
                json.dump(self.rows[name], handle, indent=0)


def write_map_mask(path: Path, roads: list[rd.Road]) -> None:
    """A binary drivable-area mask at MAP_RESOLUTION m/px (row 0 is the largest y, as the
    devkit's MapMask expects): 255 within ROAD_EDGE of any road's centre line."""
    centres = (np.arange(MAP_SIZE) + 0.5) * MAP_RESOLUTION
    x, y = np.meshgrid(centres, centres[::-1])
    xy = np.stack([x.reshape(-1), y.reshape(-1)], axis=1)
    mask = np.zeros(len(xy), dtype=bool)
    for road in roads:
        s, d = road.to_road(xy)
        mask |= (np.abs(d) < rd.ROAD_EDGE) & (np.abs(s) < 300.0)
    Image.fromarray((mask.reshape(MAP_SIZE, MAP_SIZE) * 255).astype(np.uint8)).save(path)


def write_splits(root: Path, preset: Preset) -> None:
    """``splits.json``: scene names of train and val; ``unlabeled`` names the scenes whose
    sweeps (non-key sample_data) form the unlabeled pool, i.e. the train scenes."""
    names = scene_names(preset)
    splits = {
        "train": names[: preset.train_scenes],
        "val": names[preset.train_scenes :],
        "unlabeled": names[: preset.train_scenes],
    }
    with open(root / VERSION / "splits.json", "w") as handle:
        json.dump(splits, handle, indent=1)
