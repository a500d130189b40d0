"""Retries for object stores: every request to a remote store survives transient failures.

Object stores answer 500, 503 SlowDown, reset connections and cut bodies short as a matter of
course. The client libraries under zarr retry some of these themselves (botocore a few times,
s3fs its own short list), but with no deadline bevkd controls and no word of which frame
suffered. :class:`RetryingStore` wraps every remote zarr store bevkd opens
(:func:`bevkd.storage.remote.open_zarr_store`) and retries each request on a transient
failure, with bounded exponential backoff and full jitter, until ``attempts`` tries or
``deadline_s`` seconds, whichever comes first. Then it raises :class:`StoreIOError`, naming
the object, the tries, the time spent and the last failure; the reader adds the frame, token
and field. What is not transient (a missing object, a refused credential) is raised at once.

A body that arrives whole but wrong is not the transport's business: the reader's crc32c
check catches it and reads the object again (:func:`reread_corrupt`), under the same policy.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from bevkd.storage.schema import StoreError

if TYPE_CHECKING:
    from bevkd.pipeline.config import Config

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How long one object request may keep failing before bevkd gives up on it.

    ``attempts`` counts tries (the first included); the wait before try ``k + 1`` is drawn
    uniformly from ``[0, min(max_delay_s, base_delay_s * 2**k)]`` ("full jitter"), so many
    readers that failed together do not retry together.
    """

    attempts: int = 10
    deadline_s: float = 300.0
    base_delay_s: float = 0.2
    max_delay_s: float = 20.0

    def delay(self, tries: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2 ** (tries - 1)))


_DEFAULT = RetryPolicy()
_LOCK = threading.Lock()


def set_default_policy(policy: RetryPolicy) -> None:
    """The policy of stores opened from now on in this process (a command sets it from ``io:``)."""
    global _DEFAULT
    _DEFAULT = policy


def default_policy() -> RetryPolicy:
    return _DEFAULT


def use_config(cfg: Config) -> RetryPolicy:
    """Make ``cfg.io``'s retry budget this process's policy (each command, each dask task)."""
    policy = RetryPolicy(attempts=cfg.io.retry_attempts, deadline_s=cfg.io.retry_deadline_s)
    set_default_policy(policy)
    return policy


class StoreIOError(StoreError):
    """A request to a remote store kept failing until its retry budget ran out. ``key``: the
    object's address (empty when rebuilt from its message alone, as torch does when it
    re-raises a DataLoader worker's error in the main process)."""

    def __init__(self, message: str, key: str = ""):
        super().__init__(message)
        self.key = key


@dataclass
class RetryStats:
    """Counts for one process: requests made, retries spent, requests given up."""

    requests: int = 0
    retries: int = 0
    rereads: int = 0
    failures: int = 0

    def add(self, **counts: int) -> None:
        with _LOCK:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        with _LOCK:
            return dict(vars(self))


STATS = RetryStats()

# Errors a retry cannot mend: the object is not there, or the caller may not have it.
_PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, KeyError)
# Libraries whose every error is a transport failure (a reset, a timeout, a cut body, a 5xx).
_TRANSPORT_MODULES = ("aiohttp", "botocore", "aiobotocore", "urllib3", "http.client", "s3fs")


def is_transient(exc: BaseException) -> bool:
    """Whether another try may succeed: server errors, throttling, resets, timeouts, cut bodies."""
    if isinstance(exc, (StoreIOError, *_PERMANENT)):
        return False
    if isinstance(exc, OSError | asyncio.TimeoutError | TimeoutError | ConnectionError):
        return True
    module = type(exc).__module__ or ""
    return module.startswith(_TRANSPORT_MODULES)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no reply before the deadline"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and text[0] else type(exc).__name__


