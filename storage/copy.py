"""``copy``: a resumable, verified copy of a store between any two URLs (local, S3, ...).

Objects are copied as bytes (no decode/re-encode), chunks first and the root ``zarr.json``
last, so an interrupted copy is not mistaken for a store. A rerun skips objects already
at the destination with the same bytes (the same size and blake2b digest: a damaged or stale
object of the right size is copied again, so a rerun repairs). Afterwards the destination is
verified: same keys and sizes as the source, metadata byte-identical, and every chunk decoded
through its crc32c (:func:`bevkd.storage.verify.verify_store`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from bevkd.storage.layout import STORE_MARKER, read_root_attrs
from bevkd.storage.remote import object_sizes, open_zarr_store, run_sync
from bevkd.storage.schema import StoreError
from bevkd.storage.verify import VerifyReport, summarize, verify_store

ROOT_META = "zarr.json"


@dataclass
class CopyResult:
    copied: int
    skipped: int
    bytes_copied: int
    report: VerifyReport


def copy_store(
    src: str,
    dst: str,
    src_options: dict[str, Any] | None = None,
    dst_options: dict[str, Any] | None = None,
    concurrency: int = 16,
) -> CopyResult:
    """Copy ``src`` to ``dst`` (resuming a partial copy) and verify ``dst``; raise if it fails.
    The destination's writer lock is held throughout (:func:`~bevkd.storage.writer.writer_lock`)."""
    from bevkd.storage.writer import writer_lock

    with writer_lock(dst, dst_options):
        return _copy_store(src, dst, src_options, dst_options, concurrency)


def _copy_store(src: str, dst: str, src_options: dict[str, Any] | None,
                dst_options: dict[str, Any] | None, concurrency: int) -> CopyResult:  # fmt: skip
    source = open_zarr_store(src, src_options, read_only=True)
    attrs = read_root_attrs(source)
    if attrs is None or attrs.get("bevkd_store") != STORE_MARKER:
        raise StoreError(f"copy: {src} is not a complete bevkd store")
    target = open_zarr_store(dst, dst_options, read_only=False)
    dst_attrs = read_root_attrs(target)
    if dst_attrs is not None and dst_attrs.get("frames_sha256") != attrs.get("frames_sha256"):
        raise StoreError(
            f"copy: {dst} already holds a different store; choose an empty destination"
        )
    src_sizes = object_sizes(source)
    src_keys = sorted(src_sizes)
    dst_sizes = object_sizes(target)
    # Metadata is small and may have changed (e.g. the source was finalized since): always copy it.
    todo = [k for k in src_keys if dst_sizes.get(k) != src_sizes[k] or k.endswith(ROOT_META)]
    # An object of the right size may still hold other bytes (a damaged or stale copy): compare
    # digests of the rest, and copy those that differ.
    queued = set(todo)
    same_size = [k for k in src_keys if k not in queued]
    if same_size:
        src_digests = _digests(source, same_size, concurrency)
        dst_digests = _digests(target, same_size, concurrency)
        todo += [k for k in same_size if src_digests[k] != dst_digests[k]]
    chunks = [k for k in todo if not k.endswith(ROOT_META)]
    metas = sorted(
        (k for k in todo if k.endswith(ROOT_META)), key=lambda k: (k == ROOT_META, -k.count("/"))
    )
    copied = _copy_keys(source, target, chunks, concurrency) + _copy_keys(source, target, metas, 1)
    report = _check_copy(dst, dst_options, src_sizes, target, source)
    if not report.ok:
        raise StoreError(
            f"copy {src} -> {dst}: verification failed: {summarize(report)}; rerun copy to repair"
        )
    return CopyResult(len(todo), len(src_keys) - len(todo), copied, report)


def _digests(store: Any, keys: list[str], concurrency: int) -> dict[str, str]:
    """key -> blake2b digest of the object's bytes ("" if it is gone)."""
    import hashlib

    from zarr.core.buffer import default_buffer_prototype

    proto = default_buffer_prototype()

    async def run() -> list[str]:
        gate = asyncio.Semaphore(concurrency)

        async def one(key: str) -> str:
            async with gate:
                data = await store.get(key, proto)
                return "" if data is None else hashlib.blake2b(data.to_bytes()).hexdigest()

        return list(await asyncio.gather(*(one(k) for k in keys)))

    return dict(zip(keys, run_sync(run()), strict=True))


def _copy_keys(source: Any, target: Any, keys: list[str], concurrency: int) -> int:
    """Copy objects; return bytes copied."""
    from zarr.core.buffer import default_buffer_prototype

    proto = default_buffer_prototype()

    async def run() -> int:
        gate = asyncio.Semaphore(concurrency)

        async def one(key: str) -> int:
            async with gate:
                data = await source.get(key, proto)
                if data is None:
                    raise StoreError(f"copy: {key} vanished from the source during the copy")
                await target.set(key, data)
                return len(data)

        return sum(await asyncio.gather(*(one(k) for k in keys)))

    return run_sync(run())


def _check_copy(dst: str, dst_options: dict[str, Any] | None, src_sizes: dict[str, int], target: Any,
                source: Any) -> VerifyReport:  # fmt: skip
    """Verify the destination and compare its objects with the source's."""
    report = verify_store(dst, dst_options)
    dst_sizes = object_sizes(target)
    for key, size in src_sizes.items():
        if dst_sizes.get(key) != size:
            report.problems.append(
                f"object {key}: {dst_sizes.get(key)} bytes at the destination, {size} at the source"
            )
    metas = [k for k in src_sizes if k.endswith(ROOT_META)]
    from zarr.core.buffer import default_buffer_prototype

    proto = default_buffer_prototype()

    async def differing() -> list[str]:
        async def same(key: str) -> bool:
            a, b = await asyncio.gather(source.get(key, proto), target.get(key, proto))
            return a is not None and b is not None and a.to_bytes() == b.to_bytes()

        flags = await asyncio.gather(*(same(k) for k in metas))
        return [k for k, ok in zip(metas, flags, strict=True) if not ok]

    report.problems += [f"metadata {k} differs from the source" for k in run_sync(differing())]
    return report
