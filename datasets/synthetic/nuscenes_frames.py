"""nuScenes side of the sensors: the vehicle's calibration records, and rendering one frame
(LIDAR_TOP sweep + six camera images) to nuScenes file names, with the per-annotation
measurements the tables need (``num_lidar_pts``, visibility). Runs in worker processes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from pyquaternion import Quaternion

from bevkd.datasets.synthetic import camera as cm
from bevkd.datasets.synthetic import lidar as ld
from bevkd.datasets.synthetic.appearance import noise_tile
from bevkd.datasets.synthetic.catalog import attribute_for
from bevkd.datasets.synthetic.devkit_count import box_corners_in_sensor, count_points
from bevkd.datasets.synthetic.placement import build_scene
from bevkd.datasets.synthetic.presets import Preset
from bevkd.datasets.synthetic.snapshot import PixelCounts, snapshot, visibility_token
from bevkd.datasets.synthetic.world import SceneWorld

LIDAR = "LIDAR_TOP"
CAMERAS = tuple(cm.NUSCENES_RIG)
CHANNELS = (LIDAR, *CAMERAS)
# nuScenes' LIDAR_TOP: 1.84 m up, its x axis pointing to the ego's right (yaw -90 deg).
LIDAR_TRANSLATION = (0.943713, 0.0, 1.84023)
LIDAR_YAW = -np.pi / 2
BASE_TIMESTAMP = 1_533_000_000_000_000  # microseconds, 2018-07-31
SCENE_SPACING = 3_600_000_000  # one hour between scene starts
JPEG_QUALITY = 90


@dataclass(frozen=True)
class SensorCalib:
    """A calibrated_sensor record's values, exactly as written (quaternion w, x, y, z)."""

    channel: str
    translation: list[float]
    rotation: list[float]
    intrinsic: list[list[float]]
    width: int = 0
    height: int = 0

    def matrix(self) -> np.ndarray:
        """sensor2ego (4, 4) from the written values."""
        out = np.eye(4)
        out[:3, :3] = Quaternion(self.rotation).rotation_matrix
        out[:3, 3] = self.translation
        return out


def _quat(rotation: np.ndarray) -> list[float]:
    return [float(v) for v in Quaternion(matrix=rotation, atol=1e-7).elements]


