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

import numpy as np
import torch
from tqdm import tqdm

from bevkd.datasets.dataset import FrameDataset, load_frames
from bevkd.datasets.frame import Frame
from bevkd.pipeline.config import (
    Config,
    config_sha256,
    config_yaml,
    from_dict,
    is_custom_teacher,
    save_resolved,
    to_dict,
)
from bevkd.pipeline.errors import BevkdError
from bevkd.stages import custom_teacher, teacher_runner


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


# Config keys that change how a run goes, not what it writes: they may differ on a resume.
RUN_ONLY_KEYS = (
    "name",
    "store.url",
    "store.storage_options",
    "cache.scheduler",
    "cache.n_workers",
    "cache.threads_per_worker",
    "cache.torch_threads",
    "cache.retries",
    "cache.teacher_configs",
)
# Sections of the config that stage one never reads.
OTHER_STAGES = ("train", "eval", "student", "distill")


def cache_settings(data: dict[str, Any]) -> dict[str, Any]:
    """The flattened settings of a resolved config (as a dict) that decide what a cache run
    writes: everything but :data:`RUN_ONLY_KEYS` and the other stages' sections."""
    return {
        k: v
        for k, v in _flat(data).items()
        if k not in RUN_ONLY_KEYS and k.split(".")[0] not in OTHER_STAGES
    }


