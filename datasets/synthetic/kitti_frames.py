"""KITTI side of the sensors: render one frame with the KITTI car's camera and HDL-64E and
write it as a KITTI object frame (``image_2``, ``velodyne``, ``calib``, ``label_2``) or a
KITTI raw frame (``image_02/data``, ``velodyne_points/data``). Runs in worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from bevkd.datasets.synthetic import camera as cm
from bevkd.datasets.synthetic import kitti_rig as kr
from bevkd.datasets.synthetic import lidar as ld
from bevkd.datasets.synthetic.appearance import noise_tile
from bevkd.datasets.synthetic.catalog import KINDS
from bevkd.datasets.synthetic.placement import build_scene
from bevkd.datasets.synthetic.presets import Preset
from bevkd.datasets.synthetic.raycast import Hits
from bevkd.datasets.synthetic.snapshot import Snapshot, snapshot
from bevkd.datasets.synthetic.world import SceneWorld
from bevkd.pipeline.geometry import invert_pose, transform_boxes

MAX_DEPTH = 70.0  # m: farther visible objects are labelled DontCare, as KITTI did
# Occluded fraction of the silhouette -> KITTI occlusion level (0 fully visible, 1 partly,
# 2 largely occluded; 3 "unknown" is never needed here).
OCCLUSION_LEVELS = (0.1, 0.5)
PNG_LEVEL = 3  # zlib level: 6 (the default) takes half again as long for 10% smaller files


@dataclass(frozen=True)
class LabelLine:
    """One label_2 line and what it was made from (for statistics and tests)."""

    actor: int
    type: str
    text: str


@lru_cache(maxsize=2)
def _scene(seed: int, scene: int, preset: Preset) -> tuple[SceneWorld, cm.CameraView]:
    world = build_scene(seed, scene, preset.keyframes, preset.sweeps_between)
    view = cm.CameraView.build(
        kr.camera2(),
        0.0,
        world.lighting,
        noise_tile(world.ground_seed),
        np.random.default_rng([seed, scene, 23]),
    )
    return world, view


def _occlusion(visible: int, covered: int) -> int:
    hidden = 1.0 - visible / covered
    return 0 if hidden <= OCCLUSION_LEVELS[0] else 1 if hidden <= OCCLUSION_LEVELS[1] else 2


def label_lines(snap: Snapshot, hits: Hits, camera: cm.Camera, kinds: list[str]) -> list[LabelLine]:
    """KITTI label_2 lines for every object seen by ``camera`` (at least one visible pixel),
    nearest first. The 2D box is the object's unoccluded silhouette, clipped to the image;
    truncation is the share of its projected 3D box outside the image; occlusion comes from
    visible vs unoccluded pixels. ``kinds``: the world kind of every actor."""
    mask = cm.instance_mask(hits, snap.parts, snap.n_actors)
    visible = np.bincount(mask[mask >= 0], minlength=snap.n_actors)
    actors = [
        a for a, (covered, _) in hits.silhouette.items() if a < snap.n_actors and visible[a] > 0
    ]
    if not actors:
        return []
    boxes = transform_boxes(snap.states[actors], invert_pose(snap.ego2global))
    extents = cm.project_extent(
        camera, cm.cuboid_corners(boxes[:, :3], boxes[:, 3:6] / 2, boxes[:, 6])
    )
    width, height = camera.width, camera.height
    lines = []
    for actor, box, extent in zip(actors, boxes, extents, strict=True):
        kbox = kr.ego_box_to_kitti(box)
        if kbox.location[2] <= 0.1:
            continue  # its centre is behind the camera: KITTI leaves such objects out
        covered, (r0, r1, c0, c1) = hits.silhouette[actor]
        bbox = (
            max(c0 - 0.5, 0.0),
            max(r0 - 0.5, 0.0),
            min(c1 + 0.5, width - 1.0),
            min(r1 + 0.5, height - 1.0),
        )
        bbox_text = " ".join(f"{v:.2f}" for v in bbox)
        if kbox.location[2] > MAX_DEPTH:
            lines.append(
                LabelLine(
                    actor,
                    "DontCare",
                    f"DontCare -1 -1 -10 {bbox_text} -1 -1 -1 -1000 -1000 -1000 -10",
                )
            )
            continue
        full = (extent[2] - extent[0]) * (extent[3] - extent[1])
        inside = max(0.0, min(extent[2], width) - max(extent[0], 0.0)) * max(
            0.0, min(extent[3], height) - max(extent[1], 0.0)
        )
        truncated = float(np.clip(1.0 - inside / full, 0.0, 1.0)) if full > 0 else 1.0
        kind = KINDS[kinds[actor]]
        h, w, l = kbox.dimensions  # noqa: E741
        x, y, z = kbox.location
        lines.append(
            LabelLine(
                actor,
                kind.kitti,
                (
                    f"{kind.kitti} {truncated:.2f} {_occlusion(int(visible[actor]), covered)} {kbox.alpha:.2f} {bbox_text} "
                    f"{h:.2f} {w:.2f} {l:.2f} {x:.2f} {y:.2f} {z:.2f} {kbox.rotation_y:.2f}"
                ),
            )
        )
    depth = {ln.actor: float(np.hypot(*boxes[actors.index(ln.actor), :2])) for ln in lines}
    return sorted(lines, key=lambda ln: depth[ln.actor])


def instance_mask(
    seed: int, scene: int, frame: int, preset: Preset
) -> tuple[np.ndarray, list[LabelLine]]:
    """Per-pixel object index (H, W) int32 of a frame's image and its label lines."""
    world, view = _scene(seed, scene, preset)
    snap = snapshot(world, float(world.frame_times[frame]))
    hits = cm.trace(view.rays, snap.parts)
    lines = label_lines(snap, hits, view.rays.camera, [a.kind for a in world.actors])
    return cm.instance_mask(hits, snap.parts, snap.n_actors), lines


