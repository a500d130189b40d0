"""The statistics and tables of ``benchmarks/store_load.py``: frames/s, latency percentiles,
retries per 1,000 objects, and how many reader processes a student needs.

Kept apart from the runner so the arithmetic is tested on hand-made inputs
(``tests/test_store_load_report.py``) without starting a reader.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_report import table

STUDENT_FPS = 10.0  # what one GPU student consumes, frames/s
STATS_KEYS = ("requests", "retries", "rereads", "failures")


def percentile_ms(latencies_s: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``latencies_s`` in milliseconds (linear between ranks, as
    numpy's default); NaN for none."""
    if not latencies_s:
        return math.nan
    return float(np.percentile(np.asarray(latencies_s, dtype=np.float64) * 1e3, q))


def summed_stats(snapshots: Sequence[dict[str, int]]) -> dict[str, int]:
    """The retry counters of several processes (``STATS.snapshot()`` each), added up."""
    return {k: sum(int(s.get(k, 0)) for s in snapshots) for k in STATS_KEYS}


def objects_read(stats: dict[str, int]) -> int:
    """Objects asked for: every request is one object's first try, a retry or a re-read."""
    return stats["requests"] - stats["retries"] - stats["rereads"]


def per_thousand(count: float, total: float) -> float:
    """``count`` per 1,000 of ``total``; NaN where ``total`` is 0 (nothing to count against)."""
    return 1e3 * count / total if total else math.nan


def summarize(config: dict[str, Any], readers: Sequence[dict[str, Any]],
              proxy: dict[str, int] | None = None) -> dict[str, Any]:  # fmt: skip
    """One configuration's row from its reader processes' results.

    Each reader: ``frames``, ``wall_s`` (the measured span, all readers started together),
    ``latencies_s`` (each frame's read, timed where it was read), ``stats`` (a list of the
    ``STATS`` snapshots of the processes that read: the reader or its workers) and ``errors``
    (messages). ``proxy``: the fault proxy's requests and injected faults during the run.
    """
    frames = sum(r["frames"] for r in readers)
    wall = max((r["wall_s"] for r in readers), default=0.0)
    rates = [r["frames"] / r["wall_s"] if r["wall_s"] > 0 else 0.0 for r in readers]
    latencies = [x for r in readers for x in r["latencies_s"]]
    stats = summed_stats([s for r in readers for s in r["stats"]])
    objects = objects_read(stats)
    row = {
        **config,
        "frames": frames,
        "wall_s": wall,
        "fps_total": frames / wall if wall > 0 else 0.0,
        "fps_per_reader": sum(rates) / len(rates) if rates else 0.0,
        "mean_ms": 1e3 * sum(latencies) / len(latencies) if latencies else math.nan,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "stats": stats,
        "objects": objects,
        "retries_per_1000": per_thousand(stats["retries"] + stats["rereads"], objects),
        "errors": sum(len(r["errors"]) for r in readers),
        "error_messages": [m for r in readers for m in r["errors"]][:5],
    }
    if proxy is not None:
        row["proxy"] = dict(proxy)
        row["faults_per_1000"] = per_thousand(proxy.get("injected", 0), proxy.get("requests", 0))
    return row


def readers_needed(per_reader_fps: float, target: float = STUDENT_FPS) -> int | None:
    """Reader processes for ``target`` frames/s at ``per_reader_fps`` each; None if 0."""
    return math.ceil(target / per_reader_fps) if per_reader_fps > 0 else None


def _num(x: float, fmt: str) -> str:
    return "-" if x is None or math.isnan(x) else format(x, fmt)


def table_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown: one line per configuration."""
    return table(
        ["source", "lidar_bev codec", "readers N", "workers W", "frames", "frames/s total",
         "frames/s per reader", "mean ms", "p50 ms", "p99 ms", "bevkd retries / 1000 objects",
         "proxy faults / 1000 requests", "errors"],
        [[r["source"], r["codec"], r["readers"], r["workers"], r["frames"],
          f"{r['fps_total']:.1f}", f"{r['fps_per_reader']:.1f}", _num(r["mean_ms"], ".0f"),
          _num(r["p50_ms"], ".0f"), _num(r["p99_ms"], ".0f"), _num(r["retries_per_1000"], ".1f"),
          _num(r.get("faults_per_1000", math.nan), ".1f"), r["errors"]] for r in rows],
    )  # fmt: skip


def answer(rows: Sequence[dict[str, Any]], target: float = STUDENT_FPS) -> list[dict[str, Any]]:
    """Per source and codec: the best per-reader rate (and its configuration), the readers a
    ``target`` frames/s student needs at that rate, and the best total rate measured."""
    out = []
    for key in dict.fromkeys((r["source"], r["codec"]) for r in rows):
        mine = [r for r in rows if (r["source"], r["codec"]) == key]
        best = max(mine, key=lambda r: r["fps_per_reader"])
        out.append({"source": key[0], "codec": key[1], "per_reader": best["fps_per_reader"],
                    "at": f"N={best['readers']}, W={best['workers']}",
                    "readers": readers_needed(best["fps_per_reader"], target),
                    "best_total": max(r["fps_total"] for r in mine),
                    "counts": [str(n) for n in dict.fromkeys(r["readers"] for r in mine)]})  # fmt: skip
    return out


def answer_lines(rows: Sequence[dict[str, Any]], cores: int,
                 target: float = STUDENT_FPS) -> list[str]:  # fmt: skip
    """Markdown: the readers needed per source, and what bounds these figures."""
    found = answer(rows, target)
    lines = [f"Reader processes one student at {target:g} frames/s needs "
             f"= ceil({target:g} / best frames/s per reader). A reader has W reads in flight "
             "(one per worker; DataLoader hands frames back in order), so its rate is about "
             "W / mean latency. Where that latency is waiting (retry backoff here; round trips "
             "to a real bucket), more workers per reader raise the rate without more CPU; where "
             "it is CPU (moto on these cores), they do not.", ""]  # fmt: skip
    lines += table(
        ["source", "lidar_bev codec", "best frames/s per reader (at)", "readers needed",
         "best frames/s total"],
        [[a["source"], a["codec"], f"{a['per_reader']:.1f} ({a['at']})",
          a["readers"] if a["readers"] is not None else "-", f"{a['best_total']:.1f}"]
         for a in found],
    )  # fmt: skip
    short = [f"{a['source']} ({a['codec']}, N={'/'.join(a['counts'])})"
             for a in found if a["best_total"] < target]  # fmt: skip
    lines += ["", f"Bound: this machine has {cores} cores, shared by every reader, its DataLoader "
              "workers and, for S3, moto (a Python server on the same cores serves every S3 request, "
              "and the fault proxy forwards each one), so total frames/s cannot scale past "
              f"{cores} cores, and the S3 figures are a lower bound on a real bucket's throughput "
              "(a bucket serves from its own machines)."]  # fmt: skip
    if short:
        lines += ["", f"Below {target:g} frames/s in total at every N measured: "
                  f"{', '.join(short)}."]  # fmt: skip
    return lines
