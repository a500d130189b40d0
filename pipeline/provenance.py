"""Provenance: what made an artifact (code version, packages, files), recorded beside it.

A leaf module: standard library only (package versions through importlib.metadata).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import subprocess
from pathlib import Path
from typing import Any

_PACKAGES = ("bevkd", "torch", "spconv", "zarr", "numcodecs", "numpy", "dask", "nuscenes-devkit")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_lines(items: list[str]) -> str:
    """Order-sensitive hash of a list of strings (e.g. the frame-token list of a store)."""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def code_version() -> dict[str, Any]:
    """The git commit of the source tree and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": True}
    return {"commit": commit, "dirty": dirty}


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def environment() -> dict[str, Any]:
    """Code version, package versions and a timestamp, for any artifact's metadata."""
    return {"code": code_version(), "packages": package_versions(), "created_at": now_iso()}
