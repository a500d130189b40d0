"""dask set-up for stage one: worker environment, thread counts, GPU shares."""

from __future__ import annotations

import os

import torch

from bevkd.pipeline import cluster


class _FakeClient:
    def __init__(self, workers: dict) -> None:
        self._workers = workers

    def scheduler_info(self) -> dict:
        return {"workers": self._workers}


def test_gpu_tasks_ask_for_an_equal_share_of_a_gpu_per_worker_thread() -> None:
    two_threads = {"w1": {"resources": {"GPU": 1}, "nthreads": 2}}
    assert cluster.task_resources(_FakeClient(two_threads)) == {"GPU": 0.5}
    mixed = {**two_threads, "cpu": {"resources": {}, "nthreads": 4}}
    assert cluster.task_resources(_FakeClient(mixed)) is None  # no constraint without GPUs
    assert cluster.task_resources(_FakeClient({})) is None


def test_tasks_per_process_overlaps_only_on_a_gpu() -> None:
    assert cluster.tasks_per_process(3) == 3
    on_gpu = torch.cuda.is_available()
    assert cluster.tasks_per_process(0) == {True: 2, False: 1}[on_gpu]
    assert cluster.local_torch_threads(2, 0) == max(1, cluster.local_cores() // 2)
    assert cluster.local_torch_threads(2, 5) == 5


def _worker_view() -> dict:
    cluster.prepare_process(1)
    return {
        "trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "device": str(cluster.task_device()),
    }


def test_local_cluster_workers_get_sane_malloc_and_thread_settings() -> None:
    # The nanny's default MALLOC_TRIM_THRESHOLD_ made a worker's forward 2x slower (sys time).
    with cluster.dask_client("", n_workers=1, threads_per_worker=1, torch_threads=1) as (
        client,
        threads,
    ):
        assert threads == 1
        seen = client.submit(_worker_view, pure=False).result()
    assert seen["trim"] is None
    assert seen["omp"] == "1" and seen["torch_threads"] == 1
    assert seen["device"] == {True: "cuda:0", False: "cpu"}[torch.cuda.is_available()]
