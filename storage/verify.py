"""``verify``: re-read a whole store and check it against what its writer recorded.

- the root attrs against the checksum written with them (creation, finalize, repair);
- every array the schema declares (index, marks, field data and bookkeeping): its
  ``zarr.json`` exists and matches the metadata the contract implies, in the consolidated
  copy too;
- the frame index against the frame-list hash recorded at creation (a missing
  ``index/has_label`` chunk would otherwise read back as "no frame has labels");
- every chunk of every written shard exists and decodes through its crc32c codec, and the
  field data holds no NaN.

Problems are reported, never raised: a frame whose chunk is corrupt, missing or holds NaN is
named with the field, and :attr:`VerifyReport.bad_shards` lists the shards a repair
(``bevkd cache-teacher --repair``) must rewrite. Unwritten shards make the store incomplete.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bevkd.storage import codecs, layout
from bevkd.storage.layout import STORE_MARKER, read_root_attrs
from bevkd.storage.reader import TeacherStore
from bevkd.storage.remote import PARTIAL_SUFFIX, open_zarr_store, run_sync
from bevkd.storage.schema import (
    ATTRS_CHECKSUM_KEY,
    FieldSpec,
    StoreContract,
    StoreError,
    attrs_sha256,
)

# The parts of an array's zarr.json that decide how its chunks are found and decoded.
METADATA_KEYS = (
    "shape",
    "data_type",
    "chunk_grid",
    "chunk_key_encoding",
    "fill_value",
    "codecs",
    "attributes",
)


@dataclass
class VerifyReport:
    """What verify found.

    ``problems``: one line each. ``bad_frames``: frame index -> fields. ``bad_shards``:
    written shards that hold a bad frame or a bad bookkeeping chunk (rewrite them to repair).
    ``bad_metadata``: array keys whose ``zarr.json`` is missing or wrong. ``index_ok``: the
    frame index matches the frame list recorded at creation. ``notes``: not problems.
    """

    url: str
    frames_checked: int = 0
    chunks_checked: int = 0
    incomplete_shards: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    bad_frames: dict[int, list[str]] = field(default_factory=dict)
    bad_shards: set[int] = field(default_factory=set)
    bad_metadata: list[str] = field(default_factory=list)
    index_ok: bool = True
    attrs_ok: bool = True
    leftover_partials: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.incomplete_shards


def verify_store(url: str, storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """Re-read and check everything; never raises for bad data (it is reported), only for an
    unopenable store."""
    report = VerifyReport(url=str(url))
    raw = open_zarr_store(url, storage_options, read_only=True)
    attrs = read_root_attrs(raw)
    if attrs is None or attrs.get("bevkd_store") != STORE_MARKER:
        TeacherStore(url, storage_options)  # raises the reader's error: not a (complete) store
    assert attrs is not None
    keys = _all_keys(raw)
    report.leftover_partials = sum(1 for k in keys if k.endswith(PARTIAL_SUFFIX))
    present = {k for k in keys if not k.endswith(PARTIAL_SUFFIX)}
    _check_attrs(attrs, report)
    contract = StoreContract.from_dict(attrs)
    n, shard_size = int(attrs["num_frames"]), int(attrs["shard_size"])
    root = _read_json(raw, ["zarr.json"])["zarr.json"]
    consolidated = (
        (root.get("consolidated_metadata") or {}).get("metadata") or {}
        if isinstance(root, dict)
        else {}
    )
    _check_metadata(raw, contract, n, shard_size, consolidated, present, report)
    if (
        any(k.startswith("index/") or k == layout.MARKS for k in report.bad_metadata)
        and not consolidated
    ):
        report.problems.append("the index or the shard marks cannot be opened; stopped here")
        return report
    try:
        store = TeacherStore(url, storage_options, check_index=False)
    except StoreError as exc:
        report.problems.append(f"cannot open the store to check its data: {exc}")
        return report
    if not store.index_intact:
        report.index_ok = False
        missing = [
            layout.index_key(k)
            for k in layout.INDEX_ONE_CHUNK
            if _chunk_key(store, layout.index_key(k), 0) not in present
        ]
        report.problems.append(
            "frame index: index/token, scene, split and has_label do not match the frame list "
            "recorded at creation (frames_sha256)"
            + (f"; chunks missing: {missing}" if missing else "; a chunk was changed")
        )
    written = np.asarray(store._group[layout.MARKS][:]) == 1
    report.incomplete_shards = [int(s) for s in np.flatnonzero(~written)]
    for shard in np.flatnonzero(written):
        _check_shard_bookkeeping(store, int(shard), present, report)
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
                what = _check_frame_field(store, spec, i, present)
                report.chunks_checked += len(layout.field_parts(spec))
                if what:
                    report.bad_frames.setdefault(i, []).append(spec.name)
                    report.bad_shards.add(int(shard))
                    report.problems.append(
                        f"frame {i} (token {store.tokens[i]}), field {spec.name!r}: {what}"
                    )
    return report


def _check_attrs(attrs: dict[str, Any], report: VerifyReport) -> None:
    recorded = attrs.get(ATTRS_CHECKSUM_KEY)
    if recorded is None:
        report.notes.append(
            "the root attrs carry no checksum (the store was written before bevkd recorded one); "
            "they were not checked"
        )
    elif recorded != attrs_sha256(attrs):
        report.attrs_ok = False
        report.problems.append(
            "root attrs (zarr.json): they differ from what bevkd wrote (their sha256 does not "
            "match the recorded attrs_sha256); they were edited or damaged: re-copy the store"
        )


def _check_metadata(raw: Any, contract: StoreContract, n: int, shard_size: int,
                    consolidated: dict[str, Any], present: set[str], report: VerifyReport) -> None:  # fmt: skip
    """Every declared array's zarr.json (and its ``consolidated`` copy in the root zarr.json,
    once finalized) against the contract's."""
    expected = layout.expected_metadata(contract.fields, n, shard_size, contract.schema_version)
    stored = _read_json(
        raw, [f"{key}/zarr.json" for key in expected if f"{key}/zarr.json" in present]
    )
    for key, want in expected.items():
        meta_key = f"{key}/zarr.json"
        if meta_key not in present:
            report.bad_metadata.append(key)
            report.problems.append(f"array {key}: its metadata ({meta_key}) is missing")
            continue
        have = stored[meta_key]
        if isinstance(have, str):
            report.bad_metadata.append(key)
            report.problems.append(f"array {key}: its metadata ({meta_key}) {have}")
            continue
        if diffs := _metadata_differences(have, want):
            report.bad_metadata.append(key)
            report.problems.append(
                f"array {key}: its metadata differs from the contract's ({'; '.join(diffs)})"
            )
        if consolidated and key in consolidated:
            if diffs := _metadata_differences(consolidated[key], want):
                report.bad_metadata.append(key)
                report.problems.append(
                    f"array {key}: its consolidated metadata (root zarr.json) differs from the "
                    f"contract's ({'; '.join(diffs)})"
                )
        elif consolidated:
            report.bad_metadata.append(key)
            report.problems.append(f"array {key}: missing from the consolidated metadata")
    report.chunks_checked += len(expected)