def yaw_quat(yaw: float) -> list[float]:
    """Quaternion (w, x, y, z) of a rotation by ``yaw`` about +z."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def scene_rig(seed: int, scene: int, preset: Preset) -> list[SensorCalib]:
    """LIDAR_TOP, then the six cameras, of the vehicle that recorded ``scene``."""
    rng = np.random.default_rng([seed, scene, 11])
    calibs = [SensorCalib(LIDAR, list(LIDAR_TRANSLATION), yaw_quat(LIDAR_YAW), [])]
    for cam in cm.nuscenes_rig(preset.image_scale, rng):
        calibs.append(
            SensorCalib(
                cam.name,
                [float(v) for v in cam.cam2ego[:3, 3]],
                _quat(cam.cam2ego[:3, :3]),
                cam.intrinsic.tolist(),
                cam.width,
                cam.height,
            )
        )
    return calibs


def scene_timestamp(scene: int, time: float) -> int:
    """Microsecond timestamp of scene time ``time`` (s); scene time 0 is one second in."""
    return BASE_TIMESTAMP + scene * SCENE_SPACING + 1_000_000 + round(time * 1e6)


def log_name(scene: int) -> str:
    """A nuScenes-style log name (vehicle n9xx, the scene's start date and time)."""
    start = dt.datetime.fromtimestamp(scene_timestamp(scene, 0.0) / 1e6, dt.UTC)
    return f"n9{scene % 100:02d}-{start:%Y-%m-%d-%H-%M-%S}+0000"


@dataclass(frozen=True)
class AnnotationOutput:
    actor: int
    category: str
    attribute: str | None
    translation: list[float]
    size: list[float]  # w, l, h (nuScenes order)
    rotation: list[float]
    num_lidar_pts: int
    visibility: str


@dataclass(frozen=True)
class FrameOutput:
    """What the table writer needs from one rendered frame."""

    scene: int
    frame: int
    timestamp: int
    is_key: bool
    ego_translation: list[float]
    ego_rotation: list[float]
    files: dict[str, str]
    lidar_points: int
    annotations: list[AnnotationOutput] = field(default_factory=list)


@lru_cache(maxsize=2)
def _scene(
    seed: int, scene: int, preset: Preset
) -> tuple[SceneWorld, list[SensorCalib], list[cm.CameraView]]:
    world = build_scene(seed, scene, preset.keyframes, preset.sweeps_between)
    rig = scene_rig(seed, scene, preset)
    views = []
    tile = noise_tile(world.ground_seed)
    for i, calib in enumerate(rig[1:]):
        camera = cm.Camera(
            calib.channel, calib.width, calib.height, np.array(calib.intrinsic), calib.matrix()
        )
        views.append(
            cm.CameraView.build(
                camera, 0.0, world.lighting, tile, np.random.default_rng([seed, scene, 13, i])
            )
        )
    return world, rig, views


def scene_world(seed: int, scene: int, preset: Preset) -> SceneWorld:
    """The world of ``scene`` (cached with its cameras for the frames rendered next)."""
    return _scene(seed, scene, preset)[0]


def annotation_values(state: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """translation, size (w, l, h), rotation of an actor's state as written to the tables."""
    translation = [round(float(v), 4) for v in state[:3]]
    size = [round(float(state[4]), 3), round(float(state[3]), 3), round(float(state[5]), 3)]
    return translation, size, yaw_quat(float(state[6]))


def render_frame(root: Path, seed: int, scene: int, frame: int, preset: Preset) -> FrameOutput:
    """Render and write frame ``frame`` of ``scene``; return its records' values."""
    world, rig, views = _scene(seed, scene, preset)
    time = float(world.frame_times[frame])
    is_key = bool(world.is_key[frame])
    rng = np.random.default_rng([seed, scene, frame, 17])
    snap = snapshot(world, time)
    x, y, yaw = world.ego_pose(time)
    ego = ([x, y, 0.0], yaw_quat(yaw))
    stamp = scene_timestamp(scene, time)
    folder = "samples" if is_key else "sweeps"
    files: dict[str, str] = {}

    points = ld.scan(
        ld.hdl32e(preset.azimuth_steps),
        rig[0].matrix(),
        snap.parts,
        world.road,
        snap.ego2global,
        0.0,
        rng,
    )
    files[LIDAR] = f"{folder}/{LIDAR}/{log_name(scene)}__{LIDAR}__{stamp}.pcd.bin"
    points.tofile(root / files[LIDAR])

    counts = PixelCounts()
    tile = noise_tile(world.ground_seed)
    for view in views:
        hits = cm.trace(view.rays, snap.parts)
        image = cm.shade(
            view, hits, snap.parts, world.lighting, world.road, snap.ego2global, tile, rng
        )
        name = view.rays.camera.name
        files[name] = f"{folder}/{name}/{log_name(scene)}__{name}__{stamp}.jpg"
        Image.fromarray(image).save(root / files[name], quality=JPEG_QUALITY)
        if is_key:
            counts.add(hits, snap.parts, snap.n_actors)

    annotations = []
    if is_key:
        xyz = np.ascontiguousarray(points[:, :3].T)
        lidar = (rig[0].translation, rig[0].rotation)
        for actor in world.annotated(time).tolist():
            obj = world.actors[actor]
            translation, size, rotation = annotation_values(snap.states[actor])
            annotations.append(
                AnnotationOutput(
                    actor=actor,
                    category=obj.spec.category,
                    attribute=attribute_for(obj.spec, obj.moving, obj.parked),
                    translation=translation,
                    size=size,
                    rotation=rotation,
                    num_lidar_pts=count_points(
                        xyz, box_corners_in_sensor(translation, size, rotation, ego, lidar)
                    ),
                    visibility=visibility_token(counts.visibility(actor)),
                )
            )
    return FrameOutput(scene, frame, stamp, is_key, ego[0], ego[1], files, len(points), annotations)


def render_instance_mask(
    preset: Preset, seed: int, scene: int, timestamp: int, channel: str
) -> np.ndarray:
    """(H, W) int32 per-pixel actor index (-1: ground, sky, buildings) of camera ``channel``
    at ``timestamp`` of ``scene``, rendered exactly as the stored image was."""
    world, _, views = _scene(seed, scene, preset)
    frame = frame_at(world, scene, timestamp)
    view = next((v for v in views if v.rays.camera.name == channel), None)
    if view is None:
        raise ValueError(f"no camera {channel!r}; cameras are {', '.join(CAMERAS)}")
    snap = snapshot(world, float(world.frame_times[frame]))
    return cm.instance_mask(cm.trace(view.rays, snap.parts), snap.parts, snap.n_actors)


def frame_at(world: SceneWorld, scene: int, timestamp: int) -> int:
    """Index of the frame of ``scene`` recorded at ``timestamp``."""
    stamps = [scene_timestamp(scene, float(t)) for t in world.frame_times]
    if timestamp not in stamps:
        raise ValueError(f"scene {scene} has no frame at timestamp {timestamp}")
    return stamps.index(timestamp)
