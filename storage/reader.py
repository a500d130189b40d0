"""Reading a teacher store: ``open_store(url, expect) -> TeacherStore``, one frame at a time.

Read-only, safe to pickle (a copy re-opens lazily in the receiving process, so DataLoader
workers each hold their own handles). A frame that should exist but whose chunk is
missing or fails its checksum raises :class:`StoreError` naming the frame and field;
nothing reads back as silent zeros.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from bevkd.storage import codecs, layout
from bevkd.storage.fastread import FastArray, fetch
from bevkd.storage.layout import STORE_MARKER, frames_sha256
from bevkd.storage.remote import (
    is_local,
    open_zarr_store,
    quiet_zarr,
    reach,
    run_sync,
    unreachable,
)
from bevkd.storage.retry import STATS, RetryPolicy, StoreIOError, backoff_sleep, default_policy
from bevkd.storage.schema import (
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    StoreContract,
    StoreError,
)

# Reads in all of a remote chunk that keeps failing its crc32c, where zarr's general read
# path hides the bytes (so two reads of the same damaged object cannot be told apart).
CHECKSUM_TRIES = 3


class FrameSkipped(StoreError):
    """The teacher skipped this frame when the store was written (the reason is recorded)."""


class TeacherStore:
    """A read-only view of one store. Build it with :func:`open_store`."""

    _group: Any  # zarr.Group; its item types are too loose for useful checking

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        expect: StoreContract | None = None,
        check_index: bool = True,
        retry: RetryPolicy | None = None,
    ):
        self.url = str(url)
        self.storage_options = storage_options
        self.retry = retry or default_policy()
        self._expect = expect
        self._check_index = check_index
        self._open()

    def _open(self) -> None:
        import zarr

        store = open_zarr_store(self.url, self.storage_options, read_only=True, retry=self.retry)
        reach(store, self.url)
        try:
            with quiet_zarr():
                self._group = zarr.open_group(store, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StoreError(
                f"{self.url}: no zarr store here; check the URL (and --storage-options)"
            ) from exc
        except Exception as exc:
            if is_local(self.url):
                raise
            raise unreachable(self.url, exc) from exc
        attrs: dict[str, Any] = dict(self._group.attrs.asdict())
        if attrs.get("bevkd_store") != STORE_MARKER:
            state = (
                "half-created (its creation was interrupted)"
                if attrs.get("bevkd_store") == "creating"
                else "not a bevkd teacher store"
            )
            raise StoreError(f"{self.url}: {state}")
        self.attrs = attrs
        self.contract = StoreContract.from_dict(attrs)
        if self._expect is not None:
            self.contract.check_compatible(self._expect, where=f"store {self.url}")
        if self.contract.schema_version not in READABLE_SCHEMA_VERSIONS:
            raise StoreError(
                f"{self.url}: schema version {self.contract.schema_version}; this bevkd reads "
                f"{READABLE_SCHEMA_VERSIONS} (writes {SCHEMA_VERSION}); upgrade bevkd or re-cache"
            )
        self.provenance: dict[str, Any] = attrs.get("provenance", {})
        self.num_frames = int(attrs["num_frames"])
        self.shard_size = int(attrs["shard_size"])
        index = {name: self._index_array(name) for name in layout.INDEX_ONE_CHUNK}
        self.tokens: list[str] = [str(t) for t in index["token"]]
        self.scenes: list[str] = [str(t) for t in index["scene"]]
        self.splits: list[str] = [str(t) for t in index["split"]]
        self.has_label = np.asarray(index["has_label"], dtype=bool)
        self.index_intact = attrs.get("frames_sha256") == frames_sha256(
            self.tokens, self.scenes, self.splits, self.has_label.tolist()
        )
        if self._check_index and not self.index_intact:
            raise StoreError(
                f"{self.url}: its frame index (index/token, scene, split, has_label) does not "
                "match the frame list recorded when the store was created (a chunk is missing or "
                f"was changed); run `bevkd store verify {self.url}`, then `bevkd cache-teacher "
                "--repair` with the store's config to rewrite it"
            )
        self._index = {t: i for i, t in enumerate(self.tokens)}
        self.finalized = bool(attrs.get("finalized"))
        self._skipped: dict[int, str] | None = (
            {int(k): v for k, v in attrs.get("skipped", {}).items()} if self.finalized else None
        )
        self._written: set[int] = set()
        self._arrays: dict[str, Any] = {}
        self._fast: dict[str, FastArray | None] | None = None

    def read_rows(self, key: str, rows: slice | int = slice(None)) -> np.ndarray:
        """``rows`` of the array at ``key`` through zarr. From a remote store, a chunk that
        fails its crc32c is read again (``CHECKSUM_TRIES`` reads in all) before its
        ValueError is raised: the bytes may have been damaged on the way."""
        for tries in range(1, CHECKSUM_TRIES + 1):
            try:
                return np.asarray(self._group[key][rows])
            except ValueError:
                if is_local(self.url) or tries == CHECKSUM_TRIES:
                    raise
                STATS.add(rereads=1)
                backoff_sleep(tries, self.retry)
        raise AssertionError("unreachable")

    def _index_array(self, name: str) -> np.ndarray:
        key = layout.index_key(name)
        try:
            return self.read_rows(key)
        except KeyError:
            raise StoreError(
                f"{self.url}: the index array {key} is missing (its zarr.json is gone); run "
                f"`bevkd store verify {self.url}`, then `bevkd cache-teacher --repair`"
            ) from None
        except ValueError as exc:  # its chunk fails the crc32c check
            raise StoreError(
                f"{self.url}: the index array {key} is corrupt ({exc}); run `bevkd store verify "
                f"{self.url}`, then `bevkd cache-teacher --repair`"
            ) from exc

    # Pickle the address, not the handles: each process opens its own.
    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "storage_options": self.storage_options,
            "expect": self._expect,
            "check_index": self._check_index,
            "retry": self.retry,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url, self.storage_options, self._expect = (
            state["url"],
            state["storage_options"],
            state["expect"],
        )
        self._check_index = state.get("check_index", True)
        self.retry = state.get("retry") or default_policy()
        self._open()

    def __len__(self) -> int:
        return self.num_frames

    @property
    def num_shards(self) -> int:
        return -(-self.num_frames // self.shard_size)

    @property
    def skipped(self) -> dict[int, str]:
        """Frame index -> reason, for frames the teacher skipped."""
        if self._skipped is None:
            mask = np.asarray(self.read_rows(layout.index_key("skipped")), dtype=bool)
            reasons = self.read_rows(layout.index_key("skip_reason"))
            return {int(i): str(reasons[i]) for i in np.flatnonzero(mask)}
        return dict(self._skipped)

    def written_shards(self) -> np.ndarray:
        """``(S,)`` bool: which shards are marked written (all, once finalized)."""
        if self.finalized:
            return np.ones(self.num_shards, dtype=bool)
        marked = layout.marked_shards(self._group.store)
        return np.array([s in marked for s in range(self.num_shards)], dtype=bool)

    def __contains__(self, token: object) -> bool:
        """Whether a frame with this token is in the store."""
        return token in self._index

    def index_of(self, token: str) -> int:
        try:
            return self._index[token]
        except KeyError:
            raise StoreError(f"{self.url}: no frame with token {token!r} in this store") from None

    def _array(self, key: str) -> Any:
        if key not in self._arrays:
            self._arrays[key] = self._group[key]
        return self._arrays[key]

    def _frame_name(self, i: int) -> str:
        return f"frame {i} (token {self.tokens[i]})"

    def _check_frame(self, i: int) -> None:
        shard = i // self.shard_size
        if not self.finalized and shard not in self._written:
            if int(self.read_rows(layout.MARKS, shard)) != 1:
                raise StoreError(
                    f"{self.url}: {self._frame_name(i)} is in shard {shard}, which is not written yet "
                    "(the store is incomplete: run cache-teacher again to resume it)"
                )
            self._written.add(shard)
        if self._skipped is not None:
            reason = self._skipped.get(i)
        else:
            reason = (
                str(self.read_rows(layout.index_key("skip_reason"), i))
                if bool(self.read_rows(layout.index_key("skipped"), i))
                else None
            )
        if reason is not None:
            raise FrameSkipped(
                f"{self.url}: {self._frame_name(i)} was skipped by the teacher: {reason}"
            )

    def read_frame(
        self, index_or_token: int | str, fields: list[str] | tuple[str, ...] | None = None
    ) -> dict[str, np.ndarray]:
        """Decoded float32 fields of one frame: spatial ``(C, H, W)``, boxes ``(N, 11)``.

        ``labeled_only`` fields are absent (not zeros) for frames without labels.
        """
        i = (
            self.index_of(index_or_token)
            if isinstance(index_or_token, str)
            else int(index_or_token)
        )
        if not 0 <= i < self.num_frames:
            raise StoreError(f"{self.url}: frame index {i} out of range 0..{self.num_frames - 1}")
        try:
            return self._read_frame(i, fields)
        except StoreIOError as exc:
            field = exc.key.split("/fields/")[-1].split("/")[0] if "/fields/" in exc.key else None
            what = f"field {field!r}" if field else "the store's index"
            raise StoreIOError(f"{self._frame_name(i)}, {what}: {exc}", exc.key) from exc

    def _read_frame(
        self, i: int, fields: list[str] | tuple[str, ...] | None
    ) -> dict[str, np.ndarray]:
        self._check_frame(i)
        specs = (
            [self.contract.field(f) for f in fields]
            if fields is not None
            else list(self.contract.fields)
        )
        specs = [s for s in specs if self.has_label[i] or not s.labeled_only]
        keys = [(s, part) for s in specs for part in layout.field_parts(s)]
        values = self._read_parts(i, [layout.field_key(s.name, p) for s, p in keys])
        parts: dict[str, dict[str, np.ndarray]] = {s.name: {} for s in specs}
        for (spec, part), value in zip(keys, values, strict=True):
            if isinstance(value, ValueError):
                raise StoreError(
                    f"{self.url}: {self._frame_name(i)}, field {spec.name!r} ({part}): stored chunk is "
                    f"corrupt ({value}); run `bevkd store verify {self.url}` and re-copy or re-cache it"
                ) from value
            if isinstance(value, BaseException):
                raise value
            if value is None or codecs.is_missing(spec, {part: value}):
                raise StoreError(
                    f"{self.url}: {self._frame_name(i)}, field {spec.name!r}: chunk is missing (or holds "
                    f"NaN) although shard {i // self.shard_size} is marked written; run `bevkd store verify "
                    f"{self.url}` and re-copy or re-cache the store"
                )
            parts[spec.name][part] = np.asarray(value)
        out = {}
        for spec in specs:
            value = (
                codecs.decode_boxes(parts[spec.name])
                if spec.kind == "boxes"
                else codecs.decode(spec, parts[spec.name])
            )
            out[spec.name] = value if value.flags.writeable else value.copy()
        return out

    def _read_parts(self, i: int, keys: list[str]) -> list[Any]:
        """Frame ``i``'s row of each array: an array, None (chunk missing) or the ValueError of
        a chunk that failed its crc32c.

        From a remote store, a chunk that fails its checksum is read again (a body damaged in
        transit), under the store's retry policy, until it reads whole, or until two reads
        bring the same wrong bytes (the stored object itself is damaged: more reads cannot
        mend it). Without the bytes at hand (zarr's general path) it is read ``CHECKSUM_TRIES``
        times in all.
        """
        fast = self._fast_arrays(keys)
        values: list[Any] = [None] * len(keys)
        seen: dict[int, set[int]] = {}  # key position -> hashes of the damaged bodies read
        todo = list(range(len(keys)))
        start, tries = time.monotonic(), 0
        while todo:
            tries += 1
            if fast is not None:
                got = self._read_fast(i, [fast[k] for k in todo])
            else:
                got = run_sync(_gather(i, [self._array(keys[k])._async_array for k in todo]))
            again = []
            for k, (value, body) in zip(todo, got, strict=True):
                values[k] = value
                if isinstance(value, ValueError) and (body is None or body not in seen.get(k, ())):
                    again.append(k)
                    seen.setdefault(k, set()).add(body)  # type: ignore[arg-type]
            limit = self.retry.attempts if fast is not None else CHECKSUM_TRIES
            over = tries >= limit or time.monotonic() - start > self.retry.deadline_s
            if not again or is_local(self.url) or over:
                break
            todo = again
            STATS.add(rereads=len(todo))
            backoff_sleep(tries, self.retry)
        return values

    def _fast_arrays(self, keys: list[str]) -> list[FastArray] | None:
        """Lean readers for these arrays, or None if any uses another chunk format."""
        if self._fast is None:
            self._fast = {}
        for key in keys:
            if key not in self._fast:
                array = self._array(key)
                self._fast[key] = FastArray(array) if FastArray.supports(array) else None
        found = [self._fast[k] for k in keys]
        return None if any(f is None for f in found) else found  # type: ignore[return-value]

    def _read_fast(self, i: int, arrays: list[FastArray]) -> list[tuple[Any, int | None]]:
        """(row or None or the ValueError, hash of a body that failed its check) per array."""
        raws = fetch(self._group.store, [a.key(i) for a in arrays])
        out: list[tuple[Any, int | None]] = []
        for array, raw in zip(arrays, raws, strict=True):
            try:
                out.append((None if raw is None else array.decode(raw, i), None))
            except ValueError as exc:  # crc32c mismatch or undecodable bytes
                out.append((exc, hash(raw)))
        return out


async def _gather(i: int, arrays: list[Any]) -> list[tuple[Any, int | None]]:
    # One event-loop round trip for every array of the frame (they are fetched concurrently).
    got = await asyncio.gather(*(a.getitem(i) for a in arrays), return_exceptions=True)
    return [(value, None) for value in got]


def open_store(
    url: str,
    expect: StoreContract | None = None,
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy | None = None,
) -> TeacherStore:
    """Open a store read-only; with ``expect``, fail unless its contract is compatible.
    ``retry``: how a remote store's requests retry (default: this process's policy)."""
    return TeacherStore(url, storage_options=storage_options, expect=expect, retry=retry)
