"""The entry point: write the synthetic world to disk in nuScenes, KITTI or Waymo v2 format.

Frames are rendered in chunks, in worker processes when there are many; every frame's
randomness is seeded from (seed, scene, frame), so the output does not depend on how the
work was split.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bevkd.datasets.synthetic.presets import get_preset

FORMATS = ("nuscenes", "kitti", "waymo")
CHUNK = 6  # frames per task
PARALLEL_ABOVE = 40  # frames: smaller jobs run in this process (worker start-up costs ~1 s)


def generate(
    root: Path | str,
    preset: str = "demo",
    seed: int = 0,
    fmt: str = "nuscenes",
    workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Write preset ``preset`` of the world with ``seed`` under ``root`` in format ``fmt``
    ("nuscenes": ``root`` is the devkit's dataroot with ``v1.0-trainval/``; "kitti":
    ``root/object`` and ``root/raw``; "waymo": ``root/{training,validation}/<component>/``).
    Same arguments, same bytes. Returns ``root``.

    ``workers``: processes to render with (default: up to 2, one per core, for large jobs).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    spec = get_preset(preset)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "nuscenes":
        from bevkd.datasets.synthetic.nuscenes_export import export_nuscenes

        export_nuscenes(root, spec, seed, workers, progress)
    elif fmt == "kitti":
        from bevkd.datasets.synthetic.kitti_export import export_kitti

        export_kitti(root, spec, seed, workers, progress)
    else:
        from bevkd.datasets.synthetic.waymo_export import export_waymo

        export_waymo(root, spec, seed, workers, progress)
    return root


def run_chunks(
    task: Callable[..., Any],
    chunks: Sequence[tuple[Any, ...]],
    sizes: Sequence[int],
    workers: int | None,
    progress: bool,
    label: str,
) -> Iterator[Any]:
    """Run ``task(*chunk)`` for every chunk, yielding results as they finish, with a tqdm bar
    counting ``sizes`` (frames per chunk)."""
    total = sum(sizes)
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if total > PARALLEL_ABOVE else 1
    bar = tqdm(total=total, unit="frame", desc=label, disable=not progress)
    try:
        if workers <= 1:
            for chunk, size in zip(chunks, sizes, strict=True):
                yield task(*chunk)
                bar.update(size)
            return
        # spawn: workers start clean, whatever threads the caller (e.g. torch) has running.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {
                pool.submit(task, *chunk): size for chunk, size in zip(chunks, sizes, strict=True)
            }
            try:
                for future in as_completed(futures):
                    yield future.result()
                    bar.update(futures[future])
            except BaseException:
                # A failed frame (or Ctrl-C) stops the job: drop what has not started.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        bar.close()


def frame_chunks(scenes: Sequence[int], frames_per_scene: int) -> list[tuple[int, list[int]]]:
    """(scene, frame indices) tasks of at most CHUNK frames, scene by scene."""
    out = []
    for scene in scenes:
        for start in range(0, frames_per_scene, CHUNK):
            out.append((scene, list(range(start, min(start + CHUNK, frames_per_scene)))))
    return out