def _metadata_differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    return [
        f"{k}: {json.dumps(have.get(k))} != {json.dumps(want.get(k))}"
        for k in METADATA_KEYS
        if _normal(have.get(k)) != _normal(want.get(k))
    ]


def _normal(value: Any) -> str:
    """Canonical JSON, without compression levels: a level is the writer's choice (schema 1
    used zstd 3, schema 2 uses 1) and does not change how a chunk decodes."""
    if isinstance(value, list) and all(isinstance(c, dict) and "name" in c for c in value):
        value = [
            {
                **c,
                "configuration": {
                    k: v for k, v in c.get("configuration", {}).items() if k != "level"
                },
            }
            for c in value
        ]
    return json.dumps(value, sort_keys=True)


def _read_json(raw: Any, keys: list[str]) -> dict[str, dict[str, Any] | str]:
    """key -> parsed JSON, or a string saying why it is unreadable."""
    from zarr.core.buffer import default_buffer_prototype

    proto = default_buffer_prototype()

    async def read_all() -> list[Any]:
        return await asyncio.gather(*(raw.get(k, proto) for k in keys), return_exceptions=True)

    out: dict[str, dict[str, Any] | str] = {}
    for key, value in zip(keys, run_sync(read_all()), strict=True):
        if value is None or isinstance(value, BaseException):
            out[key] = f"cannot be read ({value})"
            continue
        try:
            out[key] = json.loads(value.to_bytes())
        except ValueError as exc:
            out[key] = f"is not valid JSON ({exc})"
    return out


