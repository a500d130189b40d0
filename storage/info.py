"""``info``: a readable summary of a store (schema, provenance, fields, completeness)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bevkd.storage import layout
from bevkd.storage.reader import TeacherStore
from bevkd.storage.remote import object_sizes, prefix_bytes


def field_sizes(store: TeacherStore) -> dict[str, dict[str, Any]]:
    """Stored bytes per field, from finalize's record or measured now (unfinalized store)."""
    if store.finalized and "stored" in store.attrs:
        return dict(store.attrs["stored"])
    out = {}
    sizes = object_sizes(store._group.store)
    for spec in store.contract.fields:
        nbytes = sum(
            prefix_bytes(sizes, layout.field_key(spec.name, p)) for p in layout.field_parts(spec)
        )
        counts = np.asarray(store._array(layout.field_key(spec.name, "nan_count"))[:])
        frames = int((counts >= 0).sum())
        raw = int(np.prod(spec.shape)) * 4 * frames
        out[spec.name] = {
            "frames": frames,
            "bytes": nbytes,
            "bytes_per_frame": nbytes / max(frames, 1),
            "ratio_vs_fp32": raw / nbytes if nbytes and frames else None,
        }
    return out


def describe(store: TeacherStore) -> list[str]:
    """Lines of ``bevkd store info``."""
    c, p = store.contract, store.provenance
    g = c.grid
    written = store.written_shards()
    skipped = store.skipped
    labeled = int(store.has_label.sum())
    fin = store.attrs.get("finalized")
    lines = [
        f"store: {store.url}",
        f"schema version: {c.schema_version}; "
        + (f"finalized at {fin['at']}" if isinstance(fin, dict) else "NOT finalized"),
        f"grid: x [{g.x_min}, {g.x_max}) y [{g.y_min}, {g.y_max}) m, cell {g.cell} m, {g.H}x{g.W} "
        "(ego frame: x forward, y left, z up; rows along y, columns along x)",
        f"classes: {', '.join(c.classes)}",
        f"frames: {store.num_frames} ({labeled} labeled, {store.num_frames - labeled} unlabeled; "
        f"splits {dict(zip(*np.unique(store.splits, return_counts=True), strict=True))})",
        f"shards: {int(written.sum())}/{len(written)} written, {store.shard_size} frames each"
        + ("" if written.all() else f"; pending: {np.flatnonzero(~written)[:20].tolist()}"),
        "provenance:",
    ]
    code = f"{p.get('code_version', '?')}{' (dirty)' if p.get('code_dirty') else ''}"
    ds = p.get("dataset", {})
    lines += [
        f"  teacher: {p.get('teacher', '?')}; checkpoint sha256: {p.get('checkpoint_sha256', '?')}",
        f"  config sha256: {p.get('config_sha256', '?')}; code: {code}",
        f"  dataset: {ds.get('name', '?')} {ds.get('version', '')} splits {ds.get('splits', [])}; "
        f"frame tokens sha256: {p.get('frame_tokens_sha256', '?')}",
        f"  created: {p.get('created_at', '?')}; packages: "
        + ", ".join(f"{k} {v}" for k, v in p.get("packages", {}).items()),
        "fields:",
        f"  {'name':<18} {'kind':<15} {'shape':<16} {'codec':<12} {'frames':>6} {'KB/frame':>9} {'vs fp32':>8}  error",
    ]
    sizes = field_sizes(store)
    errors = store.attrs.get("codec_error", {})
    for spec in c.fields:
        size = sizes.get(spec.name, {})
        err = errors.get(spec.name) or {}
        ratio = size.get("ratio_vs_fp32")
        err_text = (
            f"max {err['max_abs']:.3g}, rel rms {err['rel_rms']:.2g}" if err else "(at finalize)"
        )
        flags = " labeled-only" if spec.labeled_only else ""
        flags += f" {spec.heatmap_activation}" if spec.heatmap_activation else ""
        lines.append(
            f"  {spec.name:<18} {spec.kind:<15} {'x'.join(map(str, spec.shape)):<16} {spec.codec:<12} "
            f"{size.get('frames', 0):>6} {size.get('bytes_per_frame', 0) / 1024:>9.1f} "
            f"{(f'{ratio:.1f}x' if ratio else '-'):>8}  {err_text}{flags}"
        )
    lines.append(f"skipped frames: {len(skipped)}")
    lines += [f"  {i} ({store.tokens[i]}): {reason}" for i, reason in sorted(skipped.items())]
    return lines
