"""Waymo side of the sensors: render one frame with a Waymo-like TOP LiDAR and FRONT camera
as the rows of the v2 components (:mod:`bevkd.datasets.waymo_schema` names). Runs in worker
processes.

- TOP LiDAR: 64 beams with non-uniform inclinations (-17.6..+2.4 deg, denser near the
  horizon, written as ``beam_inclination.values``), ``preset.azimuth_steps`` columns, 75 m,
  mounted 2.18 m up and turned a quarter turn about z (so readers must apply the azimuth
  correction). The ray caster fills the range image directly: one ray per (row, column) of
  the official layout (row 0 the top beam; column ``j`` at vehicle azimuth
  ``pi - (j + 0.5) * 2 pi / W``). One return (``range_image_return2`` holds no return);
  pixels without a return are -1 in every channel, as in the real data.
- The world is frozen during a sweep (one snapshot per frame), so the TOP laser's per-pixel
  pose is the frame's vehicle pose at every pixel; readers still apply it per pixel.
- FRONT camera (global shutter, no distortion), at ``preset.image_scale`` x 1920x1280.
- Boxes at keyframes only (sweeps are unlabelled frames): annotated objects with a Waymo type.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image

from bevkd.datasets import waymo_schema as ws
from bevkd.datasets.synthetic import camera as cm
from bevkd.datasets.synthetic import lidar as ld
from bevkd.datasets.synthetic.appearance import noise_tile
from bevkd.datasets.synthetic.nuscenes_frames import JPEG_QUALITY, scene_timestamp
from bevkd.datasets.synthetic.nuscenes_writer import make_token
from bevkd.datasets.synthetic.placement import build_scene
from bevkd.datasets.synthetic.presets import Preset
from bevkd.datasets.synthetic.snapshot import snapshot
from bevkd.datasets.synthetic.world import SceneWorld
from bevkd.pipeline.geometry import invert_pose, points_in_boxes, transform_boxes

TOP_ELEVATIONS = np.concatenate([np.linspace(-17.6, -6.1, 24), np.linspace(-5.8, 2.4, 40)])
TOP_TRANSLATION = (1.43, 0.0, 2.184)
TOP_MAX_RANGE = 75.0
FRONT_SIZE = (1920, 1280)
FRONT_FOCAL = 2060.0
FRONT_POSITION = (1.54, -0.02, 2.12)
FRONT_PITCH = 0.5  # deg, down
# The camera axes Waymo uses (x forward, y left, z up) as columns in OpenCV camera axes.
OPENCV_FROM_WAYMO = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
# World kinds -> Waymo box types (Waymo labels motorcycles as vehicles and only bicycles with a
# rider as cyclists); parked bicycles, barriers and cones have no Waymo type.
WAYMO_TYPES = {
    **dict.fromkeys(
        ("car", "van", "truck", "bus", "trailer", "construction_vehicle"),
        ws.BOX_TYPES["TYPE_VEHICLE"],
    ),
    **dict.fromkeys(("motorcycle", "motorcyclist"), ws.BOX_TYPES["TYPE_VEHICLE"]),
    **dict.fromkeys(("pedestrian", "child", "worker", "sitting"), ws.BOX_TYPES["TYPE_PEDESTRIAN"]),
    "cyclist": ws.BOX_TYPES["TYPE_CYCLIST"],
}
LEVEL_2_MAX_POINTS = 5  # Waymo: boxes with at most 5 LiDAR points are difficulty LEVEL_2


def top_spec(preset: Preset) -> ld.LidarSpec:
    return ld.LidarSpec(TOP_ELEVATIONS, preset.azimuth_steps, TOP_MAX_RANGE, 1.0, 0.02, 0.03, 1.0)


def top_yaw_steps(preset: Preset) -> int:
    """The TOP laser's yaw in azimuth steps (a quarter turn clockwise, rounded to a step)."""
    return -(preset.azimuth_steps // 4)


def top2ego(preset: Preset) -> np.ndarray:
    yaw = top_yaw_steps(preset) * 2 * np.pi / preset.azimuth_steps
    out = np.eye(4)
    out[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    out[:3, 3] = TOP_TRANSLATION
    return out


def front_camera(preset: Preset) -> cm.Camera:
    scale = preset.image_scale
    width, height = round(FRONT_SIZE[0] * scale), round(FRONT_SIZE[1] * scale)
    intrinsic = np.array(
        [
            [FRONT_FOCAL * scale, 0.0, (width - 1) / 2],
            [0.0, FRONT_FOCAL * scale, (height - 1) / 2],
            [0.0, 0.0, 1.0],
        ]
    )
    cam2ego = np.eye(4)
    cam2ego[:3, :3] = cm.camera_rotation(0.0, FRONT_PITCH)
    cam2ego[:3, 3] = FRONT_POSITION
    return cm.Camera("FRONT", width, height, intrinsic, cam2ego)


def segment_name(seed: int, scene: int) -> str:
    """A v2 ``segment_context_name`` (digits, start and end in ms), fixed by seed and scene."""
    digits = int(hashlib.md5(f"waymo/{seed}/{scene}".encode()).hexdigest()[:16], 16)
    return f"{digits:020d}_{scene * 20_000}_000_{scene * 20_000 + 20_000}_000"


def frame_rng(seed: int, scene: int, frame: int) -> np.random.Generator:
    """The generator a frame is rendered with: the LiDAR draws from it first."""
    return np.random.default_rng([seed, scene, frame, 31])


def calibration_rows(seed: int, index: int, preset: Preset) -> dict[str, dict[str, Any]]:
    """The segment's ``lidar_calibration`` (TOP) and ``camera_calibration`` (FRONT) rows."""
    beams = np.radians(TOP_ELEVATIONS)
    camera = front_camera(preset)
    k = camera.intrinsic
    segment = {ws.SEGMENT: segment_name(seed, index)}
    lidar = {
        ws.LASER: ws.LASER_NAMES["TOP"],
        ws.LIDAR_EXTRINSIC: top2ego(preset).reshape(-1),
        # The edges of the beam fan, half a beam gap beyond the outer beams.
        ws.BEAM_MIN: float(beams[0] - (beams[1] - beams[0]) / 2),
        ws.BEAM_MAX: float(beams[-1] + (beams[-1] - beams[-2]) / 2),
        ws.BEAM_VALUES: beams,
    }
    # Waymo pixel coordinates start at the first pixel's left edge, the world's at its centre.
    front = {
        ws.CAMERA: ws.CAMERA_NAMES["FRONT"],
        ws.F_U: k[0, 0],
        ws.F_V: k[1, 1],
        ws.C_U: k[0, 2] + 0.5,
        ws.C_V: k[1, 2] + 0.5,
        **dict.fromkeys(ws.DISTORTION, 0.0),
        ws.CAMERA_EXTRINSIC: (camera.cam2ego @ OPENCV_FROM_WAYMO).reshape(-1),
        ws.WIDTH: camera.width,
        ws.HEIGHT: camera.height,
        ws.SHUTTER_DIRECTION: ws.GLOBAL_SHUTTER,
    }
    return {
        ws.LIDAR_CALIBRATION: {**segment, **lidar},
        ws.CAMERA_CALIBRATION: {**segment, **front},
    }


@lru_cache(maxsize=2)
def scene(seed: int, index: int, preset: Preset) -> tuple[SceneWorld, cm.CameraView]:
    world = build_scene(seed, index, preset.keyframes, preset.sweeps_between)
    view = cm.CameraView.build(
        front_camera(preset),
        0.0,
        world.lighting,
        noise_tile(world.ground_seed),
        np.random.default_rng([seed, index, 37]),
    )
    return world, view


@dataclass
class FrameRows:
    """One frame's rows per component (column name -> one value per row)."""

    scene: int
    frame: int
    rows: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def add(self, component: str, values: dict[str, Any]) -> None:
        """One row; columns of the component not in ``values`` are null."""
        table = self.rows.setdefault(component, {name: [] for name in ws.COLUMNS[component]})
        for name in table:
            table[name].append(values.get(name))


def range_image(returns: ld.Returns, yaw_steps: int) -> np.ndarray:
    """(H, W, 4) range image (range, intensity, elongation, no-label zone; -1 without a
    return) of a sweep cast on :meth:`LidarSpec.directions`' grid: row ``i`` is beam
    ``H - 1 - i``; column ``j`` is grid column ``(W - 1 - j - yaw_steps) mod W``, the ray at
    laser azimuth ``pi - (j + 0.5) * step - yaw`` (``waymo_range.azimuths``)."""
    beams, width = returns.keep.shape
    cols = (width - 1 - np.arange(width) - yaw_steps) % width
    keep = returns.keep[::-1][:, cols]
    image = np.full((beams, width, 4), -1.0, dtype=np.float32)
    image[keep, 0] = returns.range[::-1][:, cols][keep]
    image[keep, 1] = returns.intensity[::-1][:, cols][keep]
    image[keep, 2] = 0.0
    return image


def render(seed: int, index: int, frame: int, preset: Preset) -> FrameRows:
    """The component rows of frame ``frame`` of scene ``index``."""
    world, view = scene(seed, index, preset)
    time = float(world.frame_times[frame])
    stamp = scene_timestamp(index, time)
    rng = frame_rng(seed, index, frame)
    snap = snapshot(world, time)
    key = {ws.SEGMENT: segment_name(seed, index), ws.TIMESTAMP: stamp}
    out = FrameRows(index, frame)
    out.add(ws.VEHICLE_POSE, {**key, ws.WORLD_FROM_VEHICLE: snap.ego2global.reshape(-1)})

    spec, lidar2ego = top_spec(preset), top2ego(preset)
    returns = ld.scan_grid(spec, lidar2ego, snap.parts, world.road, snap.ego2global, 0.0, rng)
    image = range_image(returns, top_yaw_steps(preset))
    top = {**key, ws.LASER: ws.LASER_NAMES["TOP"]}
    lidar = {
        ws.RETURN1_VALUES: image.reshape(-1),
        ws.RETURN1_SHAPE: list(image.shape),
        ws.RETURN2_VALUES: np.full(image.size, -1.0, np.float32),
        ws.RETURN2_SHAPE: list(image.shape),
    }
    out.add(ws.LIDAR, {**top, **lidar})
    pose = np.zeros((*image.shape[:2], 6), np.float32)
    pose[..., 2] = np.arctan2(snap.ego2global[1, 0], snap.ego2global[0, 0])
    pose[..., 3:6] = snap.ego2global[:3, 3]
    out.add(
        ws.LIDAR_POSE, {**top, ws.POSE_VALUES: pose.reshape(-1), ws.POSE_SHAPE: list(pose.shape)}
    )

    hits = cm.trace(view.rays, snap.parts)
    tile = noise_tile(world.ground_seed)
    pixels = cm.shade(
        view, hits, snap.parts, world.lighting, world.road, snap.ego2global, tile, rng
    )
    jpeg = BytesIO()
    Image.fromarray(pixels).save(jpeg, format="JPEG", quality=JPEG_QUALITY)
    camera = {
        ws.CAMERA: ws.CAMERA_NAMES["FRONT"],
        ws.IMAGE: jpeg.getvalue(),
        ws.IMAGE_POSE: snap.ego2global.reshape(-1),
        ws.IMAGE_POSE_TIMESTAMP: stamp / 1e6,
    }
    out.add(ws.CAMERA_IMAGE, {**key, **camera})

    if world.is_key[frame]:
        points = sensor_points(returns, spec) @ lidar2ego[:3, :3].T + lidar2ego[:3, 3]
        for values in box_rows(world, time, snap.states, snap.ego2global, points):
            actor = values.pop("actor")
            object_id = make_token(seed, preset.name, "instance", index, actor)
            out.add(ws.LIDAR_BOX, {**key, ws.OBJECT_ID: object_id, **values})
    return out


def sensor_points(returns: ld.Returns, spec: ld.LidarSpec) -> np.ndarray:
    """(N, 3) float32 returns in the sensor frame, beam-major (as :func:`lidar.scan` makes
    them, in another order)."""
    dirs = spec.directions()[returns.keep]
    return (returns.range[returns.keep][:, None] * dirs).astype(np.float32)


def box_rows(
    world: SceneWorld, time: float, states: np.ndarray, ego2global: np.ndarray, points: np.ndarray
) -> list[dict[str, Any]]:
    """``lidar_box`` values (vehicle frame) of the actors annotated at ``time`` that have a
    Waymo type, each with its ``actor`` index; ``points`` (N, 3) in the vehicle frame are
    counted into ``num_lidar_points_in_box``. Acceleration is left null (not recorded)."""
    actors = [a for a in world.annotated(time).tolist() if world.actors[a].kind in WAYMO_TYPES]
    boxes = transform_boxes(states[actors], invert_pose(ego2global))
    counts = points_in_boxes(points, boxes).sum(axis=1).tolist()
    geometry = (*ws.BOX_CENTER, *ws.BOX_SIZE, ws.BOX_HEADING)
    rows = []
    for actor, box, count in zip(actors, boxes, counts, strict=True):
        level = ws.LEVEL_2 if count <= LEVEL_2_MAX_POINTS else ws.LEVEL_1
        rows.append(
            {
                "actor": actor,
                **dict(zip(geometry, box[:7].tolist(), strict=True)),
                **dict(zip(ws.BOX_SPEED, [*box[7:9].tolist(), 0.0], strict=True)),
                ws.BOX_TYPE: WAYMO_TYPES[world.actors[actor].kind],
                ws.NUM_POINTS: count,
                ws.NUM_TOP_POINTS: count,
                ws.DIFFICULTY: level,
                ws.TRACKING_DIFFICULTY: level,
            }
        )
    return rows
