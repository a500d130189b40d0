"""Write a preset of the world in KITTI layouts: ``object/{training,testing}`` + ``ImageSets``
and raw drives under ``raw/`` (unlabeled), with the raw split lists CMKD uses.

Scenes: the preset's train and val scenes give object training frames (their keyframes;
ImageSets train / val keep the two scene sets apart), the next ``kitti_test_scenes`` scenes
give object testing frames, the next ``kitti_raw_drives`` scenes give raw drives (every
keyframe and sweep, in order).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import numpy as np

from bevkd.datasets.synthetic import kitti_rig as kr
from bevkd.datasets.synthetic.generate import CHUNK, run_chunks
from bevkd.datasets.synthetic.kitti_frames import instance_mask, write_object_frame, write_raw_frame
from bevkd.datasets.synthetic.presets import Preset, get_preset
from bevkd.datasets.synthetic.world import frame_schedule

RAW_DATE = "2011_09_30"
RAW_START = dt.datetime(2011, 9, 30, 12, 0, 0)
CALIB_TIME = "30-Sep-2011 11:00:00"

# (what, scene, frame, where): what is "train", "val", "test" (object frames, where = the
# 6-digit id) or "raw" (where = "<drive folder>/<10-digit index>").
Job = tuple[str, int, int, str]


def drive_name(drive: int) -> str:
    return f"{RAW_DATE}_drive_{drive + 1:04d}_sync"


def plan(preset: Preset) -> list[Job]:
    """Every KITTI frame the preset writes, in id order."""
    times, is_key = frame_schedule(preset.keyframes, preset.sweeps_between)
    keyframes = [i for i, key in enumerate(is_key) if key]
    jobs: list[Job] = []
    for scene in range(preset.scenes):
        what = "train" if scene < preset.train_scenes else "val"
        jobs += [(what, scene, f, "") for f in keyframes]
    jobs = [(what, scene, f, f"{i:06d}") for i, (what, scene, f, _) in enumerate(jobs)]
    first_test = preset.scenes
    tests = [
        (scene, f)
        for scene in range(first_test, first_test + preset.kitti_test_scenes)
        for f in keyframes
    ]
    jobs += [("test", scene, f, f"{i:06d}") for i, (scene, f) in enumerate(tests)]
    first_raw = first_test + preset.kitti_test_scenes
    for drive in range(preset.kitti_raw_drives):
        jobs += [
            ("raw", first_raw + drive, f, f"{drive_name(drive)}/{f:010d}")
            for f in range(len(times))
        ]
    return jobs


def _write_chunk(root: Path, seed: int, preset: Preset, jobs: list[Job]) -> list[str]:
    types: list[str] = []
    for what, scene, frame, where in jobs:
        if what == "raw":
            drive, index = where.split("/")
            types += write_raw_frame(
                root / "raw" / RAW_DATE / drive, int(index), seed, scene, frame, preset
            )
        else:
            base = root / "object" / ("testing" if what == "test" else "training")
            types += write_object_frame(
                base, where, seed, scene, frame, preset, labelled=what != "test"
            )
    return types


def _make_folders(root: Path, preset: Preset) -> None:
    for subset, folders in (
        ("training", ("image_2", "velodyne", "calib", "label_2")),
        ("testing", ("image_2", "velodyne", "calib")),
    ):
        for folder in folders:
            (root / "object" / subset / folder).mkdir(parents=True, exist_ok=True)
    (root / "object" / "ImageSets").mkdir(parents=True, exist_ok=True)
    for drive in range(preset.kitti_raw_drives):
        for sensor in ("image_02", "velodyne_points"):
            (root / "raw" / RAW_DATE / drive_name(drive) / sensor / "data").mkdir(
                parents=True, exist_ok=True
            )
    (root / "raw" / "calib").mkdir(parents=True, exist_ok=True)


def _write_raw_metadata(root: Path, preset: Preset) -> None:
    """Per-date calibration (raw format and CMKD's object format) and per-drive timestamps."""
    date_dir = root / "raw" / RAW_DATE
    for name, text in kr.raw_calib_texts(CALIB_TIME).items():
        (date_dir / name).write_text(text)
    (root / "raw" / "calib" / f"{RAW_DATE}.txt").write_text(kr.object_calib_text())
    times, _ = frame_schedule(preset.keyframes, preset.sweeps_between)
    for drive in range(preset.kitti_raw_drives):
        start = RAW_START + dt.timedelta(minutes=10 * drive)
        stamps = [start + dt.timedelta(seconds=float(t - times[0])) for t in times]
        text = "".join(f"{s:%Y-%m-%d %H:%M:%S.%f}000\n" for s in stamps)
        folder = date_dir / drive_name(drive)
        (folder / "image_02" / "timestamps.txt").write_text(text)
        for name in ("timestamps.txt", "timestamps_start.txt", "timestamps_end.txt"):
            (folder / "velodyne_points" / name).write_text(text)


def _write_image_sets(root: Path, jobs: list[Job]) -> None:
    """Lists in the formats of KITTI/CMKD ImageSets: ids one per line (no final newline, like
    train.txt), raw lines ``<date>/<drive>/image_02/data/<frame>`` (final newline)."""
    folder = root / "object" / "ImageSets"
    ids = {
        what: [where for w, _, _, where in jobs if w == what] for what in ("train", "val", "test")
    }
    for what, lines in ids.items():
        (folder / f"{what}.txt").write_text("\n".join(lines))
    raw = [
        f"{RAW_DATE}/{where.split('/')[0]}/image_02/data/{where.split('/')[1]}"
        for w, _, _, where in jobs
        if w == "raw"
    ]
    (folder / "eigen_clean.txt").write_text("".join(line + "\n" for line in raw))
    (folder / "kitti_train_and_eigen_clean.txt").write_text(
        "".join(line + "\n" for line in ids["train"] + raw)
    )


def export_kitti(
    root: Path, preset: Preset, seed: int, workers: int | None, progress: bool
) -> Counter[str]:
    """Render every frame and write all lists and calibration; returns label counts by type."""
    _make_folders(root, preset)
    jobs = plan(preset)
    # Chunks never mix scenes, so each worker renders a scene's frames from one cached world.
    chunks: list[list[Job]] = []
    for job in jobs:
        if chunks and chunks[-1][0][1] == job[1] and len(chunks[-1]) < CHUNK:
            chunks[-1].append(job)
        else:
            chunks.append([job])
    counts: Counter[str] = Counter()
    for types in run_chunks(
        _write_chunk,
        [(root, seed, preset, c) for c in chunks],
        [len(c) for c in chunks],
        workers,
        progress,
        "KITTI frames",
    ):
        counts.update(types)
    _write_raw_metadata(root, preset)
    _write_image_sets(root, jobs)
    return counts


def render_kitti_instance_mask(preset: str, seed: int, frame: str) -> tuple[np.ndarray, list[int]]:
    """Per-pixel object index (H, W) int32 (-1: ground, sky, buildings) of a stored KITTI
    image, by re-rendering it, and the object index of each line of its label file (in file
    order). ``frame``: ``"training/<id>"``, ``"testing/<id>"`` or a raw list line
    ``"<date>/<drive>/image_02/data/<index>"``."""
    spec = get_preset(preset)
    wanted = _job_key(frame)
    kinds = {"training": ("train", "val"), "test": ("test",), "raw": ("raw",)}[wanted[0]]
    job = next((j for j in plan(spec) if j[0] in kinds and j[3] == wanted[1]), None)
    if job is None:
        raise ValueError(f"preset {preset} has no KITTI frame {frame!r}")
    mask, lines = instance_mask(seed, job[1], job[2], spec)
    return mask, [ln.actor for ln in lines]


def _job_key(frame: str) -> tuple[str, str]:
    parts = frame.split("/")
    if parts[0] in ("training", "testing") and len(parts) == 2:
        return ("training" if parts[0] == "training" else "test"), parts[1]
    if len(parts) == 5 and parts[2:4] == ["image_02", "data"]:
        return "raw", f"{parts[1]}/{parts[4]}"
    raise ValueError(
        f"not a KITTI frame name: {frame!r} (use training/<id>, testing/<id> or a raw list line)"
    )
