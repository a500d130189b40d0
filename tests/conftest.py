"""Shared fixtures. Datasets are generated once per session by the real synthetic world."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_nuscenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset in real nuScenes on-disk format (preset 'tiny', seed 0)."""
    from bevkd.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("tiny_nuscenes")
    generate(root, preset="tiny", seed=0, fmt="nuscenes")
    return root


@pytest.fixture(scope="session")
def tiny_kitti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny synthetic world in KITTI object + raw layout."""
    from bevkd.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("tiny_kitti")
    generate(root, preset="tiny", seed=0, fmt="kitti")
    return root


@pytest.fixture(scope="session")
def tiny_waymo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny synthetic world as a Waymo Open Dataset v2 (parquet) root."""
    from bevkd.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("tiny_waymo")
    generate(root, preset="tiny", seed=0, fmt="waymo")
    return root


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A real S3 API on loopback with a bucket ``bevkd-test``, for the session
    (:func:`bevkd.storage.faults.moto_s3`)."""
    from bevkd.storage.faults import moto_s3

    with moto_s3("bevkd-test") as options:
        yield options
