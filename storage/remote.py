"""Store URLs: local paths and fsspec URLs (``s3://``, ``gs://``, ``memory://``) as Zarr stores.

A user's S3 and the tests' loopback S3 (moto) go through the same code: fsspec/s3fs with
``endpoint_url`` (and credentials, if not from the environment) in ``storage_options``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bevkd.storage.schema import StoreError

if TYPE_CHECKING:
    from bevkd.storage.retry import RetryPolicy

T = TypeVar("T")

# LocalStore writes "<key>.<uuid>.partial" then renames; a killed writer can leave one behind.
PARTIAL_SUFFIX = ".partial"


def is_local(url: str) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def local_path(url: str) -> Path:
    text = str(url)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on zarr's own event loop (the loop its fsspec stores are bound to)."""
    from zarr.core.sync import sync

    return sync(coro)


def open_zarr_store(
    url: str,
    storage_options: dict[str, Any] | None = None,
    read_only: bool = True,
    retry: RetryPolicy | None = None,
) -> Any:
    """A zarr ``Store`` for ``url``; ``storage_options`` go to fsspec (ignored for local paths).

    A remote store comes wrapped in a :class:`~bevkd.storage.retry.RetryingStore`: each of its
    requests retries transient failures under ``retry`` (default: the process's policy).
    """
    from zarr.storage import FsspecStore, LocalStore

    from bevkd.storage.retry import RetryingStore

    if is_local(url):
        path = local_path(url)
        if read_only and not path.exists():
            raise StoreError(
                f"store {url}: no such directory; check the path or run cache-teacher first"
            )
        return LocalStore(path, read_only=read_only)
    # No listings cache: fsspec keeps one filesystem object per thread, each with its own
    # cache of directory listings, and a listing cached before another thread (or process)
    # wrote a shard's mark hides that mark from this one (s3fs then even fails a GET of the
    # object, sizing it from the stale listing). A store is written by many at once.
    options = {"use_listings_cache": False, **(storage_options or {})}
    if str(url).startswith(("s3://", "s3a://")):
        # s3fs sizes every whole-object GET with a HEAD first (to split objects larger than
        # its 50 MB block into concurrent ranges); chunks are far smaller, so the HEAD doubles
        # each read's requests and its exposure to faults (measured: 2.23 requests per read).
        options.setdefault("max_concurrency", 1)
    try:
        store = FsspecStore.from_url(str(url), storage_options=options, read_only=read_only)
    except (ImportError, ValueError) as exc:
        raise StoreError(f"store {url}: cannot open this URL through fsspec ({exc})") from exc
    return RetryingStore(store, retry, str(url))


def list_keys(store: Any, prefix: str = "") -> list[str]:
    """Every object key under ``prefix``, without leftover ``.partial`` temporaries."""

    async def collect() -> list[str]:
        return [key async for key in store.list_prefix(prefix)]

    return sorted(k for k in run_sync(collect()) if not k.endswith(PARTIAL_SUFFIX))


def object_sizes(store: Any) -> dict[str, int]:
    """Every object key -> size in bytes, in one listing (one LIST per 1000 keys on S3).

    ``.partial`` temporaries are left out.
    """
    import os

    from zarr.storage import FsspecStore, LocalStore

    from bevkd.storage.retry import base_store, retrying

    wrapper, store = retrying(store), base_store(store)
    if isinstance(store, LocalStore):
        root = str(store.root)
        out = {}
        for folder, _, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                out[os.path.relpath(path, root).replace(os.sep, "/")] = os.path.getsize(path)
    elif isinstance(store, FsspecStore):
        root = store.path.rstrip("/")

        async def find() -> dict[str, Any]:
            return await store.fs._find(root, detail=True, withdirs=False)

        found = run_sync(wrapper.retried("LIST", "", find))
        out = {path[len(root) + 1 :]: int(info["size"]) for path, info in found.items()}
    else:  # any other zarr store: list, then ask each size
        keys = list_keys(store)

        async def sizes() -> list[int]:
            import asyncio

            return list(await asyncio.gather(*(store.getsize(k) for k in keys)))

        out = dict(zip(keys, run_sync(sizes()), strict=True))
    return {k: v for k, v in out.items() if not k.endswith(PARTIAL_SUFFIX)}


