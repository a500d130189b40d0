"""Stage ``make-demo-data``: write the synthetic driving world to a folder in nuScenes or
KITTI format (see ``datasets/synthetic/README.md``).

A stamp file records what was written; asking again for the same preset, seed, format and
generator version returns at once, anything else into a non-empty folder needs ``overwrite``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bevkd.pipeline.errors import DataError

STAMP = ".bevkd-synthetic.json"
GENERATOR_VERSION = 1  # bump when the world or the writers change what they write
# Top-level entries each format writes (what overwrite removes).
WRITTEN = {
    "nuscenes": ("v1.0-trainval", "samples", "sweeps", "maps"),
    "kitti": ("object", "raw"),
    "waymo": ("training", "validation"),  # {split}/{component}/{segment}.parquet
}


def run(
    out: str | Path,
    preset: str = "demo",
    seed: int = 0,
    fmt: str = "nuscenes",
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write preset ``preset`` of the world with ``seed`` as ``fmt`` under ``out``; returns
    the dataset root (the nuScenes dataroot, or the folder holding ``object/`` and ``raw/``)."""
    from bevkd.datasets.synthetic import FORMATS, PRESETS, generate

    if preset not in PRESETS:
        raise DataError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    root = Path(out)
    wanted = {"preset": preset, "seed": seed, "format": fmt, "generator_version": GENERATOR_VERSION}
    stamp = root / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return root
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise DataError(
                f"{root} is not empty and holds no {preset}/{fmt} dataset with seed {seed}; "
                "choose an empty folder or pass --overwrite to replace what the generator writes there"
            )
        stamp.unlink(missing_ok=True)
        for name in (name for names in WRITTEN.values() for name in names):
            if (root / name).is_dir():
                shutil.rmtree(root / name)
    generate(root, preset=preset, seed=seed, fmt=fmt, progress=progress)
    stamp.write_text(json.dumps(wanted, indent=1) + "\n")
    return root
