"""Finalize a fully written store: stats, measured codec errors, sizes, skipped frames.

Everything is combined from the per-shard records the writers left (no re-read of the
field data), written into the group attrs, and the metadata consolidated so a remote
open is one GET.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bevkd.pipeline.provenance import now_iso
from bevkd.storage import layout
from bevkd.storage.remote import object_sizes, open_zarr_store, prefix_bytes, quiet_zarr
from bevkd.storage.schema import StoreContract, StoreError
from bevkd.storage.stats import combine

MAX_NAMED = 20  # frames named in one error message


def finalize_store(
    url: str,
    group: Any,
    contract: StoreContract,
    num_shards: int,
    storage_options: dict[str, Any] | None,
) -> dict[str, Any]:
    """Write the finalize attrs of ``group`` and consolidate; return them."""
    import zarr

    marks = np.asarray(group[layout.MARKS][:])
    pending = np.flatnonzero(marks == 0)
    if len(pending):
        raise StoreError(
            f"cannot finalize {url}: {len(pending)} of {num_shards} shards are not written "
            f"(first: {pending[:MAX_NAMED].tolist()}); run cache-teacher again to resume them"
        )
    tokens = np.asarray(group[layout.index_key("token")][:])
    sizes = object_sizes(group.store)
    stats: dict[str, Any] = {}
    errors: dict[str, Any] = {}
    stored: dict[str, Any] = {}
    nan_frames: dict[str, list[int]] = {}
    for spec in contract.fields:
        stats[spec.name], errors[spec.name] = combine(
            np.asarray(group[layout.field_key(spec.name, "shard_stats")][:])
        )
        counts = np.asarray(group[layout.field_key(spec.name, "nan_count")][:])
        if (bad := np.flatnonzero(counts > 0)).size:
            nan_frames[spec.name] = bad.tolist()
        written = int((counts >= 0).sum())
        nbytes = sum(
            prefix_bytes(sizes, layout.field_key(spec.name, p)) for p in layout.field_parts(spec)
        )
        raw = int(np.prod(spec.shape)) * 4
        stored[spec.name] = {
            "frames": written,
            "bytes": nbytes,
            "bytes_per_frame": nbytes / max(written, 1),
            "ratio_vs_fp32": raw * written / nbytes if nbytes else None,
        }
    skipped_mask = np.asarray(group[layout.index_key("skipped")][:], dtype=bool)
    reasons = np.asarray(group[layout.index_key("skip_reason")][:])
    skipped = {str(i): str(reasons[i]) for i in np.flatnonzero(skipped_mask)}
    result = {"stats": stats, "codec_error": errors, "stored": stored, "skipped": skipped}
    if nan_frames:
        layout.update_attrs(group, {**result, "finalized": False})
        named = "; ".join(
            f"{name}: frames {', '.join(f'{i} ({tokens[i]})' for i in frames[:MAX_NAMED])}"
            + (f" and {len(frames) - MAX_NAMED} more" if len(frames) > MAX_NAMED else "")
            for name, frames in nan_frames.items()
        )
        raise StoreError(
            f"cannot finalize {url}: NaN values in {named}; fix the teacher or its inputs, then "
            "rerun cache-teacher with --repair to rewrite their shards"
        )
    layout.update_attrs(group, {**result, "finalized": {"at": now_iso()}})
    with quiet_zarr():
        zarr.consolidate_metadata(open_zarr_store(url, storage_options, read_only=False))
    return result
