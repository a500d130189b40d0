"""Write a preset of the world as a nuScenes ``v1.0-trainval`` dataroot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bevkd.datasets.synthetic.generate import frame_chunks, run_chunks
from bevkd.datasets.synthetic.nuscenes_frames import (
    CHANNELS,
    FrameOutput,
    render_frame,
    scene_world,
)
from bevkd.datasets.synthetic.nuscenes_frames import render_instance_mask as frame_instance_mask
from bevkd.datasets.synthetic.nuscenes_writer import Tables, make_token, scene_names, write_splits
from bevkd.datasets.synthetic.presets import Preset, get_preset
from bevkd.datasets.synthetic.world import frame_schedule


def _render_chunk(
    root: Path, seed: int, scene: int, frames: list[int], preset: Preset
) -> tuple[int, str, list[FrameOutput]]:
    outputs = [render_frame(root, seed, scene, f, preset) for f in frames]
    description = scene_world(seed, scene, preset).description if frames[0] == 0 else ""
    return scene, description, outputs


def export_nuscenes(
    root: Path, preset: Preset, seed: int, workers: int | None, progress: bool
) -> None:
    """Render every frame, then write the tables, ``splits.json`` and the map."""
    for folder in ("samples", "sweeps"):
        for channel in CHANNELS:
            (root / folder / channel).mkdir(parents=True, exist_ok=True)
    times, _ = frame_schedule(preset.keyframes, preset.sweeps_between)
    scenes = list(range(preset.scenes))
    chunks = frame_chunks(scenes, len(times))
    frames: dict[int, list[FrameOutput]] = {s: [] for s in scenes}
    descriptions: dict[int, str] = {}
    tasks = [(root, seed, scene, idx, preset) for scene, idx in chunks]
    for scene, description, outputs in run_chunks(
        _render_chunk, tasks, [len(c[1]) for c in chunks], workers, progress, "nuScenes frames"
    ):
        frames[scene].extend(outputs)
        if description:
            descriptions[scene] = description
    tables = Tables(seed, preset)
    tables.add_static()
    for scene, name in zip(scenes, scene_names(preset), strict=True):
        tables.add_scene(
            scene, name, descriptions[scene], sorted(frames[scene], key=lambda f: f.frame)
        )
    tables.add_map(root, scenes)
    tables.write(root)
    write_splits(root, preset)


def render_instance_mask(
    preset: str, seed: int, scene_name: str, timestamp: int, channel: str
) -> tuple[np.ndarray, list[str]]:
    """The per-pixel instance mask of a stored nuScenes camera image, by re-rendering it.

    Arguments are what the tables say about the image (the scene's name, the sample_data's
    timestamp and channel) plus the dataset's preset and seed. Returns ``mask`` (H, W) int32,
    an object index per pixel (-1: ground, sky, buildings, poles), and ``tokens`` with
    ``tokens[i]`` the instance token of object ``i`` (objects never annotated have no
    instance record).
    """
    spec = get_preset(preset)
    names = scene_names(spec)
    if scene_name not in names:
        raise ValueError(f"scene {scene_name!r} is not in preset {preset} ({', '.join(names)})")
    scene = names.index(scene_name)
    mask = frame_instance_mask(spec, seed, scene, timestamp, channel)
    world = scene_world(seed, scene, spec)
    return mask, [
        make_token(seed, spec.name, "instance", scene, a) for a in range(len(world.actors))
    ]
