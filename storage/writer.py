"""Writing a teacher store shard by shard: create (or resume), write_shard, finalize.

The shard, a block of ``shard_size`` whole frames, is the unit of work. Each shard is
written whole, once, by one task, and then marked written in ``shards/written`` (chunks of
one shard each, so marks of concurrent writers never collide). A crash leaves the shard
unmarked and a rerun redoes it; writers of different shards share no object, so they need
no lock. Rows of ``write_shard`` arrays: see :meth:`StoreWriter.rows_for`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from bevkd.storage import codecs, layout
from bevkd.storage.fastwrite import ChunkEncoder, put_objects
from bevkd.storage.layout import STORE_MARKER, frames_sha256, read_root_attrs
from bevkd.storage.remote import (
    is_local,
    open_zarr_store,
    run_sync,
)
from bevkd.storage.schema import (
    SCHEMA_VERSION,
    ContractMismatch,
    FieldSpec,
    StoreContract,
    StoreError,
    sealed,
)
from bevkd.storage.stats import shard_stats


class ShardAlreadyWritten(StoreError):
    """A writer touched a shard that is already marked written."""


_OPEN_WRITERS: dict[tuple[str, str], StoreWriter] = {}
_REOPEN_LOCK = threading.Lock()


class StoreWriter:
    """Writes shards of one store. Cheap to re-open in another process with :meth:`open`."""

    def __init__(
        self, url: str, group: Any, attrs: dict[str, Any], storage_options: dict[str, Any] | None
    ):
        self.url = str(url)
        self.storage_options = storage_options
        self._attrs = attrs
        self._group = group
        self.contract = StoreContract.from_dict(attrs)
        self.num_frames = int(attrs["num_frames"])
        self.shard_size = int(attrs["shard_size"])
        self._has_label = np.asarray(group[layout.index_key("has_label")][:], dtype=bool)
        self._arrays: dict[str, Any] = {}
        self._encoders: dict[str, ChunkEncoder | None] = {}
        self._lock = threading.Lock()
        self.threads = min(8, os.cpu_count() or 1)  # a cluster task sets its share

    # -- creation ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        url: str,
        contract: StoreContract,
        tokens: Sequence[str],
        scenes: Sequence[str],
        splits: Sequence[str],
        has_label: Sequence[bool],
        provenance: dict[str, Any],
        shard_size: int = 8,
        storage_options: dict[str, Any] | None = None,
        resume: bool = False,
    ) -> StoreWriter:
        """Create a store for these frames, or (``resume=True``) re-open an identical one."""
        import zarr

        n = len(tokens)
        if n == 0 or not len(scenes) == len(splits) == len(has_label) == n:
            raise StoreError(
                f"store {url}: need >= 1 frame and equal-length tokens/scenes/splits/has_label"
            )
        if len(set(tokens)) != n:
            raise StoreError(f"store {url}: frame tokens are not unique")
        if not 1 <= shard_size <= 4096:
            raise StoreError(
                f"store {url}: shard_size must be in 1..4096 (8-32 is typical), got {shard_size}"
            )
        frames_hash = frames_sha256(tokens, scenes, splits, has_label)
        store = open_zarr_store(url, storage_options, read_only=False)
        existing = read_root_attrs(store)
        if existing is not None and existing.get("bevkd_store") == STORE_MARKER:
            return cls._resume(
                url, existing, contract, frames_hash, shard_size, storage_options, resume
            )
        if existing is not None and existing.get("bevkd_store") != "creating":
            raise StoreError(
                f"{url} holds a zarr group that is not a bevkd store; choose another URL"
            )
        if existing is None and is_local(url) and os.path.isdir(url) and os.listdir(url):
            raise StoreError(
                f"{url} is a non-empty directory that is not a zarr store; choose another URL"
            )
        index = {
            layout.index_key("token"): np.asarray(list(tokens), dtype=object),
            layout.index_key("scene"): np.asarray(list(scenes), dtype=object),
            layout.index_key("split"): np.asarray(list(splits), dtype=object),
            layout.index_key("has_label"): np.asarray(has_label, dtype=bool),
        }
        attrs = sealed({
            "bevkd_store": STORE_MARKER,
            **contract.to_dict(),
            "provenance": provenance,
            "num_frames": n,
            "shard_size": shard_size,
            "num_shards": -(-n // shard_size),
            "frames_sha256": frames_hash,
            "finalized": False,
        })  # fmt: skip
        # A half-created store (marker "creating") has no written shard yet: it is redone.
        layout.create_store(store, contract.fields, n, shard_size, index, attrs)
        group = zarr.open_group(store, mode="r+")
        writer = cls(url, group, attrs, storage_options)
        writer.check_creator()
        return writer

    def check_creator(self) -> None:
        """Fail if the store's root record is no longer the one this writer made or opened:
        another run created the same URL at the same moment (on an object store whose writer
        lease could not be taken conditionally), and its shards must not be merged with ours."""
        found = read_root_attrs(open_zarr_store(self.url, self.storage_options, read_only=False))
        theirs = (found or {}).get("provenance")
        if _canonical(theirs) != _canonical(self._attrs.get("provenance")):
            made = theirs or {}
            raise StoreError(
                f"store {self.url} was created at the same moment by another run (its record: "
                f"teacher {made.get('teacher', '?')}, config {str(made.get('config_sha256'))[:12]}, "
                f"created {made.get('created_at', '?')}); the two runs' shards must not mix: "
                "delete the store and rerun one cache-teacher"
            )

    @classmethod
    def _resume(cls, url: str, existing: dict[str, Any], contract: StoreContract, frames_hash: str,
                shard_size: int, storage_options: dict[str, Any] | None, resume: bool) -> StoreWriter:  # fmt: skip
        if not resume:
            raise StoreError(
                f"store {url} already exists; pass resume=True (cache-teacher --resume) to finish "
                "its unwritten shards, or choose another URL"
            )
        stored = StoreContract.from_dict(existing)
        if stored.schema_version != contract.schema_version:
            raise ContractMismatch(
                f"cannot resume {url}: it was written with store schema {stored.schema_version}, "
                f"this bevkd writes schema {contract.schema_version}; re-cache into a new URL"
            )
        if stored.to_dict() != contract.to_dict():
            diffs = stored.differences(contract) + contract.differences(stored)
            codec = [
                f"{a.name}: {a.codec} != {b.codec}"
                for a, b in zip(stored.fields, contract.fields, strict=False)
                if a.codec != b.codec
            ]
            detail = "; ".join(dict.fromkeys(diffs + codec)) or "field order differs"
            raise ContractMismatch(
                f"cannot resume {url}: its contract differs from this run's: {detail}"
            )
        if existing["frames_sha256"] != frames_hash:
            raise StoreError(
                f"cannot resume {url}: it was created for a different frame list; use a new URL"
            )
        if int(existing["shard_size"]) != shard_size:
            raise StoreError(
                f"cannot resume {url}: shard_size {existing['shard_size']} != {shard_size}"
            )
        return cls.open(url, storage_options)

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> StoreWriter:
        """Re-open a created store for writing shards (e.g. in a dask worker)."""
        import zarr

        store = open_zarr_store(url, storage_options, read_only=False)
        attrs = read_root_attrs(store)
        if attrs is None or attrs.get("bevkd_store") != STORE_MARKER:
            raise StoreError(
                f"{url}: no complete bevkd store here; create it first (cache-teacher)"
            )
        if int(attrs["schema_version"]) != SCHEMA_VERSION:
            raise StoreError(
                f"{url}: schema version {attrs['schema_version']}, this writer writes {SCHEMA_VERSION}"
            )
        return cls(url, zarr.open_group(store, mode="r+"), attrs, storage_options)

    @classmethod
    def reopen(cls, url: str, storage_options: dict[str, Any] | None = None) -> StoreWriter:
        """:meth:`open`, reusing this process's writer of the same store while the store's
        root attrs are unchanged. A worker writes many shards of one store, and re-opening
        its ~60 arrays costs more per shard than encoding a frame."""
        import json

        key = (str(url), json.dumps(storage_options or {}, sort_keys=True, default=str))
        with _REOPEN_LOCK:
            cached = _OPEN_WRITERS.get(key)
            if cached is not None:
                store = open_zarr_store(url, storage_options, read_only=False)
                if read_root_attrs(store) == cached._attrs:
                    return cached
            writer = cls.open(url, storage_options)
            _OPEN_WRITERS[key] = writer
            return writer

    # -- shards --------------------------------------------------------------------------

    @property
    def num_shards(self) -> int:
        return -(-self.num_frames // self.shard_size)

    def shard_frames(self, shard_id: int) -> range:
        if not 0 <= shard_id < self.num_shards:
            raise StoreError(
                f"store {self.url}: shard {shard_id} out of range 0..{self.num_shards - 1}"
            )
        start = shard_id * self.shard_size
        return range(start, min(start + self.shard_size, self.num_frames))

    def rows_for(
        self, shard_id: int, field: str, skipped: dict[int, str] | None = None
    ) -> list[int]:
        """Frame indices whose rows ``write_shard`` expects for ``field``, in order.

        The shard's frames, minus ``skipped`` ones, and for ``labeled_only`` fields minus
        frames without labels. ``arrays[field]`` is ``(len(rows), *shape)``.
        """
        spec = self.contract.field(field)
        skip = skipped or {}
        return [
            i for i in self.shard_frames(shard_id)
            if i not in skip and (self._has_label[i] or not spec.labeled_only)
        ]  # fmt: skip

    def pending_shards(self) -> list[int]:
        marked = layout.marked_shards(self._group.store)
        return [s for s in range(self.num_shards) if s not in marked]

    def is_written(self, shard_id: int) -> bool:
        return bool(self._group[layout.MARKS][shard_id] == 1)

    def _array(self, key: str) -> Any:
        if key not in self._arrays:
            with layout.writing_config():
                self._arrays[key] = self._group[key]
        return self._arrays[key]

    def write_shard(
        self,
        shard_id: int,
        arrays: dict[str, np.ndarray],
        boxes: dict[str, list[np.ndarray]] | None = None,
        skipped: dict[int, str] | None = None,
    ) -> None:
        """Write one whole shard, then mark it written.

        ``arrays[name]``: float32 ``(len(rows_for(shard_id, name, skipped)), *spec.shape)``
        for every spatial field; ``boxes[name]``: a list of ``(N_i, 11)`` rows, one per row
        frame. ``skipped``: frame index -> reason; those frames get no field data.
        """
        frames = self.shard_frames(shard_id)
        if self.is_written(shard_id):
            raise ShardAlreadyWritten(
                f"store {self.url}: shard {shard_id} (frames {frames.start}-{frames.stop - 1}) is "
                "already marked written; a shard is written once, by one task"
            )
        skipped = {int(k): str(v) for k, v in (skipped or {}).items()}
        if bad := [i for i in skipped if i not in frames]:
            raise StoreError(
                f"store {self.url}: skipped frames {bad} are not in shard {shard_id} ({frames})"
            )
        given = {**arrays, **(boxes or {})}
        if unknown := sorted(set(given) - set(self.contract.field_names)):
            raise StoreError(
                f"store {self.url}: unknown fields {unknown}; the contract has {list(self.contract.field_names)}"
            )
        # Fields encode and write in parallel: numpy's loops, zstd and file writes release the GIL.
        with ThreadPoolExecutor(self.threads) as pool:
            per_field = pool.map(
                lambda spec: self._write_field(spec, shard_id, given.get(spec.name), skipped),
                self.contract.fields,
            )
            writes = [w for field_writes in per_field for w in field_writes]
        whole = slice(frames.start, frames.stop)
        writes.append(
            (
                layout.index_key("skipped"),
                whole,
                np.array([i in skipped for i in frames], dtype=bool),
            )
        )
        writes.append(
            (
                layout.index_key("skip_reason"),
                whole,
                np.array([skipped.get(i, "") for i in frames], dtype=object),
            )
        )
        self._write_with_zarr(writes)
        if is_local(self.url):
            os.sync()  # the data must be durable before the mark says so
        self._array(layout.MARKS)[shard_id] = 1

    # -- repair --------------------------------------------------------------------------

    def unmark(self, shards: Sequence[int]) -> list[int]:
        """Mark ``shards`` unwritten, so the next resume rewrites them whole; return them.

        The store stops being finalized first (a finalized store promises every shard), so a
        crash in between leaves an unfinalized store whose marks are still true.
        """
        chosen = sorted({int(s) for s in shards})
        for shard in chosen:
            self.shard_frames(shard)  # range check
        if not chosen:
            return []
        self._attrs = layout.update_attrs(self._group, {"finalized": False})
        marks = self._array(layout.MARKS)
        raw = self._group.store

        async def delete() -> None:
            await asyncio.gather(*(raw.delete(layout.chunk_key(marks, (s,))) for s in chosen))

        run_sync(delete())
        return chosen

    def rewrite_index(self, tokens: Sequence[str], scenes: Sequence[str], splits: Sequence[str],
                      has_label: Sequence[bool]) -> None:  # fmt: skip
        """Rewrite the frame index (token, scene, split, has_label) from the frame list the
        store was created for (refused for any other list)."""
        if frames_sha256(tokens, scenes, splits, has_label) != self._attrs["frames_sha256"]:
            raise StoreError(
                f"store {self.url}: cannot rewrite its index from another frame list than the "
                "one it was created for"
            )
        values = {
            "token": np.asarray(list(tokens), dtype=object),
            "scene": np.asarray(list(scenes), dtype=object),
            "split": np.asarray(list(splits), dtype=object),
            "has_label": np.asarray(has_label, dtype=bool),
        }
        self._write_with_zarr([(layout.index_key(k), slice(None), v) for k, v in values.items()])
        self._has_label = values["has_label"]

    def rewrite_metadata(self, keys: Sequence[str]) -> None:
        """Rewrite the ``zarr.json`` of these arrays as creation wrote them (see
        :func:`~bevkd.storage.layout.expected_metadata`)."""
        import json

        from zarr.core.buffer import default_buffer_prototype

        expected = layout.expected_metadata(
            self.contract.fields, self.num_frames, self.shard_size, self.contract.schema_version
        )
        if unknown := sorted(set(keys) - set(expected)):
            raise StoreError(f"store {self.url}: no declared arrays {unknown}")
        proto = default_buffer_prototype()
        raw = self._group.store

        async def put() -> None:
            await asyncio.gather(
                *(
                    raw.set(
                        f"{k}/zarr.json",
                        proto.buffer.from_bytes(json.dumps(expected[k], indent=2).encode()),
                    )
                    for k in keys
                )
            )

        run_sync(put())
        self._arrays.clear()
        self._encoders.clear()

    def _encoder(self, key: str) -> ChunkEncoder | None:
        with self._lock:
            if key not in self._encoders:
                self._encoders[key] = ChunkEncoder.for_array(self._array(key))
            return self._encoders[key]

    def _write_field(
        self, spec: FieldSpec, shard_id: int, value: Any, skipped: dict[int, str]
    ) -> list[tuple[str, slice | int, np.ndarray]]:
        """Encode one field of a shard and put its whole chunks of the store's own format
        (:mod:`~bevkd.storage.fastwrite`); return the writes left for zarr."""
        rest: list[tuple[str, slice | int, np.ndarray]] = []
        objects: list[tuple[str, bytes]] = []
        for key, sel, data in self._field_writes(spec, shard_id, value, skipped):
            encoder = self._encoder(key)
            chunks = encoder.chunks(sel, data) if encoder is not None else None
            if chunks is None:
                rest.append((key, sel, data))
            else:
                objects += chunks
        put_objects(self._group.store, objects)
        return rest

    def _write_with_zarr(self, writes: list[tuple[str, slice | int, np.ndarray]]) -> None:
        """Writes in one event-loop round trip (zarr writes them concurrently)."""
        if not writes:
            return
        arrays = [(self._array(key)._async_array, sel, value) for key, sel, value in writes]

        async def run() -> None:
            await asyncio.gather(*(a.setitem(sel, value) for a, sel, value in arrays))

        run_sync(run())

    def _field_writes(
        self, spec: FieldSpec, shard_id: int, value: Any, skipped: dict[int, str]
    ) -> list[tuple[str, slice | int, np.ndarray]]:
        """Encode one field of a shard; return its (array key, selection, values) writes."""
        frames = self.shard_frames(shard_id)
        rows = self.rows_for(shard_id, spec.name, skipped)
        where = f"store {self.url}, shard {shard_id}, field {spec.name!r}"
        if value is None:
            if rows:
                raise StoreError(f"{where}: missing; expected rows for frames {rows}")
            value = [] if spec.kind == "boxes" else np.zeros((0, *spec.shape), np.float32)
        if spec.kind == "boxes":
            if len(value) != len(rows):
                raise StoreError(f"{where}: {len(value)} box arrays for {len(rows)} frames {rows}")
            parts = codecs.encode_boxes(spec, list(value), rows)
            flat = [np.asarray(v, np.float32).reshape(-1, spec.shape[1]) for v in value]
            original = np.concatenate(flat) if flat else np.zeros((0, spec.shape[1]), np.float32)
            stats, _ = shard_stats(original, original)
            nan = np.array([np.isnan(v).sum() for v in flat], np.int32)
        else:
            value = np.asarray(value)
            if value.shape != (len(rows), *spec.shape):
                raise StoreError(
                    f"{where}: got shape {value.shape}, expected {(len(rows), *spec.shape)} "
                    f"(rows for frames {rows}: the shard minus skipped{', minus unlabeled' if spec.labeled_only else ''} frames)"
                )
            value = value.astype(np.float32, copy=False)
            encoded = codecs.encode_decoded(spec, value)
            parts = encoded.parts
            stats, nan = shard_stats(
                value, encoded.decoded, encoded.extrema, encoded.decoded_range,
                overwrite_decoded=encoded.owns_decoded,
            )  # fmt: skip
        writes: list[tuple[str, slice | int, np.ndarray]] = []
        slot = {frame: k for k, frame in enumerate(rows)}
        whole = slice(frames.start, frames.stop)
        for part, data in parts.items():
            key = layout.field_key(spec.name, part)
            if layout.chunk_rows(spec, part):
                for start, stop in _runs(rows):
                    writes.append(
                        (key, slice(start, stop), data[slot[start] : slot[start] + stop - start])
                    )
            else:  # one chunk per shard: write it whole, sentinel in rows not written
                block = layout.empty_rows(spec, part, len(frames))
                block[[i - frames.start for i in rows]] = data
                writes.append((key, whole, block))
        counts = np.full(len(frames), -1, np.int32)
        counts[[i - frames.start for i in rows]] = nan
        writes.append((layout.field_key(spec.name, "nan_count"), whole, counts))
        writes.append((layout.field_key(spec.name, "shard_stats"), shard_id, stats))
        return writes

    def finalize(self) -> dict[str, Any]:
        """Record stats, codec errors, sizes and skipped frames; consolidate metadata.

        Fails (leaving the store unfinalized) if shards are unwritten or any field has NaN.
        """
        from bevkd.storage.finalize import finalize_store

        self.check_creator()
        return finalize_store(
            self.url, self._group, self.contract, self.num_shards, self.storage_options
        )


def _canonical(value: Any) -> str:
    """JSON text of attrs as stored (tuples become lists on the way), for comparing."""
    import json

    return json.dumps(value, sort_keys=True, default=str)


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """Contiguous [start, stop) runs of sorted frame indices."""
    out: list[tuple[int, int]] = []
    for i in rows:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


@contextmanager
def writer_lock(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[None]:
    """Hold the store's writer lock for one run (cache-teacher, store copy); a second run on
    the same store fails at once, naming the holder, instead of reading the first one's
    half-made store as corruption.

    Local stores: an exclusive ``flock`` on ``<store>.lock`` beside it. Object stores: a
    lease object ``<store>.lock`` taken by a conditional write (:mod:`bevkd.storage.lease`).
    """
    if not is_local(url):
        from bevkd.storage.lease import object_store_lease

        with object_store_lease(url, storage_options):
            yield
        return
    import fcntl
    import socket

    from bevkd.pipeline.provenance import now_iso
    from bevkd.storage.remote import local_path

    path = local_path(url)
    lock = path.parent / f"{path.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StoreError(
                f"store {url} is being written by another cache-teacher ({holder}); wait for it "
                "to finish (a rerun afterwards resumes and skips what it wrote), or choose "
                "another store.url"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {now_iso()}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
