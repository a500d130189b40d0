"""Where things live inside a store, and how its Zarr arrays are created and opened.

::

    store.zarr/                      group; attrs: contract, provenance, finalize results
      index/token, scene, split      (N,) strings, one chunk
      index/has_label                (N,) bool, one chunk
      index/skipped, skip_reason     (N,) bool / string, one chunk per shard
      shards/written                 (S,) uint8, chunks=(1,): each shard's mark its own object
      fields/<name>/data             (N, C, H, W), one chunk per frame (codec arrays: .codecs)
      fields/<name>/scale, offset    (N, C) float32, one chunk per shard (uint8 codec only)
      fields/<name>/values, count    (N, cap, 11) float32 per frame / (N,) int32 per shard (boxes)
      fields/<name>/nan_count        (N,) int32, one chunk per shard
      fields/<name>/shard_stats      (S, len(STAT_KEYS)) float64, chunks=(1, K)

Every object is written by exactly one shard's writer (or by create/finalize), so writers
of different shards never read-modify-write a shared object.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from bevkd.storage.codecs import ZSTD_LEVEL, array_plans
from bevkd.storage.schema import ATTRS_CHECKSUM_KEY, FieldSpec, attrs_sha256

INDEX_ONE_CHUNK = ("token", "scene", "split", "has_label")
INDEX_PER_SHARD = ("skipped", "skip_reason")
MARKS = "shards/written"
STAT_KEYS = ("count", "sum", "sumsq", "min", "max", "nan", "err_max", "err_sumsq", "absmax")


STORE_MARKER = (
    "bevkd teacher store"  # root attr "bevkd_store" of a created store ("creating" before)
)


def frames_sha256(
    tokens: Sequence[str], scenes: Sequence[str], splits: Sequence[str], has_label: Sequence[bool]
) -> str:
    """Hash of the frame list a store was created for: a resume must present the same, and the
    index arrays must still hash to it (``verify``; the reader refuses a store whose do not)."""
    from bevkd.pipeline.provenance import sha256_lines

    return sha256_lines(
        [
            f"{t}\t{s}\t{p}\t{int(bool(h))}"
            for t, s, p, h in zip(tokens, scenes, splits, has_label, strict=True)
        ]
    )


def read_root_attrs(store: Any) -> dict[str, Any] | None:
    """The root group's attrs, or None when there is no group at all. A remote store that
    cannot be reached is one clear :class:`StoreError` line."""
    import zarr
    from zarr.storage import LocalStore

    from bevkd.storage.remote import reach, store_url, unreachable

    reach(store)
    try:
        return dict(zarr.open_group(store, mode="r").attrs.asdict())
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
    except Exception as exc:
        if isinstance(store, LocalStore):
            raise
        raise unreachable(store_url(store), exc) from exc


# Chunk keys "c.<i>.0.0" (schema 2): one object per chunk, no directory per frame. Schema 1
# stores used zarr's default "c/<i>/0/0", which cost three mkdirs per frame and field.
CHUNK_SEPARATOR = "."
CHUNK_SEPARATORS = {1: "/", 2: CHUNK_SEPARATOR}  # schema version -> chunk key separator


def chunk_key(array: Any, coords: tuple[int, ...]) -> str:
    """The store key of one chunk of a zarr ``array``, by its own chunk key encoding."""
    return f"{array.path}/{array.metadata.chunk_key_encoding.encode_chunk_key(coords)}"


def index_key(name: str) -> str:
    return f"index/{name}"


def field_key(field: str, part: str) -> str:
    return f"fields/{field}/{part}"


def compressors() -> list[Any]:
    """zstd, then crc32c over the compressed bytes of every chunk."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=ZSTD_LEVEL), Crc32cCodec()]


@contextmanager
def writing_config() -> Iterator[None]:
    """Arrays opened inside get ``write_empty_chunks=True`` for good.

    zarr's default (False) never writes a chunk equal to the fill value, which would read
    back as "missing". Config passed to ``open_array`` is ignored (MEASURED.md) and zarr
    3.1.5 has no ``Array.with_config``, but the array config is fixed at construction from
    the global config, so opening under ``zarr.config.set`` works in every 3.1.x.
    """
    import zarr

    with zarr.config.set({"array.write_empty_chunks": True}):
        yield


