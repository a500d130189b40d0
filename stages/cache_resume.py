"""Whether a cache run may add to the store already at its URL: the checks that keep a store
made by one set of teachers, cache settings and code (a resume must not mix two stores in one).

:func:`finished_by` finds a store this config already finished (the run then loads no
teacher); :func:`create_store` creates the store, or reopens it to resume, and refuses one that
was made differently (:func:`resume_problems` names what differs) before anything is written
to it. Settings that change how a run goes, not what it writes (:data:`RUN_ONLY_KEYS`), may
differ on a resume. ``--repair`` and ``--retry-skipped`` unmark the shards they rewrite here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bevkd.datasets.frame import Frame
from bevkd.pipeline.config import Config, config_sha256, config_yaml, save_resolved, to_dict
from bevkd.stages import custom_teacher, teacher_runner
from bevkd.stages.cache_plan import flatten, select_frames

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
        for k, v in flatten(data).items()
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


def create_store(
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
        report = verify_store(url, writer.storage_options)  # attrs: checked by create_store
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
