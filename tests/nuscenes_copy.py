"""A private view of the shared tiny nuScenes dataset, so tests that write the index (or change
tables) leave the session fixture's files as generated."""

from __future__ import annotations

import shutil
from pathlib import Path

VERSION = "v1.0-trainval"
INDEX_FILE = "bevkd_index.json"


def private_copy(source: Path, target: Path) -> Path:
    """Copy the version folder (tables, a few MB) and link the sensor data; returns ``target``."""
    shutil.copytree(source / VERSION, target / VERSION, ignore=shutil.ignore_patterns(INDEX_FILE))
    for name in ("samples", "sweeps", "maps"):
        if (source / name).exists():
            (target / name).symlink_to((source / name).resolve())
    return target
