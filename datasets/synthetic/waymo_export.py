"""Write a preset of the world as a Waymo Open Dataset v2 (parquet) root, laid out as the
official bucket: ``{root}/{split}/{component}/{segment}.parquet``.

Splits: ``training`` holds the preset's train scenes, ``validation`` its val scenes, one
segment per scene with every keyframe and sweep as a frame (sweeps have no ``lidar_box`` rows:
unlabelled frames). Components: ``vehicle_pose``, ``lidar``, ``lidar_pose``,
``lidar_calibration``, ``camera_image``, ``camera_calibration``, ``lidar_box``; what is in
them: :mod:`bevkd.datasets.synthetic.waymo_frames`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bevkd.datasets import waymo_schema as ws
from bevkd.datasets.synthetic.generate import frame_chunks, run_chunks
from bevkd.datasets.synthetic.presets import Preset
from bevkd.datasets.synthetic.waymo_frames import (
    FrameRows,
    calibration_rows,
    render,
    segment_name,
)
from bevkd.datasets.synthetic.world import frame_schedule

PER_FRAME = (ws.VEHICLE_POSE, ws.LIDAR, ws.LIDAR_POSE, ws.CAMERA_IMAGE, ws.LIDAR_BOX)
# One frame per row group where rows are large, so that a reader's filter on the timestamp
# decodes only that frame's range image or JPEG.
ROW_GROUP_ROWS = {ws.LIDAR: 1, ws.LIDAR_POSE: 1, ws.CAMERA_IMAGE: 1}


def split_of(preset: Preset, scene: int) -> str:
    return "training" if scene < preset.train_scenes else "validation"


def _render_chunk(seed: int, scene: int, frames: list[int], preset: Preset) -> list[FrameRows]:
    return [render(seed, scene, f, preset) for f in frames]


def export_waymo(
    root: Path, preset: Preset, seed: int, workers: int | None, progress: bool
) -> None:
    """Render every frame; write each segment's files once all its frames are in."""
    times, _ = frame_schedule(preset.keyframes, preset.sweeps_between)
    scenes = list(range(preset.scenes))
    chunks = frame_chunks(scenes, len(times))
    pending: dict[int, list[FrameRows]] = {s: [] for s in scenes}
    tasks = [(seed, scene, frames, preset) for scene, frames in chunks]
    for rows in run_chunks(
        _render_chunk, tasks, [len(c[1]) for c in chunks], workers, progress, "Waymo frames"
    ):
        scene = rows[0].scene
        pending[scene].extend(rows)
        if len(pending[scene]) == len(times):
            write_segment(
                root, seed, scene, preset, sorted(pending.pop(scene), key=lambda r: r.frame)
            )


def write_segment(
    root: Path, seed: int, scene: int, preset: Preset, frames: list[FrameRows]
) -> None:
    """Every component file of one segment."""
    name = segment_name(seed, scene)
    base = root / split_of(preset, scene)
    tables: dict[str, dict[str, list[Any]]] = {
        component: {column: [] for column in ws.COLUMNS[component]} for component in PER_FRAME
    }
    for frame in frames:
        for component, columns in frame.rows.items():
            for column, values in columns.items():
                tables[component][column].extend(values)
    for component, row in calibration_rows(seed, scene, preset).items():
        tables[component] = {column: [row[column]] for column in ws.COLUMNS[component]}
    for component, columns in tables.items():
        folder = base / component
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table(columns, schema=ws.schema(component))
        pq.write_table(
            table, folder / f"{name}.parquet", row_group_size=ROW_GROUP_ROWS.get(component)
        )