def render(
    seed: int, scene: int, frame: int, preset: Preset
) -> tuple[np.ndarray, np.ndarray, list[LabelLine]]:
    """Image (H, W, 3) uint8, Velodyne points (N, 4) float32 and label lines of one frame."""
    world, view = _scene(seed, scene, preset)
    rng = np.random.default_rng([seed, scene, frame, 29])
    snap = snapshot(world, float(world.frame_times[frame]))
    points = ld.scan(
        ld.hdl64e(preset.kitti_azimuth_steps),
        kr.velo2ego(),
        snap.parts,
        world.road,
        snap.ego2global,
        0.0,
        rng,
    )
    hits = cm.trace(view.rays, snap.parts)
    image = cm.shade(
        view,
        hits,
        snap.parts,
        world.lighting,
        world.road,
        snap.ego2global,
        noise_tile(world.ground_seed),
        rng,
    )
    lines = label_lines(snap, hits, view.rays.camera, [a.kind for a in world.actors])
    return image, np.ascontiguousarray(points[:, :4]), lines


def write_object_frame(
    base: Path, frame_id: str, seed: int, scene: int, frame: int, preset: Preset, labelled: bool
) -> list[str]:
    """Write ``<base>/{image_2,velodyne,calib[,label_2]}/<frame_id>.*``; returns the label types."""
    image, points, lines = render(seed, scene, frame, preset)
    Image.fromarray(image).save(base / "image_2" / f"{frame_id}.png", compress_level=PNG_LEVEL)
    points.tofile(base / "velodyne" / f"{frame_id}.bin")
    (base / "calib" / f"{frame_id}.txt").write_text(kr.object_calib_text())
    if labelled:
        (base / "label_2" / f"{frame_id}.txt").write_text("".join(ln.text + "\n" for ln in lines))
    return [ln.type for ln in lines]


def write_raw_frame(
    drive: Path, index: int, seed: int, scene: int, frame: int, preset: Preset
) -> list[str]:
    """Write ``<drive>/{image_02,velodyne_points}/data/<10-digit index>.*`` (no labels)."""
    image, points, _ = render(seed, scene, frame, preset)
    Image.fromarray(image).save(
        drive / "image_02" / "data" / f"{index:010d}.png", compress_level=PNG_LEVEL
    )
    points.tofile(drive / "velodyne_points" / "data" / f"{index:010d}.bin")
    return []
