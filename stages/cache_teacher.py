"""Stage one: run the teachers once over the chosen frames and write the teacher store.

The shard (a block of whole frames) is the unit of work: one dask task per unwritten shard,
retried on failure, writing its frames whole and then marking the shard written. A rerun
after a crash skips written shards, so the finished store is the one an uninterrupted run
gives. Teachers are loaded once per worker process.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bevkd.datasets.dataset import FrameDataset, load_frames
from bevkd.datasets.frame import Frame
from bevkd.pipeline.config import (
    Config,
    config_sha256,
    config_yaml,
    from_dict,
    save_resolved,
    to_dict,
)
from bevkd.pipeline.errors import BevkdError
from bevkd.stages import teacher_runner


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


def select_frames(cfg: Config) -> list[Frame]:
    """Frames of every split role in ``cache.splits``, in order, ``cache.max_frames`` per role."""
    frames: list[Frame] = []
    for role in cfg.cache.splits:
        chosen = load_frames(cfg, role)
        frames.extend(chosen[: cfg.cache.max_frames] if cfg.cache.max_frames else chosen)
    if not frames:
        raise BevkdError(
            f"cache.splits {list(cfg.cache.splits)} select no frames under {cfg.data.root}"
        )
    return frames


def plan_contract(cfg: Config, frames: list[Frame], device: torch.device | None = None) -> Any:
    """The store contract, with field shapes read off one real forward of every teacher."""
    from bevkd.storage.fields import (
        bev_feature_field,
        box_regression_field,
        boxes_field,
        embedding_field,
        heatmap_field,
    )
    from bevkd.storage.schema import SCHEMA_VERSION, StoreContract

    device = device or torch.device("cpu")
    probe = _first_loadable(cfg, frames)
    overrides = dict(cfg.store.codecs)
    fields = []
    with torch.no_grad():
        for name in cfg.cache.teachers:
            spec = teacher_runner.TEACHER_FIELDS[name]
            model, _, _ = teacher_runner.load_teacher_once(
                teacher_runner.checkpoint_of(cfg, name), device
            )
            out = teacher_runner.forward_frozen(model, [probe], device)
            for src, dst in teacher_runner.wanted_features(
                name, cfg.cache.lidar_bev_scales
            ).items():
                c, h, w = out.features[src].shape[1:]
                make = embedding_field if spec.labeled_only else bev_feature_field
                fields.append(make(dst, c, h, w, codec=overrides.get(dst)))
            if spec.heatmap:
                k, h, w = out.head.heatmap.shape[1:]
                fields.append(
                    heatmap_field(
                        spec.heatmap,
                        k,
                        h,
                        w,
                        codec=overrides.get(spec.heatmap),
                        activation=cfg.cache.heatmap_as,
                    )
                )
                fields.append(
                    box_regression_field(
                        spec.regression, h, w, codec=overrides.get(spec.regression)
                    )
                )
                fields.append(boxes_field(spec.boxes, capacity=cfg.head.max_detections))
    grid = cfg.grid.bev_grid
    return StoreContract(SCHEMA_VERSION, grid, tuple(cfg.classes), tuple(fields))


def _first_loadable(cfg: Config, frames: list[Frame]) -> Any:
    dataset = FrameDataset(frames, cfg.data, train=False)
    errors = []
    for i in range(len(frames)):
        if frames[i].has_label or "label_encoder" not in cfg.cache.teachers:
            try:
                return dataset[i]
            except BevkdError as exc:
                errors.append(str(exc))
                if len(errors) >= 5:
                    break
    raise BevkdError("no loadable labelled frame to size the store's fields: " + "; ".join(errors))


def _plan_task(
    cfg_dict: dict, frames: list[Frame], torch_threads: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The store contract (as a dict) and the teachers' provenance, where the shard tasks run:
    a dask worker loads the teachers here, once, instead of the client and then the worker."""
    from bevkd.pipeline.cluster import prepare_process, task_device

    prepare_process(torch_threads)
    cfg = from_dict(Config, cfg_dict)
    device = task_device()
    contract = plan_contract(cfg, frames, device)
    return contract.to_dict(), teacher_runner.describe_teachers(cfg, cfg.cache.teachers, device)


def prepare_store(cfg: Config, frames: list[Frame], resume: bool = True) -> tuple[Any, list]:
    """Plan the store in this process and create it (or reopen it to resume), as :func:`run`
    does; returns its writer and the unwritten shards' :func:`shard_task` arguments
    ``(shard id, frames, first frame index)``."""
    contract, teachers = _plan_task(to_dict(cfg), frames, cfg.cache.torch_threads)
    return _create_store(cfg, frames, contract, teachers, resume)


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
    from bevkd.pipeline.cluster import prepare_process, task_device
    from bevkd.storage.writer import StoreWriter

    prepare_process(torch_threads)
    cfg = from_dict(Config, cfg_dict)
    writer = StoreWriter.reopen(url, storage_options)
    if writer.is_written(shard_id):
        return 0, 0.0
    samples, skipped = teacher_runner.load_shard(cfg, frames, first)
    arrays, boxes, forward = teacher_runner.forward_shard(
        cfg, samples, cfg.cache.teachers, task_device(), batch_size=cfg.train.batch_size
    )
    writer.write_shard(shard_id, arrays, boxes, skipped)
    return len(frames) - len(skipped), forward


