"""Small real teachers and private dataset copies for the stage tests.

The teachers are the real LiDAR teacher (spconv voxel encoder) and label encoder at tiny
channel counts, with seeded random weights saved as real checkpoints: caching does not care
whether a teacher is any good, only that what it writes is what it computes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from nuscenes_copy import private_copy

from bevkd.pipeline.config import Config, load_config

SMALL_MODEL = [
    "model.sparse_channels=[8, 16, 16, 16]",
    "model.bev_channels=16",
    "model.head_channels=16",
    "model.label_encoder_channels=16",
    "train.num_workers=0",
    "train.batch_size=2",
]


def copy_dataset(source: Path, target: Path, own_lidar: bool = False) -> Path:
    """A private copy of the tiny dataset; ``own_lidar`` copies LIDAR_TOP files so they can be
    damaged without touching the session fixture."""
    private_copy(source, target)
    if own_lidar:
        (target / "samples").unlink()
        shutil.copytree(source / "samples", target / "samples", symlinks=False)
    return target


def small_config(root: Path, *overrides: str) -> Config:
    return load_config(None, [f"data.root={root}", *SMALL_MODEL, *overrides])


def make_teachers(root: Path, out: Path) -> tuple[Path, Path]:
    """Seeded random LiDAR teacher and label encoder checkpoints; returns their paths."""
    from bevkd.models.builders import build_teacher
    from bevkd.models.checkpoint import save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    lidar_cfg = small_config(root, "model.kind=lidar")
    lidar = save_checkpoint(out / "lidar.pt", build_teacher(lidar_cfg), lidar_cfg)
    label_cfg = small_config(root, "model.kind=label_encoder", f"model.checkpoint={lidar}")
    label = save_checkpoint(out / "label.pt", build_teacher(label_cfg), label_cfg)
    return lidar, label


def cache_config(
    root: Path, teachers: tuple[Path, Path], url: Path | str, *overrides: str
) -> Config:
    lidar, label = teachers
    return small_config(
        root,
        "cache.teachers=[lidar, label_encoder]",
        f"cache.lidar_checkpoint={lidar}",
        f"cache.label_encoder_checkpoint={label}",
        "cache.lidar_bev_scales=[1, 2]",
        "cache.n_workers=0",
        "store.shard_size=2",
        f"store.url={url}",
        *overrides,
    )


def cached_world(source: Path, base: Path, *overrides: str) -> tuple[Path, tuple[Path, Path], Path]:
    """A private copy of ``source`` under ``base``, tiny random teachers, and a real store
    cached from them (``overrides`` on :func:`cache_config`): (root, teachers, store path)."""
    from bevkd.stages import cache_teacher

    root = copy_dataset(source, base / "data")
    teachers = make_teachers(root, base / "teachers")
    url = base / "store.zarr"
    cache_teacher.run(cache_config(root, teachers, url, *overrides))
    return root, teachers, url


def lidar_files(root: Path) -> list[Path]:
    return sorted((root / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))


__all__ = [
    "benchmark_module",
    "cache_config",
    "cached_world",
    "copy_dataset",
    "lidar_files",
    "make_teachers",
    "small_config",
]


def benchmark_module(name: str) -> Iterator[Any]:
    """A benchmarks/ script imported as a module (they import each other by file name), for a
    module-scoped fixture: ``yield from benchmark_module("few_labels")``."""
    import importlib
    import sys

    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(folder)
