"""``verify``: re-read every chunk of a store, check checksums, completeness and NaNs.

Every chunk is decoded through its crc32c codec; a frame whose chunk is corrupt, missing
or holds NaN is named with the field. Unwritten shards make the store incomplete.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bevkd.storage import codecs, layout
from bevkd.storage.reader import TeacherStore
from bevkd.storage.remote import PARTIAL_SUFFIX, open_zarr_store, run_sync
from bevkd.storage.schema import FieldSpec, StoreError


@dataclass
class VerifyReport:
    """What verify found. ``problems``: one line each; ``bad_frames``: frame index -> fields."""

    url: str
    frames_checked: int = 0
    chunks_checked: int = 0
    incomplete_shards: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    bad_frames: dict[int, list[str]] = field(default_factory=dict)
    leftover_partials: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.incomplete_shards


def verify_store(url: str, storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """Re-read and check everything; never raises for bad data (it is reported), only for an
    unopenable store."""
    store = TeacherStore(url, storage_options)
    report = VerifyReport(url=str(url))
    group: Any = store._group
    for key in _bookkeeping_keys(store):
        try:
            np.asarray(group[key][:])
            report.chunks_checked += group[key].nchunks
        except ValueError as exc:
            report.problems.append(f"{key}: corrupt chunk ({exc})")
    written = np.asarray(group[layout.MARKS][:]) == 1
    report.incomplete_shards = [int(s) for s in np.flatnonzero(~written)]
    skipped = store.skipped
    for shard in np.flatnonzero(written):
        start = int(shard) * store.shard_size
        for i in range(start, min(start + store.shard_size, store.num_frames)):
            if i in skipped:
                continue
            report.frames_checked += 1
            for spec in store.contract.fields:
                if spec.labeled_only and not store.has_label[i]:
                    continue
                what = _check_frame_field(store, spec, i)
                report.chunks_checked += len(layout.field_parts(spec))
                if what:
                    report.bad_frames.setdefault(i, []).append(spec.name)
                    report.problems.append(
                        f"frame {i} (token {store.tokens[i]}), field {spec.name!r}: {what}"
                    )
    raw = open_zarr_store(url, storage_options, read_only=True)
    report.leftover_partials = sum(1 for k in _all_keys(raw) if k.endswith(PARTIAL_SUFFIX))
    return report


def _bookkeeping_keys(store: TeacherStore) -> list[str]:
    keys = [layout.index_key(k) for k in layout.INDEX_ONE_CHUNK + layout.INDEX_PER_SHARD] + [
        layout.MARKS
    ]
    for spec in store.contract.fields:
        keys += [
            layout.field_key(spec.name, "nan_count"),
            layout.field_key(spec.name, "shard_stats"),
        ]
    return keys


def _check_frame_field(store: TeacherStore, spec: FieldSpec, i: int) -> str:
    """Empty if frame ``i`` of ``spec`` decodes cleanly, else what is wrong."""
    parts = layout.field_parts(spec)
    arrays = [store._array(layout.field_key(spec.name, p))._async_array for p in parts]

    async def fetch() -> list[Any]:
        return await asyncio.gather(*(a.getitem(i) for a in arrays), return_exceptions=True)

    values = dict(zip(parts, run_sync(fetch()), strict=True))
    for part, value in values.items():
        if isinstance(value, ValueError):
            return f"{part} chunk fails its checksum ({value})"
        if isinstance(value, BaseException):
            return f"{part} chunk unreadable ({type(value).__name__}: {value})"
    loaded = {p: np.asarray(v) for p, v in values.items()}
    if codecs.is_missing(spec, loaded) and not _exists_all(store, spec, i):
        return "chunk missing although its shard is marked written"
    decoded = codecs.decode_boxes(loaded) if spec.kind == "boxes" else codecs.decode(spec, loaded)
    if (nan := int(np.isnan(decoded).sum())) > 0:
        return f"{nan} NaN values"
    return ""


def _exists_all(store: TeacherStore, spec: FieldSpec, i: int) -> bool:
    """Whether every per-frame chunk object of frame ``i`` exists (tells NaN from missing)."""
    raw = store._group.store
    for part in layout.field_parts(spec):
        arr = store._array(layout.field_key(spec.name, part))
        key = layout.chunk_key(arr, (i // arr.chunks[0],) + (0,) * (arr.ndim - 1))
        if not run_sync(raw.exists(key)):
            return False
    return True


def _all_keys(raw: Any) -> list[str]:
    async def collect() -> list[str]:
        return [key async for key in raw.list_prefix("")]

    return run_sync(collect())


def summarize(report: VerifyReport) -> str:
    """One line: ok, or how many frames/shards are bad."""
    if report.ok:
        return f"{report.url}: ok ({report.frames_checked} frames, {report.chunks_checked} chunks checked)"
    frames = sorted(report.bad_frames)
    named = ", ".join(str(i) for i in frames[:20]) + (" ..." if len(frames) > 20 else "")
    parts = []
    if frames:
        parts.append(f"{len(frames)} bad frames ({named})")
    if report.incomplete_shards:
        parts.append(f"{len(report.incomplete_shards)} shards not written")
    if other := [p for p in report.problems if not p.startswith("frame ")]:
        parts.append(f"{len(other)} corrupt bookkeeping arrays")
    return f"{report.url}: FAILED: " + "; ".join(parts)


class VerifyFailed(StoreError):
    """``bevkd store verify`` found problems."""