def finished_by(cfg: Config) -> Any | None:
    """The store at ``cfg.store.url`` if it is finalized and was made by exactly this config,
    these teacher checkpoints (sha256) and these frames; None otherwise (the store is then
    created, resumed or refused as usual)."""
    from bevkd.pipeline.provenance import sha256_file, sha256_lines
    from bevkd.storage.reader import open_store
    from bevkd.storage.schema import StoreError

    try:
        store = open_store(cfg.store.url, storage_options=dict(cfg.store.storage_options) or None)
    except StoreError:
        return None
    made = store.provenance
    if not store.finalized or made.get("config_sha256") != config_sha256(cfg):
        return None
    checkpoints = {
        name: sha256_file(teacher_runner.checkpoint_of(cfg, name)) for name in cfg.cache.teachers
    }
    if made.get("checkpoint_sha256") != checkpoints:
        return None
    tokens = [f.token for f in select_frames(cfg)]
    return store if made.get("frame_tokens_sha256") == sha256_lines(tokens) else None


def run(cfg: Config, resume: bool = True) -> CacheResult:
    """Cache ``cfg.cache.teachers`` over ``cfg.cache.splits`` into ``cfg.store.url``. A store
    this config already finished (:func:`finished_by`) is left as it is: no teacher loads."""
    from bevkd.pipeline.cluster import ClusterStarter

    started = time.perf_counter()
    if resume and (done := finished_by(cfg)) is not None:
        seconds = time.perf_counter() - started
        return CacheResult(cfg.store.url, len(done), 0, done.skipped, seconds, {}, 0)
    in_process = cfg.cache.n_workers == 0 and not cfg.cache.scheduler
    # A LocalCluster's workers spawn and import torch while this process plans the store.
    with (
        contextlib.nullcontext()
        if in_process
        else ClusterStarter(
            cfg.cache.scheduler,
            cfg.cache.n_workers,
            cfg.cache.threads_per_worker,
            cfg.cache.torch_threads,
        )
    ) as cluster:
        cfg_dict = to_dict(cfg)
        frames = select_frames(cfg)
        if cluster is None:
            writer, tasks = prepare_store(cfg, frames, resume)
        else:
            client, torch_threads = cluster.result()
            planned = client.submit(_plan_task, cfg_dict, frames, torch_threads, pure=False)
            contract, teachers = planned.result()
            writer, tasks = _create_store(cfg, frames, contract, teachers, resume)
        prepared = time.perf_counter()
        storage_options = dict(cfg.store.storage_options) or None
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


def _create_store(
    cfg: Config,
    frames: list[Frame],
    contract_dict: dict[str, Any],
    teachers: dict[str, Any],
    resume: bool = True,
) -> tuple[Any, list]:
    """Create (or reopen) the store for ``frames``; return its writer and the unwritten shards'
    tasks ``(shard id, frames, first frame index)``."""
    from bevkd.storage.schema import StoreContract, make_provenance
    from bevkd.storage.writer import StoreWriter

    contract = StoreContract.from_dict(contract_dict)
    tokens = [f.token for f in frames]
    provenance = make_provenance(
        teacher=", ".join(f"{k}: {v['architecture']}" for k, v in teachers.items()),
        checkpoint_sha256={k: v["checkpoint_sha256"] for k, v in teachers.items()},
        config_yaml=config_yaml(cfg),
        config_sha256=config_sha256(cfg),
        dataset_name=cfg.data.format,
        dataset_version=cfg.data.version,
        dataset_splits=list(cfg.cache.splits),
        tokens=tokens,
    )
    provenance["teachers"] = teachers
    writer = StoreWriter.create(
        cfg.store.url, contract, tokens, [f.scene for f in frames], [f.split for f in frames],
        [f.has_label for f in frames], provenance, shard_size=cfg.store.shard_size,
        storage_options=dict(cfg.store.storage_options) or None, resume=resume,
    )  # fmt: skip
    if "://" not in cfg.store.url:
        save_resolved(cfg, Path(cfg.store.url).parent / (Path(cfg.store.url).name + ".config"))
    tasks = [
        (s, [frames[i] for i in writer.shard_frames(s)], writer.shard_frames(s).start)
        for s in writer.pending_shards()
    ]
    return writer, tasks


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