def settings_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: store has A, this run has B`` for every cache setting that differs."""
    a, b = cache_settings(stored), cache_settings(current)
    return [
        f"{key}: the store has {a.get(key, '(unset)')!r}, this run {b.get(key, '(unset)')!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


def resume_problems(made: dict[str, Any], cfg: Config, teachers: dict[str, Any]) -> list[str]:
    """Why a run of ``cfg`` with these ``teachers`` (:func:`teacher_runner.describe_teachers`)
    must not add shards to a store whose provenance is ``made``: other teacher weights, other
    cache settings, other data or other code would mix two stores in one. Empty if none."""
    import yaml

    from bevkd.pipeline.provenance import code_version

    problems = []
    had = made.get("checkpoint_sha256")
    had = had if isinstance(had, dict) else {}
    had_teachers = made.get("teachers", {})
    if sorted(had) != sorted(teachers):
        problems.append(
            f"teachers: the store was made by {sorted(had)}, this run has {sorted(teachers)}"
        )
    for name in sorted(set(had) & set(teachers)):
        now = teachers[name]
        if had[name] != now["checkpoint_sha256"]:
            if "factory" in now:  # a custom teacher: its factory, source file or weights changed
                problems += custom_teacher.changes(name, had_teachers.get(name, {}), now)
                continue
            then = had_teachers.get(name, {}).get("checkpoint", "?")
            problems.append(
                f"teacher {name}: this run's checkpoint {now['checkpoint']} (sha256 "
                f"{now['checkpoint_sha256'][:12]}) is not the one that wrote the store "
                f"({then}, sha256 {had[name][:12]})"
            )
    stored_cfg = yaml.safe_load(made.get("config") or "{}") or {}
    problems += [f"config {line}" for line in settings_differences(stored_cfg, to_dict(cfg))]
    code = code_version()
    if made.get("code_version") != code["commit"]:
        problems.append(
            f"code: the store was written by bevkd at {made.get('code_version')}, this is "
            f"{code['commit']}"
        )
    return problems


def teacher_setting_conflicts(cfg: Config, name: str, teacher_cfg: Config, path: str) -> list[str]:
    """Settings of the cache config that contradict teacher ``name``'s own (from its
    checkpoint): the BEV grid and classes always, the LiDAR sweeps of a teacher that reads
    points, the cameras and image size of one that reads images. The teacher is the source:
    its fields live on its grid, whatever the cache config says."""
    keys = ["grid", "classes"]
    if teacher_cfg.model.kind in ("lidar", "centerpoint", "fusion", "label_encoder"):
        keys.append("data.lidar_sweeps")
    if teacher_cfg.model.kind == "fusion":
        keys += ["data.cameras", "data.image_size"]
    mine, theirs = _flat(to_dict(cfg)), _flat(to_dict(teacher_cfg))
    out = []
    for key in sorted(k for k in mine if any(k == p or k.startswith(p + ".") for p in keys)):
        if mine[key] != theirs.get(key):
            out.append(
                f"{key} is {mine[key]!r} in the cache config but {theirs.get(key)!r} in teacher "
                f"{name}'s checkpoint {path}"
            )
    return out


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flat(value, name))
        else:
            out[name] = value
    return out


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
    field_owners(cfg, device)  # two teachers writing one field: refused before any forward
    probe = _first_loadable(cfg, frames)
    overrides = dict(cfg.store.codecs)
    fields = []
    with torch.no_grad():
        for name in cfg.cache.teachers:
            if is_custom_teacher(name):
                built = custom_teacher.build(cfg, name, device)
                fields += custom_teacher.contract_fields(cfg, built, probe, device)
                continue
            spec = teacher_runner.TEACHER_FIELDS[name]
            path = teacher_runner.checkpoint_of(cfg, name)
            model, teacher_cfg, _ = teacher_runner.load_teacher_once(path, device)
            if conflicts := teacher_setting_conflicts(cfg, name, teacher_cfg, path):
                raise BevkdError(
                    "the cache config contradicts the teacher it runs: "
                    + "; ".join(conflicts)
                    + ". The teacher's settings decide what it writes: remove these overrides "
                    "or set them to the teacher's values"
                )
            out = teacher_runner.forward_frozen(model, [probe], device)
            for src, dst in teacher_runner.wanted_features(
                name, cfg.cache.lidar_bev_scales, cfg.cache.lidar_bev_pre
            ).items():
                if src not in out.features:
                    raise BevkdError(
                        f"teacher {name} ({path}, a {teacher_cfg.model.kind} model) gives no "
                        f"{src} on this grid (it gives {', '.join(sorted(out.features))}); "
                        + {"lidar_bev_pre": "set cache.lidar_bev_pre=false",
                           "lidar_bev_s2": "leave 2 out of cache.lidar_bev_scales"}.get(src, "")
                    )  # fmt: skip
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
                fields.append(boxes_field(spec.boxes, capacity=box_capacity(cfg, teacher_cfg)))
    grid = cfg.grid.bev_grid
    return StoreContract(SCHEMA_VERSION, grid, tuple(cfg.classes), tuple(fields))


def box_capacity(cfg: Config, teacher_cfg: Config) -> int:
    """Rows of a teacher's ``boxes`` field: ``head.max_detections``, or for an imported
    CenterPoint at least what its per-task NMS can keep (tasks x ``post_nms``)."""
    if teacher_cfg.model.kind == "centerpoint":
        cp = teacher_cfg.centerpoint
        return max(cfg.head.max_detections, len(cp.tasks) * cp.post_nms)
    return cfg.head.max_detections


def field_owners(cfg: Config, device: torch.device) -> dict[str, str]:
    """Store field -> the teacher that writes it; two teachers naming one field (or two custom
    teachers declaring one name) are refused."""
    owners: dict[str, str] = {}
    declared: dict[str, str] = {}
    for name in cfg.cache.teachers:
        if is_custom_teacher(name):
            built = custom_teacher.build(cfg, name, device)
            label, names = built.label, built.declaration.field_names
            if built.declaration.name in declared:
                raise BevkdError(
                    f"cache.teachers: {declared[built.declaration.name]} and {name} both declare "
                    f"the name {built.declaration.name!r}; a store names each teacher once"
                )
            declared[built.declaration.name] = name
        else:
            spec = teacher_runner.TEACHER_FIELDS[name]
            features = teacher_runner.wanted_features(
                name, cfg.cache.lidar_bev_scales, cfg.cache.lidar_bev_pre
            )
            label = f"teacher {name}"
            names = (*features.values(), spec.heatmap, spec.regression, spec.boxes)
        for field_name in filter(None, names):
            if field_name in owners:
                raise BevkdError(
                    f"store field {field_name!r} would be written by both {owners[field_name]} "
                    f"and {label}: rename it in the custom teacher's declaration, or cache the "
                    "two teachers into separate stores"
                )
            owners[field_name] = label
    return owners


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
    contract, teachers = _plan_task(to_dict(cfg), frames, cfg.cache.torch_threads)
    return _create_store(cfg, frames, contract, teachers, resume, repair, retry_skipped)


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


def finished_by(cfg: Config) -> Any | None:
    """The store at ``cfg.store.url`` if it is finalized and was made with exactly these
    cache settings (:func:`cache_settings`), these teacher checkpoints (sha256) and these
    frames; None otherwise (the store is then created, resumed or refused as usual). The code
    version is not compared: a finished store stays finished when bevkd is upgraded."""
    import yaml

    from bevkd.pipeline.provenance import sha256_lines
    from bevkd.storage.reader import open_store
    from bevkd.storage.schema import StoreError

    try:
        store = open_store(cfg.store.url, storage_options=dict(cfg.store.storage_options) or None)
    except StoreError:
        return None
    made = store.provenance
    if not store.finalized:
        return None
    if settings_differences(yaml.safe_load(made.get("config") or "{}") or {}, to_dict(cfg)):
        return None
    if made.get("checkpoint_sha256") != teacher_runner.identities(cfg, cfg.cache.teachers):
        return None
    tokens = [f.token for f in select_frames(cfg)]
    return store if made.get("frame_tokens_sha256") == sha256_lines(tokens) else None


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
            planned = client.submit(_plan_task, cfg_dict, frames, torch_threads, pure=False)
            contract, teachers = planned.result()
            writer, tasks = _create_store(
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


def _create_store(
    cfg: Config,
    frames: list[Frame],
    contract_dict: dict[str, Any],
    teachers: dict[str, Any],
    resume: bool = True,
    repair: bool = False,
    retry_skipped: bool = False,
) -> tuple[Any, list]:
    """Create (or reopen) the store for ``frames``; return its writer and the unwritten shards'
    tasks ``(shard id, frames, first frame index)``. A store made by other teachers, settings,
    data or code is refused, naming what differs, before anything is written to it."""
    from bevkd.storage.layout import STORE_MARKER, read_root_attrs
    from bevkd.storage.remote import open_zarr_store
    from bevkd.storage.schema import (
        ATTRS_CHECKSUM_KEY,
        StoreContract,
        StoreError,
        attrs_sha256,
        make_provenance,
    )
    from bevkd.storage.writer import StoreWriter

    storage_options = dict(cfg.store.storage_options) or None
    existing = read_root_attrs(open_zarr_store(cfg.store.url, storage_options, read_only=False))
    if resume and existing is not None and existing.get("bevkd_store") == STORE_MARKER:
        recorded = existing.get(ATTRS_CHECKSUM_KEY)
        if recorded is not None and recorded != attrs_sha256(existing):
            raise StoreError(
                f"cannot resume or repair {cfg.store.url}: its root attrs were changed after "
                "bevkd wrote them (their checksum fails). They are the store's record of what "
                "made it, so they cannot be rebuilt in place: copy the store again from a good "
                "copy, or re-cache into a new URL"
            )
        if problems := resume_problems(existing.get("provenance", {}), cfg, teachers):
            raise StoreError(
                f"cannot resume {cfg.store.url}: its shards so far were made differently, and "
                "adding shards of this run would mix two stores in one: "
                + "; ".join(problems)
                + ". Rerun with the store's settings, or choose a new store.url"
            )
    elif repair or retry_skipped:
        raise StoreError(
            f"--repair / --retry-skipped: there is no bevkd store at {cfg.store.url} to repair"
        )
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
        storage_options=storage_options, resume=resume,
    )  # fmt: skip
    if repair or retry_skipped:
        _mark_for_rewrite(writer, frames, repair, retry_skipped)
    if "://" not in cfg.store.url:
        save_resolved(cfg, Path(cfg.store.url).parent / (Path(cfg.store.url).name + ".config"))
    tasks = [
        (s, [frames[i] for i in writer.shard_frames(s)], writer.shard_frames(s).start)
        for s in writer.pending_shards()
    ]
    return writer, tasks


def _mark_for_rewrite(writer: Any, frames: list[Frame], repair: bool, retry_skipped: bool) -> None:
    """Unmark the shards a repair (bad chunks) or a retry (skipped frames) rewrites, after
    mending the array metadata and the frame index in place (``repair``)."""
    from bevkd.storage import layout
    from bevkd.storage.verify import verify_store

    url = writer.url
    redo: set[int] = set()
    if repair:
        report = verify_store(url, writer.storage_options)  # attrs: checked by _create_store
        if report.bad_metadata or not report.index_ok:
            if report.bad_metadata:
                writer.rewrite_metadata(sorted(set(report.bad_metadata)))
            if not report.index_ok:
                writer.rewrite_index(
                    [f.token for f in frames], [f.scene for f in frames],
                    [f.split for f in frames], [f.has_label for f in frames],
                )  # fmt: skip
            report = verify_store(url, writer.storage_options)
        redo |= report.bad_shards
        if report.problems and not redo:  # only metadata was wrong: finalize (consolidate) again
            layout.update_attrs(writer._group, {"finalized": False})
    if retry_skipped:
        skipped = np.flatnonzero(np.asarray(writer._group[layout.index_key("skipped")][:]))
        redo |= {int(i) // writer.shard_size for i in skipped}
    if chosen := writer.unmark(sorted(redo)):
        tqdm.write(f"cache-teacher: rewriting shards {chosen} of {url}")


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
