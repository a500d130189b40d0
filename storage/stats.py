"""Per-shard field statistics and codec errors, combined into per-field summaries at finalize.

Each shard's writer stores one row of :data:`~bevkd.storage.layout.STAT_KEYS` per field
(its own object), measured on the values actually written: statistics of the decoded
values, errors of decoded against the teacher's float32 output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bevkd.storage.layout import STAT_KEYS

_I = {key: i for i, key in enumerate(STAT_KEYS)}


def shard_stats(
    original: np.ndarray,
    decoded: np.ndarray,
    extrema: tuple[np.ndarray, np.ndarray] | None = None,
    decoded_range: tuple[float, float] | None = None,
    overwrite_decoded: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Stats row ``(len(STAT_KEYS),)`` over frames ``(k, ...)``, and NaN count per frame ``(k,)``.

    ``extrema``: per-frame, per-channel ``(min, max)`` of ``original`` when the caller has them;
    all finite, they stand in for the NaN scan and the value range (three passes fewer).
    ``decoded_range``: ``(min, max)`` of ``decoded`` when the codec knows it (two passes fewer).
    ``overwrite_decoded``: ``decoded`` is scratch; its errors are computed in place.
    """
    row = np.zeros(len(STAT_KEYS), np.float64)
    k = len(original)
    if k == 0:
        row[_I["min"]], row[_I["max"]] = np.inf, -np.inf
        return row, np.zeros(0, np.int32)
    finite = extrema is not None and all(np.isfinite(e).all() for e in extrema)
    if finite and extrema is not None:
        nan_per_frame = np.zeros(k, np.int32)
        lo, hi = float(extrema[0].min()), float(extrema[1].max())
    else:
        nan_per_frame = np.isnan(original.reshape(k, -1)).sum(axis=1).astype(np.int32)
    orig, dec = original.reshape(k, -1), decoded.reshape(k, -1)
    if nan_per_frame.any():
        keep = ~(np.isnan(orig) | np.isnan(dec))
        orig, dec = orig[keep].reshape(1, -1), dec[keep].reshape(1, -1)
        overwrite_decoded = True  # a copy now
    if not finite:
        lo, hi = (float(orig.min()), float(orig.max())) if orig.size else (0.0, 0.0)
    # Per-frame float32 BLAS products (a sum is a product with ones), summed in float64: several
    # times faster than a float64 reduction, and precise enough for stats.
    row[_I["count"]] = dec.size
    row[_I["sum"]] = (dec @ np.ones(dec.shape[1], np.float32)).astype(np.float64).sum()
    row[_I["sumsq"]] = np.einsum("ij,ij->i", dec, dec).astype(np.float64).sum()
    if decoded_range is not None and finite:
        row[_I["min"]], row[_I["max"]] = decoded_range
    else:
        row[_I["min"]] = dec.min() if dec.size else np.inf
        row[_I["max"]] = dec.max() if dec.size else -np.inf
    err = np.subtract(dec, orig, out=dec if overwrite_decoded else None)
    row[_I["nan"]] = nan_per_frame.sum()
    row[_I["err_max"]] = max(float(err.max()), -float(err.min())) if err.size else 0.0
    row[_I["err_sumsq"]] = np.einsum("ij,ij->i", err, err).astype(np.float64).sum()
    row[_I["absmax"]] = max(hi, -lo)
    return row, nan_per_frame


def combine(rows: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-field (stats, codec error) from the stats rows of every shard ``(S, K)``.

    stats: count, min, max, mean, std, nan_count. error: max_abs, rms, rel_rms (rms error
    over rms value), max_rel (max error over max |value|).
    """
    rows = rows[~np.isnan(rows).any(axis=1)]  # shards never written for this field
    count = rows[:, _I["count"]].sum()
    if count == 0:
        empty = {"count": 0, "min": None, "max": None, "mean": None, "std": None}
        return {**empty, "nan_count": int(rows[:, _I["nan"]].sum())}, {}
    mean = rows[:, _I["sum"]].sum() / count
    var = max(rows[:, _I["sumsq"]].sum() / count - mean * mean, 0.0)
    stats = {
        "count": int(count),
        "min": float(rows[:, _I["min"]].min()),
        "max": float(rows[:, _I["max"]].max()),
        "mean": float(mean),
        "std": float(np.sqrt(var)),
        "nan_count": int(rows[:, _I["nan"]].sum()),
    }
    rms_value = np.sqrt(rows[:, _I["sumsq"]].sum() / count)
    rms_err = np.sqrt(rows[:, _I["err_sumsq"]].sum() / count)
    absmax = rows[:, _I["absmax"]].max()
    err_max = rows[:, _I["err_max"]].max()
    error = {
        "max_abs": float(err_max),
        "rms": float(rms_err),
        "rel_rms": float(rms_err / rms_value) if rms_value > 0 else 0.0,
        "max_rel": float(err_max / absmax) if absmax > 0 else 0.0,
    }
    return stats, error