def _chunk_key(store: TeacherStore, key: str, *coords: int) -> str:
    array = store._array(key)
    return layout.chunk_key(array, tuple(coords) + (0,) * (array.ndim - len(coords)))


def _check_shard_bookkeeping(
    store: TeacherStore, shard: int, present: set[str], report: VerifyReport
) -> None:
    """The per-shard records of a written shard: skip flags and reasons, NaN counts, stats."""
    frames = range(shard * store.shard_size, min((shard + 1) * store.shard_size, store.num_frames))
    keys = [layout.index_key(k) for k in layout.INDEX_PER_SHARD]
    for spec in store.contract.fields:
        keys += [
            layout.field_key(spec.name, "nan_count"),
            layout.field_key(spec.name, "shard_stats"),
        ]
    for key in keys:
        report.chunks_checked += 1
        if _chunk_key(store, key, shard) not in present:
            report.bad_shards.add(shard)
            report.problems.append(
                f"shard {shard}: {key} chunk missing although the shard is marked written"
            )
            continue
        rows = (
            slice(shard, shard + 1)
            if key.endswith("shard_stats")
            else slice(frames.start, frames.stop)
        )
        try:
            value = store.read_rows(key, rows)
        except ValueError as exc:
            report.bad_shards.add(shard)
            report.problems.append(f"shard {shard}: {key} chunk fails its checksum ({exc})")
            continue
        if key.endswith("nan_count") and (value > 0).any():
            report.bad_shards.add(shard)  # finalize refuses NaN; the frames are named below


def _check_frame_field(store: TeacherStore, spec: FieldSpec, i: int, present: set[str]) -> str:
    """Empty if frame ``i`` of ``spec`` decodes cleanly, else what is wrong."""
    parts = layout.field_parts(spec)
    # The reader's own path: a remote chunk whose body arrives damaged is read again before
    # it counts as corrupt (a retry-exhausted request is reported as unreadable).
    try:
        got = store._read_parts(i, [layout.field_key(spec.name, p) for p in parts])
    except StoreError as exc:
        return f"unreadable ({exc})"
    values = dict(zip(parts, got, strict=True))
    for part, value in values.items():
        if isinstance(value, ValueError):
            return f"{part} chunk fails its checksum ({value})"
        if isinstance(value, BaseException):
            return f"{part} chunk unreadable ({type(value).__name__}: {value})"
    for part in parts:
        key = layout.field_key(spec.name, part)
        rows = store._array(key).chunks[0]
        if values[part] is None or _chunk_key(store, key, i // rows) not in present:
            return f"{part} chunk missing although its shard is marked written"
    loaded = {p: np.asarray(v) for p, v in values.items()}
    decoded = codecs.decode_boxes(loaded) if spec.kind == "boxes" else codecs.decode(spec, loaded)
    if (nan := int(np.isnan(decoded).sum())) > 0:
        return f"{nan} NaN values"
    return ""


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
        parts.append(f"{len(other)} store-level problems (attrs, metadata, index, bookkeeping)")
    hint = (
        "; `bevkd cache-teacher --repair` (with the store's config) rewrites what is bad"
        if report.problems
        else ""
    )
    return f"{report.url}: FAILED: " + "; ".join(parts) + hint


class VerifyFailed(StoreError):
    """``bevkd store verify`` found problems."""
