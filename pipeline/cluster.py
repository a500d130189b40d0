"""dask.distributed set-up for stage one: a LocalCluster by default, or an existing scheduler.

On a real cluster, start one worker per GPU with ``--resources GPU=1`` so that tasks asking
for ``resources={"GPU": 1}`` get a GPU each.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def dask_client(
    scheduler: str = "", n_workers: int = 2, threads_per_worker: int = 1
) -> Iterator[Any]:
    """Yield a ``distributed.Client``; a LocalCluster of processes is started (and closed) when
    ``scheduler`` is empty. Worker processes keep torch to one thread each, so two workers on
    two cores do not oversubscribe."""
    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address=None,
        env={
            "OMP_NUM_THREADS": str(threads_per_worker),
            "MKL_NUM_THREADS": str(threads_per_worker),
        },
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def task_resources(client: Any) -> dict[str, float] | None:
    """``{"GPU": 1}`` when every worker of the cluster advertises a GPU resource, else None."""
    workers = client.scheduler_info().get("workers", {})
    if workers and all("GPU" in w.get("resources", {}) for w in workers.values()):
        return {"GPU": 1}
    return None
