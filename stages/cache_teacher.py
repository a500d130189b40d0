"""Stage one: run the teachers once over the chosen frames and write the teacher store.

The shard (a block of whole frames) is the unit of work: one dask task per unwritten shard,
retried on failure, writing its frames whole and then marking the shard written. A rerun
after a crash skips written shards, so the finished store is the one an uninterrupted run
gives. Teachers are loaded once per worker process.

This module runs the shards: :func:`run`, the shard task, and the in-process and dask pools.
What the store holds is planned in :mod:`bevkd.stages.cache_plan` (frames, contract); whether
an existing store may be resumed, repaired or is already finished is decided in
:mod:`bevkd.stages.cache_resume`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from bevkd.datasets.frame import Frame
from bevkd.pipeline.config import Config, from_dict, to_dict
from bevkd.pipeline.errors import BevkdError
from bevkd.stages import teacher_runner
from bevkd.stages.cache_plan import plan_task, select_frames
from bevkd.stages.cache_resume import create_store, finished_by


@dataclass(frozen=True)
class CacheResult:
    url: str
    frames: int
    shards_written: int
    skipped: dict[int, str]
    seconds: float
    # wall seconds per phase: "prepare" (frames, contract, store; with dask, the wait for the
    # workers), "shards" (the shard tasks), "finalize"; and "forward": the teachers' forwards
    # inside the shard tasks, summed over worker processes (each runs one forward at a time)
    phases: dict[str, float] = field(default_factory=dict)
    processes: int = 1  # worker processes that ran shard tasks


def prepare_store(
    cfg: Config,
    frames: list[Frame],
    resume: bool = True,
    repair: bool = False,
    retry_skipped: bool = False,
) -> tuple[Any, list]:
    """Plan the store in this process and create it (or reopen it to resume), as :func:`run`
    does; returns its writer and the unwritten shards' :func:`shard_task` arguments
    ``(shard id, frames, first frame index)``."""
    contract, teachers = plan_task(to_dict(cfg), frames, cfg.cache.torch_threads)
    return create_store(cfg, frames, contract, teachers, resume, repair, retry_skipped)


def shard_task(
    cfg_dict: dict,
    url: str,
    shard_id: int,
    frames: list[Frame],
    first: int,
    storage_options: dict | None,
    torch_threads: int = 0,
) -> tuple[int, float]:
    """Load one shard's frames, run the teachers over them and write the shard (a dask task, or
    a job of the one-process pool). Idempotent: a shard already marked written is skipped.

    Tasks run concurrently in threads; only the forward holds the process's device lock
    (:data:`teacher_runner.DEVICE_LOCK`), so loading and writing overlap another task's forward.
    ``torch_threads``: torch intra-op threads for this process (0 keeps torch's setting).
    Returns the frames written and the seconds the teachers' forward took.
    """
    from bevkd.pipeline.cluster import io_threads, prepare_process, task_device
    from bevkd.storage.retry import use_config
    from bevkd.storage.writer import ShardAlreadyWritten, StoreWriter

    prepare_process(torch_threads)
    cfg = from_dict(Config, cfg_dict)
    use_config(cfg)
    writer = StoreWriter.reopen(url, storage_options)
    writer.threads = io_threads()
    if writer.is_written(shard_id):
        return 0, 0.0
    samples, skipped = teacher_runner.load_shard(cfg, frames, first)
    arrays, boxes, forward = teacher_runner.forward_shard(
        cfg, samples, cfg.cache.teachers, task_device(), batch_size=cfg.train.batch_size
    )
    try:
        writer.write_shard(shard_id, arrays, boxes, skipped)
    except ShardAlreadyWritten:  # another writer of this store (a concurrent run on object
        return 0, forward  # storage) finished it first: it wrote these same frames
    return len(frames) - len(skipped), forward


def run(
    cfg: Config, resume: bool = True, repair: bool = False, retry_skipped: bool = False
) -> CacheResult:
    """Cache ``cfg.cache.teachers`` over ``cfg.cache.splits`` into ``cfg.store.url``. A store
    this config already finished (:func:`finished_by`) is left as it is: no teacher loads.

    ``repair``: verify the store first and rewrite what is bad (array metadata, the frame
    index, and every shard with a corrupt, missing or NaN chunk). ``retry_skipped``: rewrite
    the shards that hold skipped frames, e.g. once their input files are fixed. Both resume an
    existing store of the same teachers, settings, frames and code, and finalize it again.
    """
    from bevkd.pipeline.cluster import ClusterStarter
    from bevkd.storage.remote import check_writable
    from bevkd.storage.retry import use_config
    from bevkd.storage.writer import writer_lock

    started = time.perf_counter()
    rewrite = repair or retry_skipped
    if resume and not rewrite and (done := finished_by(cfg)) is not None:
        seconds = time.perf_counter() - started
        return CacheResult(cfg.store.url, len(done), 0, done.skipped, seconds, {}, 0)
    if rewrite and not resume:
        raise BevkdError("--repair and --retry-skipped work on an existing store; drop --no-resume")
    storage_options = dict(cfg.store.storage_options) or None
    use_config(cfg)  # the store's requests retry under io.*
    check_writable(cfg.store.url, storage_options)  # before any teacher loads
    in_process = cfg.cache.n_workers == 0 and not cfg.cache.scheduler
    # A LocalCluster's workers spawn and import torch while this process plans the store.
    with (
        writer_lock(cfg.store.url, storage_options),
        contextlib.nullcontext()
        if in_process
        else ClusterStarter(
            cfg.cache.scheduler,
            cfg.cache.n_workers,
            cfg.cache.threads_per_worker,
            cfg.cache.torch_threads,
        ) as cluster,
    ):
        cfg_dict = to_dict(cfg)
        frames = select_frames(cfg)
        if cluster is None:
            writer, tasks = prepare_store(cfg, frames, resume, repair, retry_skipped)
        else:
            client, torch_threads = cluster.result()
            planned = client.submit(plan_task, cfg_dict, frames, torch_threads, pure=False)
            contract, teachers = planned.result()
            writer, tasks = create_store(
                cfg, frames, contract, teachers, resume, repair, retry_skipped
            )
        prepared = time.perf_counter()
        bar = tqdm(
            total=sum(len(t[1]) for t in tasks), unit="frame", desc="cache-teacher", smoothing=0.1
        )
        if cluster is None:
            forward = _run_in_process(cfg, cfg_dict, tasks, storage_options, bar)
            processes = 1
        else:
            forward = _run_distributed(
                cfg, cfg_dict, tasks, storage_options, bar, client, torch_threads
            )
            processes = len(client.scheduler_info().get("workers", {})) or 1
        bar.close()
    cached = time.perf_counter()
    summary = writer.finalize()
    done = time.perf_counter()
    skipped = (
        {int(k): v for k, v in summary.get("skipped", {}).items()}
        if isinstance(summary, dict)
        else {}
    )
    phases = {
        "prepare": prepared - started,
        "shards": cached - prepared,
        "finalize": done - cached,
        "forward": forward,
    }
    return CacheResult(
        cfg.store.url, len(frames), len(tasks), skipped, done - started, phases, processes
    )


def _run_in_process(
    cfg: Config, cfg_dict: dict, tasks: list, storage_options: dict | None, bar: tqdm
) -> float:
    """The same shard tasks as the dask path, on :func:`~bevkd.pipeline.cluster.tasks_per_process`
    threads of this process (no retries: the first failure stops the run; a rerun resumes).
    Returns the seconds spent in teacher forwards."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    from bevkd.pipeline.cluster import tasks_per_process

    with ThreadPoolExecutor(tasks_per_process(cfg.cache.threads_per_worker)) as pool:
        futures = {
            pool.submit(
                shard_task, cfg_dict, cfg.store.url, shard_id, shard_frames, first,
                storage_options, cfg.cache.torch_threads,
            ): shard_id
            for shard_id, shard_frames, first in tasks
        }  # fmt: skip
        pending = set(futures)
        forward = 0.0
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise BevkdError(
                        f"shard {futures[future]} failed: {future.exception()}"
                    ) from future.exception()
                written, seconds = future.result()
                bar.update(written)
                forward += seconds
    return forward


def _run_distributed(
    cfg: Config,
    cfg_dict: dict,
    tasks: list,
    storage_options: dict | None,
    bar: tqdm,
    client: Any,
    torch_threads: int,
) -> float:
    """Submit one task per shard; returns the seconds spent in teacher forwards (summed over
    the workers)."""
    from distributed import as_completed

    from bevkd.pipeline.cluster import task_resources

    resources = task_resources(client)
    futures = {
        client.submit(
            shard_task, cfg_dict, cfg.store.url, shard_id, shard_frames, first, storage_options,
            torch_threads,
            retries=cfg.cache.retries, resources=resources, pure=False,
        ): shard_id
        for shard_id, shard_frames, first in tasks
    }  # fmt: skip
    forward = 0.0
    for future in as_completed(futures):
        try:
            written, seconds = future.result()
            bar.update(written)
            forward += seconds
        except Exception as exc:  # a shard failed after its retries: say which, then stop
            for other in futures:
                other.cancel()
            raise BevkdError(
                f"shard {futures[future]} failed after {cfg.cache.retries} retries: {exc}"
            ) from exc
    return forward
