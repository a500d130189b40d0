"""One writer per store on an object store: a lease object beside the store.

A local store is locked with ``flock`` (:func:`bevkd.storage.writer.writer_lock`). An object
store has no lock, but S3 (since 2024) and GCS take conditional writes: a PUT with
``If-None-Match: *`` succeeds only if the object does not exist, and one with ``If-Match:
<etag>`` only if it was not changed since. On these:

- a run takes ``<store>.lock`` by creating it conditionally; a second run's create fails and
  it stops, naming the holder (host, pid, start);
- the holder renews the lease every ``ttl / 4`` seconds (a conditional PUT on its own ETag);
  a lease not renewed for ``ttl`` seconds is stale (its run died) and the next run takes it
  over, again conditionally, so of two runs that find it stale exactly one gets it;
- on exit the holder deletes the lease if it is still its own.

Every take is read back: an endpoint that ignores the condition (some S3-compatible servers
do; moto checks, then puts, without a lock) shows another holder's id and the run stops. An
endpoint that refuses the conditional PUT outright gets an unconditional one and a warning;
there a collision is caught after the fact by the store's own record of who created it
(:meth:`bevkd.storage.writer.StoreWriter.check_creator`), never merged silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bevkd.storage.remote import open_zarr_store, run_sync
from bevkd.storage.retry import base_store
from bevkd.storage.schema import StoreError

LEASE_TTL_S = 120.0
LEASE_SUFFIX = ".lock"


class LeaseHeld(StoreError):
    """Another run holds the store's writer lease."""


class Lease:
    """This run's hold on ``<store>.lock`` (see the module's notes)."""

    def __init__(
        self, url: str, storage_options: dict[str, Any] | None, ttl_s: float = LEASE_TTL_S
    ):
        under = base_store(open_zarr_store(url, storage_options, read_only=False))
        self.url = url
        self.fs = under.fs
        self.path = under.path.rstrip("/") + LEASE_SUFFIX
        self.ttl_s = ttl_s
        self.id = uuid.uuid4().hex
        self.holder = f"pid {os.getpid()} on {socket.gethostname()}"
        self.since = time.time()
        self.etag: str | None = None
        self.conditional = True  # False where the endpoint refused the conditional create
        # If-Match is S3's; elsewhere (GCS, memory) renewals and take-overs are put plainly
        # and read back, which still catches a second holder.
        protocol = self.fs.protocol
        self.if_match = "s3" in (protocol if isinstance(protocol, tuple | list) else (protocol,))
        self.lost: str | None = None  # who took the lease from this run, if anyone did
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({
            "id": self.id, "holder": self.holder, "since": self.since, "renewed": time.time(),
            "ttl_s": self.ttl_s,
        }).encode()  # fmt: skip

    async def _read(self) -> tuple[dict[str, Any], str] | None:
        try:
            info = await self.fs._info(self.path, refresh=True)
            raw = await self.fs._cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            record = {"holder": "an unreadable lease", "renewed": 0.0}
        return record, str(info.get("ETag") or info.get("etag") or "")

    def current(self) -> dict[str, Any] | None:
        """The lease record as stored now (None: nobody holds the store)."""
        found = run_sync(self._read())
        return None if found is None else found[0]

    async def _put(self, **condition: Any) -> None:
        await self.fs._pipe_file(self.path, self._body(), **condition)

    def acquire(self) -> None:
        run_sync(self._acquire())
        self._thread = threading.Thread(target=self._renew_loop, daemon=True, name="bevkd-lease")
        self._thread.start()

    async def _acquire(self) -> None:
        try:
            await self._put(mode="create")
        except FileExistsError:
            await self._take_over_if_stale()
        except (NotImplementedError, TypeError, ValueError) as exc:
            self.conditional = False
            warnings.warn(
                f"store {self.url}: the object store refused a conditional write ({exc}); "
                "the writer lease is put unconditionally, so two runs creating this store at "
                "the same moment are caught after the fact (by the store's creator record), "
                "not prevented",
                stacklevel=2,
            )
            await self._put()
        if (other := await self._read_back()) is not None:
            raise LeaseHeld(self._held_message(other) + " (it took the lease at the same moment)")

    async def _take_over_if_stale(self) -> None:
        found = await self._read()
        if found is None:  # released between our create and our read: try once more
            await self._put(mode="create")
            return
        record, etag = found
        age = time.time() - float(record.get("renewed", 0.0))
        if age <= float(record.get("ttl_s", self.ttl_s)):
            raise LeaseHeld(self._held_message(record))
        try:  # only if nobody renewed or took it meanwhile
            await (self._put(IfMatch=etag) if self.if_match else self._put())
        except (FileExistsError, OSError) as exc:
            raise LeaseHeld(self._held_message(record) + " (it was renewed just now)") from exc
        warnings.warn(
            f"store {self.url}: took over a stale writer lease of {record.get('holder')} "
            f"(not renewed for {age:.0f} s; its run is taken to have died)",
            stacklevel=2,
        )

    async def _read_back(self) -> dict[str, Any] | None:
        """None if the stored lease is this run's (its ETag is kept for the next renewal);
        otherwise the record of whoever holds it now."""
        found = await self._read()
        if found is not None and found[0].get("id") == self.id:
            self.etag = found[1]
            return None
        return found[0] if found else {"holder": "nobody (the lease is gone)"}

    def _held_message(self, record: dict[str, Any]) -> str:
        since = record.get("since")
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if since else "?"
        return (
            f"store {self.url} is being written by another run (cache-teacher or store copy; "
            f"{record.get('holder')}, "
            f"since {when}; lease {self.path}); wait for it to finish (a rerun afterwards resumes "
            f"and skips what it wrote), or choose another store.url. A lease not renewed for "
            f"{record.get('ttl_s', self.ttl_s):g} s is stale and is taken over"
        )

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                run_sync(self._renew())
            except LeaseHeld as exc:
                self.lost = str(exc)
                return
            except Exception:  # the store could not be reached: renewed at the next beat
                continue

    async def _renew(self) -> None:
        """Put the lease again (on S3 only if its ETag is still ours) and read it back: the
        read decides, so a renewal whose reply was lost is still this run's."""
        # Refused (another run took it) or its reply lost: the read-back tells which.
        with contextlib.suppress(FileExistsError, OSError):
            conditional = self.conditional and self.if_match
            await (self._put(IfMatch=self.etag) if conditional else self._put())
        if (other := await self._read_back()) is not None:
            raise LeaseHeld(
                f"store {self.url}: this run lost its writer lease to {other.get('holder')}"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

        async def drop() -> None:
            found = await self._read()
            if found is not None and found[0].get("id") == self.id:
                await self.fs._rm_file(self.path)

        try:
            run_sync(drop())
        except Exception as exc:  # the lease goes stale on its own; the run's work is done
            warnings.warn(
                f"store {self.url}: could not delete the writer lease ({exc})", stacklevel=2
            )


@contextmanager
def object_store_lease(
    url: str, storage_options: dict[str, Any] | None = None, ttl_s: float = LEASE_TTL_S
) -> Iterator[Lease]:
    """Hold ``url``'s writer lease for the block; raise :class:`LeaseHeld` if another run has
    it. If the lease was taken from this run meanwhile (it stalled past the ttl), the block's
    end raises, so the run does not report success over another writer's store."""
    lease = Lease(url, storage_options, ttl_s)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()
    if lease.lost:
        raise LeaseHeld(lease.lost + "; check the store with `bevkd store verify` and rerun")
