"""What the benchmarks' reports share: markdown tables and their mean ± std cells, the
(claim, metric) pairs a verdict table judges, and a run's steps and frames from the run ledger.
The generated blocks of a docs page are written by :func:`doc_blocks.write_block`.

Used by recipes_report.py, few_labels.py, kitti_results.py, recipe_results.py and
perf_report.py. The verdicts themselves (Welch's t, Holm) are :mod:`bevkd.eval.verdicts`; the
† marks of results other code made are :func:`bevkd.stages.run_ledger.dagger` and
:func:`~bevkd.stages.run_ledger.footnote`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bevkd.stages import run_ledger


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table: the header, its rule, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def mean_std(values: Sequence[float], digits: int = 3, mark: str = "", one: str = "") -> str:
    """``mean{mark} ± std`` (sample std) at ``digits`` decimals; a single value as
    ``value{mark}{one}`` (e.g. ``one=" (1 seed)"``)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}{mark}{one}"
    return f"{statistics.mean(values):.{digits}f}{mark} ± {statistics.stdev(values):.{digits}f}"


def frames_cell(frames: Mapping[str, int] | None, missing: str = "-") -> str:
    """A run's training frames as ``labelled + unlabelled``; ``missing`` without a count."""
    if not frames:
        return missing
    return f"{frames['labelled']} + {frames['unlabelled']}"


def run_counts(folder: Path) -> dict[str, Any]:
    """A run's optimizer steps and frames as its own logs say: the run record (run.json, or
    the ledger for a run no longer on disk), else read from the run folder's logs now."""
    found = run_ledger.find(folder)
    entry = found[0] if found is not None else {}
    if entry.get("steps") is None and entry.get("frames") is None:
        entry = run_ledger.from_log(folder)
    return {"steps": entry.get("steps"), "frames": entry.get("frames")}


def claim_pairs(
    claims: Iterable[tuple[str, str, str]],
    runs: Mapping[str, list[dict[str, Any]]],
    metrics: Mapping[str, Callable[[list[dict[str, Any]]], list[float]]],
) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """``(claim, metric) -> (arm's values, against's values)`` for each ``(claim, arm,
    against)`` whose two arms have runs, one entry per metric (``metrics``: name -> the values
    of a list of runs) that gives both sides a value: the pairs of one verdict family
    (:func:`bevkd.eval.verdicts.verdict_table`), in the claims' order."""
    pairs = {}
    for claim, arm, against in claims:
        a, b = runs.get(arm), runs.get(against)
        if not a or not b:
            continue
        for name, pick in metrics.items():
            if (x := pick(a)) and (y := pick(b)):
                pairs[(claim, name)] = (x, y)
    return pairs