def prefix_bytes(sizes: dict[str, int], prefix: str) -> int:
    """Bytes stored under ``prefix/``."""
    head = prefix.rstrip("/") + "/"
    return sum(v for k, v in sizes.items() if k.startswith(head))


def parse_storage_options(text: str | None = None, endpoint: str | None = None) -> dict[str, Any]:
    """CLI options -> fsspec ``storage_options``: a JSON object, plus an S3 endpoint shortcut.

    ``--storage-options '{"key": "...", "secret": "..."}' --endpoint http://127.0.0.1:9000``
    """
    options: dict[str, Any] = {}
    if text:
        try:
            options = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoreError(
                f"--storage-options must be a JSON object, got {text!r} ({exc.msg})"
            ) from exc
        if not isinstance(options, dict):
            raise StoreError(f"--storage-options must be a JSON object, got {text!r}")
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


@contextmanager
def quiet_zarr() -> Iterator[None]:
    """Silence zarr's notice that consolidated metadata is an extension (we know; it's 1 GET)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


def unreachable(url: str, exc: BaseException) -> StoreError:
    """One line for a remote store that cannot be reached: no credentials, a dead endpoint, a
    missing bucket or a refused request (instead of the client library's long traceback)."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return StoreError(
        f"store {url}: cannot reach it ({type(exc).__name__}{': ' + detail if detail else ''}); "
        "check the endpoint (--endpoint, or endpoint_url in store.storage_options), the "
        "credentials (key/secret in the storage options, or the AWS_* environment) and that the "
        "bucket exists"
    )


def store_url(store: Any) -> str:
    """The URL a zarr store object was opened at, for messages."""
    from zarr.storage import FsspecStore, LocalStore

    from bevkd.storage.retry import base_store

    store = base_store(store)
    if isinstance(store, LocalStore):
        return str(store.root)
    if isinstance(store, FsspecStore):
        protocol = store.fs.protocol
        scheme = protocol[0] if isinstance(protocol, tuple | list) else protocol
        return f"{scheme}://{store.path}"
    return repr(store)


def check_writable(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Fail now, in one line, if a store cannot be written at ``url``: a local path that is a
    file or lies on a read-only location, or a remote store that cannot be reached. Called
    before any teacher loads, so a wrong URL costs a second, not the teachers' start-up."""
    import os
    import tempfile

    if is_local(url):
        path = local_path(url)
        if path.exists() and not path.is_dir():
            raise StoreError(f"store {url} is a file, not a store directory; choose another path")
        place = path
        while not place.exists():
            place = place.parent
        if not place.is_dir():
            raise StoreError(
                f"store {url}: {place} is a file, so no directory can be made under it; "
                "choose another path"
            )
        try:
            with tempfile.TemporaryFile(dir=place):
                pass
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StoreError(
                f"store {url}: cannot write under {place} ({reason}); choose a writable location"
            ) from None
        return
    reach(open_zarr_store(url, storage_options, read_only=False), url)


def reach(store: Any, url: str | None = None) -> None:
    """One request to a remote store (nothing for a local one), raising :func:`unreachable`'s
    one line if it fails. Done before zarr's first read, which sends several requests at once
    and, when they fail, leaves the others to print tracebacks at exit."""
    from zarr.storage import LocalStore

    if isinstance(store, LocalStore):
        return

    from bevkd.storage.retry import base_store

    # One try, not the retry budget: a store that cannot be reached when a run starts is a
    # wrong endpoint, bucket or credential far more often than a passing fault, and the user
    # hears it now rather than after io.retry_deadline_s. Failures after this are retried.
    under = base_store(store)

    async def probe() -> bool:
        return bool(await under.exists("zarr.json"))

    try:
        run_sync(probe())
    except Exception as exc:  # the client library's many failure types: one line for the user
        raise unreachable(url or store_url(store), exc) from exc