async def call_with_retries(
    what: str, key: str, call: Callable[[], Awaitable[T]], policy: RetryPolicy, rng: random.Random
) -> T:
    """``await call()`` until it succeeds, a failure is permanent, or the budget runs out."""
    start = time.monotonic()
    tries = 0
    while True:
        tries += 1
        STATS.add(requests=1)
        left = policy.deadline_s - (time.monotonic() - start)
        try:
            # The client library under zarr retries some failures itself, within one of our
            # tries; the deadline bounds those too.
            return await asyncio.wait_for(call(), timeout=max(left, 0.001))
        except Exception as exc:
            if not is_transient(exc):
                raise
            elapsed = time.monotonic() - start
            wait = policy.delay(tries, rng)
            if tries >= policy.attempts or elapsed + wait > policy.deadline_s:
                STATS.add(failures=1)
                raise StoreIOError(
                    f"{what} {key}: failed {tries} time{'s' * (tries > 1)} in {elapsed:.1f} s (retry budget: "
                    f"{policy.attempts} tries, {policy.deadline_s:g} s; config io.retry_attempts, "
                    f"io.retry_deadline_s); last failure: {_describe(exc)}",
                    key,
                ) from exc
            STATS.add(retries=1)
            await asyncio.sleep(wait)


class RetryingStore(WrapperStore[Any]):
    """A zarr store whose every request retries transient failures under a :class:`RetryPolicy`."""

    def __init__(self, store: Any, policy: RetryPolicy | None = None, url: str = ""):
        super().__init__(store)
        self.policy = policy or default_policy()
        self.url = url
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"RetryingStore({self._store!r}, {self.policy})"

    def with_read_only(self, read_only: bool = False) -> RetryingStore:
        return RetryingStore(self._store.with_read_only(read_only), self.policy, self.url)

    def retried(
        self, what: str, key: str, call: Callable[[], Awaitable[T]]
    ) -> Coroutine[Any, Any, T]:
        """``await call()`` under this store's policy; ``what`` and ``key`` (relative to the
        store) name the request in the error. For requests zarr's Store API has no method for
        (a listing with sizes, a HEAD of an object's metadata)."""
        where = f"{self.url.rstrip('/')}/{key}" if self.url else key
        return call_with_retries(what, where, call, self.policy, self._rng)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        return await self.retried("GET", key, lambda: self._store.get(key, prototype, byte_range))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(
            await asyncio.gather(*(self.get(key, prototype, rng) for key, rng in key_ranges))
        )

    async def exists(self, key: str) -> bool:
        return await self.retried("HEAD", key, lambda: self._store.exists(key))

    async def set(self, key: str, value: Buffer) -> None:
        # A PUT is idempotent: repeating one whose reply was lost writes the same bytes again.
        await self.retried("PUT", key, lambda: self._store.set(key, value))

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await self.retried("PUT", key, lambda: self._store.set_if_not_exists(key, value))

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        await asyncio.gather(*(self.set(key, value) for key, value in values))

    async def delete(self, key: str) -> None:
        await self.retried("DELETE", key, lambda: self._store.delete(key))

    async def delete_dir(self, prefix: str) -> None:
        await self.retried("DELETE", prefix + "/", lambda: self._store.delete_dir(prefix))

    async def _listed(self, prefix: str, listing: Callable[[], AsyncIterator[str]]) -> list[str]:
        async def collect() -> list[str]:
            return [key async for key in listing()]

        # A listing that fails halfway is redone whole: its pages are not resumable here.
        return await self.retried("LIST", prefix or "/", collect)

    async def list(self) -> AsyncIterator[str]:  # type: ignore[override]
        for key in await self._listed("", self._store.list):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:  # type: ignore[override]
        for key in await self._listed(prefix, lambda: self._store.list_prefix(prefix)):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:  # type: ignore[override]
        for key in await self._listed(prefix, lambda: self._store.list_dir(prefix)):
            yield key

    async def is_empty(self, prefix: str) -> bool:
        return await self.retried("LIST", prefix or "/", lambda: self._store.is_empty(prefix))


def retrying(store: Any) -> RetryingStore:
    """``store`` itself if it already retries, else ``store`` wrapped under the process policy."""
    return store if isinstance(store, RetryingStore) else RetryingStore(store)


def base_store(store: Any) -> Any:
    """The store under any :class:`RetryingStore` wrapper (for its ``fs`` and ``path``)."""
    while isinstance(store, WrapperStore):
        store = store._store
    return store


def backoff_sleep(tries: int, policy: RetryPolicy, rng: random.Random | None = None) -> None:
    """Sleep before re-reading an object that failed its checksum (synchronous callers)."""
    time.sleep(policy.delay(tries, rng or random.Random()))
