"""dask.distributed set-up for stage one: a LocalCluster by default, or an existing scheduler.

Each worker process runs ``threads_per_worker`` shard tasks at once; their teacher forwards take
turns on the worker's device (a per-process lock), so one task's loading and writing overlap
another's forward. On a GPU cluster, start one worker per GPU with ``--resources GPU=1``
(``dask-cuda`` does this and sets each worker's ``CUDA_VISIBLE_DEVICES``): the tasks then ask for
an equal share of a GPU each, so they only run on GPU workers.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any


def local_cores() -> int:
    """CPU cores this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def io_threads() -> int:
    """Threads for a shard's loading and encoding phases (the cores, at most 8): image
    decoding, file reads, numpy loops and zstd release the GIL."""
    return min(8, local_cores())


def tasks_per_process(threads_per_worker: int) -> int:
    """Shard tasks in flight per process: ``threads_per_worker``, or for 0, 2 with CUDA (the
    GPU runs one task's forward while another loads or writes) and 1 on CPU, where the
    forward's intra-op threads want every core and lose more to preemption than overlap wins."""
    import torch

    if threads_per_worker > 0:
        return threads_per_worker
    return 2 if torch.cuda.is_available() else 1


def local_torch_threads(n_workers: int, torch_threads: int = 0) -> int:
    """Torch intra-op threads per LocalCluster worker: ``torch_threads``, or else this machine's
    cores shared out between the workers (at least one each)."""
    if torch_threads > 0:
        return torch_threads
    return max(1, local_cores() // max(1, n_workers))


@contextmanager
def dask_client(
    scheduler: str = "", n_workers: int = 1, threads_per_worker: int = 2, torch_threads: int = 0
) -> Iterator[tuple[Any, int]]:
    """Yield ``(client, torch_threads)``: a ``distributed.Client`` and the torch intra-op thread
    count its tasks should set (0: leave the workers' own).

    With an empty ``scheduler`` a LocalCluster of ``n_workers`` processes is started (and
    closed), its workers' OpenMP/MKL pools sized to :func:`local_torch_threads`.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler)
        try:
            yield client, torch_threads
        finally:
            client.close()
        return
    import dask

    threads = local_torch_threads(n_workers, torch_threads)
    # The nanny exports these before spawning a worker; its default MALLOC_TRIM_THRESHOLD_
    # also freezes glibc's mmap threshold at 128 KiB (see prepare_process), so it goes.
    environ = {
        "MALLOC_TRIM_THRESHOLD_": None,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
    }
    settings: dict[str, Any] = {
        f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in environ.items()
    }
    # The worker's statistical profiler wakes every 10 ms for the GIL, preempting the forward's
    # intra-op threads (a worker's forward measured ~7% slower than the same in-process).
    settings["distributed.worker.profile.enabled"] = False
    with dask.config.set(settings):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=tasks_per_process(threads_per_worker),
            processes=True,
            dashboard_address=None,
        )
    client = Client(cluster)
    try:
        yield client, threads
    finally:
        client.close()
        cluster.close()


class ClusterStarter:
    """:func:`dask_client` entered in a background thread, so that worker processes spawn and
    import torch while the caller does other work; :meth:`result` waits for ``(client,
    torch_threads)``. Use as a context manager: leaving it closes the client and cluster."""

    def __init__(self, *args: Any) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._stack = ExitStack()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dask-start")
        self._future = self._pool.submit(self._stack.enter_context, dask_client(*args))

    def result(self) -> tuple[Any, int]:
        return self._future.result()

    def __enter__(self) -> ClusterStarter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._future.exception()  # wait for the start to finish, failed or not
        finally:
            self._stack.close()
            self._pool.shutdown()


_PREPARED = False
_PREPARING = threading.Lock()

# glibc mallopt parameters, and values at the top of glibc's own dynamic ranges.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 2 * _MMAP_THRESHOLD


def prepare_process(torch_threads: int = 0) -> None:
    """Once per process, before its first shard task: torch's intra-op thread count (when
    ``torch_threads`` > 0) and, in a dask worker on glibc, sane malloc thresholds.

    A dask nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``. Setting any malloc
    threshold switches off glibc's sliding mmap threshold, so every array over 128 KiB is
    mmapped and unmapped again, page faults and all: measured here, a worker's teacher forward
    over one demo shard took 5.4 s (3.6 s of it system time) against 2.4 s after raising the
    thresholds to where glibc's sliding ones end. Workers started by ``dask worker`` or
    ``dask-cuda`` get the same fix, since it runs inside the task's process.
    """
    import torch

    global _PREPARED
    with _PREPARING:
        if torch_threads and torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
        if _PREPARED:
            return
        _PREPARED = True
        if not _in_dask_worker() or not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:  # not glibc (musl, ...): nothing to tune
            return
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def _in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def task_resources(client: Any) -> dict[str, float] | None:
    """When every worker advertises a ``GPU`` resource: the share of one GPU a shard task asks
    for, so that a worker's task threads can all run on its GPU(s). Else None (no constraint)."""
    workers = client.scheduler_info().get("workers", {})
    if not workers or not all("GPU" in w.get("resources", {}) for w in workers.values()):
        return None
    share = min(w["resources"]["GPU"] / max(1, w.get("nthreads", 1)) for w in workers.values())
    return {"GPU": share}


def task_device() -> Any:
    """The device a shard task runs its teachers on.

    CPU without CUDA. In a LocalCluster worker (named 0, 1, ...), GPU ``name % device_count``,
    so local workers spread over the machine's GPUs; elsewhere the current CUDA device (a
    ``dask-cuda`` worker sees only its own GPU).
    """
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    name = ""
    if _in_dask_worker():
        from distributed import get_worker

        name = str(get_worker().name)
    if name.isdigit():
        return torch.device("cuda", int(name) % torch.cuda.device_count())
    return torch.device("cuda", torch.cuda.current_device())