def array_table(
    fields: tuple[FieldSpec, ...], n_frames: int, shard_size: int, separator: str = CHUNK_SEPARATOR
) -> dict[str, dict[str, Any]]:
    """Every array of a store: key -> ``create_array`` keywords (``separator``: of chunk keys,
    see :data:`CHUNK_SEPARATORS`)."""
    n = max(n_frames, 1)
    num_shards = max(-(-n_frames // shard_size), 1)
    comp = compressors()
    table: dict[str, dict[str, Any]] = {}
    for name in ("token", "scene", "split"):
        table[index_key(name)] = {"shape": (n,), "chunks": (n,), "dtype": str}
    table[index_key("has_label")] = {"shape": (n,), "chunks": (n,), "dtype": bool}
    table[index_key("skipped")] = {"shape": (n,), "chunks": (shard_size,), "dtype": bool}
    table[index_key("skip_reason")] = {"shape": (n,), "chunks": (shard_size,), "dtype": str}
    table[MARKS] = {"shape": (num_shards,), "chunks": (1,), "dtype": "uint8", "fill_value": 0}
    for spec in fields:
        for part, plan in array_plans(spec).items():
            rows = shard_size if plan.per_shard_chunk else 1
            table[field_key(spec.name, part)] = {
                "shape": (n, *plan.per_frame_shape),
                "chunks": (rows, *plan.per_frame_shape),
                "dtype": plan.dtype,
                "fill_value": plan.fill_value,
                "attributes": plan.attrs,
            }
        table[field_key(spec.name, "nan_count")] = {
            "shape": (n,),
            "chunks": (shard_size,),
            "dtype": "int32",
            "fill_value": -1,
        }
        table[field_key(spec.name, "shard_stats")] = {
            "shape": (num_shards, len(STAT_KEYS)),
            "chunks": (1, len(STAT_KEYS)),
            "dtype": "float64",
            "fill_value": float("nan"),
        }
    for kwargs in table.values():
        kwargs["compressors"] = comp
        kwargs["chunk_key_encoding"] = {"name": "default", "separator": separator}
    return table


def create_store(store: Any, fields: tuple[FieldSpec, ...], n_frames: int, shard_size: int,
                 values: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:  # fmt: skip
    """Create a new store's hierarchy with ``values`` (key -> whole-array contents, e.g. the
    index) and the root ``attrs``, in three steps so a crash is always recognisable:

    1. the root group with marker ``"creating"`` (this also clears a half-created store);
    2. every array's metadata and values, built in memory by zarr and uploaded concurrently
       (zarr's own ``create_array`` is ~12 requests per array on S3; this is 1);
    3. the root metadata with the real attrs: the store now exists.
    """
    import asyncio

    import zarr
    from zarr.core.buffer import default_buffer_prototype

    from bevkd.storage.remote import run_sync

    memory = zarr.storage.MemoryStore()
    staged = zarr.open_group(memory, mode="w", zarr_format=3, attributes=attrs)
    with writing_config():
        made = {
            key: staged.create_array(key, **kw)
            for key, kw in array_table(fields, n_frames, shard_size).items()
        }
        for key, value in values.items():
            made[key][:] = value
    zarr.open_group(store, mode="w", zarr_format=3, attributes={"bevkd_store": "creating"})
    proto = default_buffer_prototype()

    async def upload(keys: list[str]) -> None:
        gate = asyncio.Semaphore(32)

        async def one(key: str) -> None:
            async with gate:
                await store.set(key, await memory.get(key, proto))

        await asyncio.gather(*(one(k) for k in keys))

    async def all_keys() -> list[str]:
        return [k async for k in memory.list()]

    keys = run_sync(all_keys())
    run_sync(upload([k for k in keys if k != "zarr.json"]))
    run_sync(upload(["zarr.json"]))


def update_attrs(group: Any, changes: dict[str, Any]) -> dict[str, Any]:
    """Change root attrs and their checksum in one write of the root metadata; return them."""
    merged = {**dict(group.attrs.asdict()), **changes}
    group.attrs.update({**changes, ATTRS_CHECKSUM_KEY: attrs_sha256(merged)})
    return merged


def expected_metadata(
    fields: tuple[FieldSpec, ...], n_frames: int, shard_size: int, schema_version: int
) -> dict[str, dict[str, Any]]:
    """Every array's ``zarr.json`` document as :func:`create_store` writes it: key -> JSON."""
    import json

    import zarr
    from zarr.core.buffer import default_buffer_prototype

    from bevkd.storage.remote import run_sync

    memory = zarr.storage.MemoryStore()
    staged = zarr.open_group(memory, mode="w", zarr_format=3)
    separator = CHUNK_SEPARATORS.get(schema_version, CHUNK_SEPARATOR)
    table = array_table(fields, n_frames, shard_size, separator)
    with writing_config():
        for key, kw in table.items():
            staged.create_array(key, **kw)
    proto = default_buffer_prototype()

    async def read(key: str) -> Any:
        return await memory.get(f"{key}/zarr.json", proto)

    return {key: json.loads(run_sync(read(key)).to_bytes()) for key in table}


def marked_shards(store: Any) -> set[int]:
    """Shards whose completion mark exists: one listing (one LIST per 1000 shards on S3)
    instead of one read per shard."""
    from bevkd.storage.remote import list_keys

    prefix = f"{MARKS}/"  # marks are c.<shard> (schema 2) or c/<shard> (schema 1)
    tails = (k[len(prefix) :] for k in list_keys(store, prefix))
    return {int(t[2:]) for t in tails if t[:2] in ("c.", "c/") and t[2:].isdigit()}


def field_parts(spec: FieldSpec) -> tuple[str, ...]:
    """Array keys of one field that hold its values (not its bookkeeping)."""
    return tuple(array_plans(spec))


def chunk_rows(spec: FieldSpec, part: str) -> int:
    """1 for per-frame chunks; 0 marks arrays chunked per shard."""
    return 0 if array_plans(spec)[part].per_shard_chunk else 1


def empty_rows(spec: FieldSpec, part: str, rows: int) -> np.ndarray:
    """``rows`` frames of a per-shard array filled with its never-written sentinel."""
    plan = array_plans(spec)[part]
    return np.full((rows, *plan.per_frame_shape), plan.fill_value, dtype=plan.dtype)
