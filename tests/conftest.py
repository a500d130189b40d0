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
def s3_server() -> Iterator[dict[str, str]]:
    """A real S3 API on loopback: ``moto_server`` on a free port with a bucket ``bevkd-test``.

    Yields the fsspec ``storage_options`` a user's S3 would take (endpoint + credentials);
    the server is stopped after the session.
    """
    import socket
    import subprocess
    import sys
    import time

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on port {port}") from None
                time.sleep(0.1)
        options = {"endpoint_url": endpoint, "key": "test", "secret": "test"}
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        ).create_bucket(Bucket="bevkd-test")
        yield options
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
