"""The precision/recall curves of the Waymo detection metrics and their area, transcribed from
waymo-open-dataset 1.6.7 (commit 99a4cb3; paths under ``src/waymo_open_dataset/``), in float32
as the C++ computes them.

- ``metrics/detection_metrics.cc`` ``ToDetectionMetrics`` (lines 258-352), per score cutoff:
  ``P = TP / (TP + FP)`` (0 if there is no prediction), APH's precision ``sum_ha / (TP + FP)``,
  APL's ``sum_longitudinal_affinity / (TP + FP)``; the recall is ``TP / (TP + FN)`` for all
  three (0 if there is no ground truth; "none of the existing matcher implementations takes
  heading accuracy into account"); where the recall is 0 the precision is set to 1.
  ``min_precision`` is 0 by default and never acts.
- ``metrics/metrics_utils.cc`` ``ComputeMeanAveragePrecision`` (lines 245-302): a map recall ->
  max precision seeded with (0, 1); walked from the highest recall down, keeping the running
  maximum precision (so precision is made monotonic), inserting a point every
  ``desired_recall_delta`` (0.05) wherever two recalls are more than ``delta + 1e-6`` apart;
  the precision of the last point (recall 0) is replaced by that of the point before it; the
  area is the trapezoid sum ``0.5 (r_i-1 - r_i)(p_i-1 + p_i)``.
"""

from __future__ import annotations

import itertools

import numpy as np


def mean_average_precision(precisions: np.ndarray, recalls: np.ndarray, delta: float) -> float:
    """``ComputeMeanAveragePrecision`` (``metrics_utils.cc`` lines 245-302), in float32."""
    f32 = np.float32
    if len(precisions) == 0:
        return 0.0
    best: dict[np.float32, np.float32] = {f32(0.0): f32(1.0)}
    for p, r in zip(np.asarray(precisions, f32), np.asarray(recalls, f32), strict=True):
        best[r] = max(best.get(r, f32(0.0)), p)
    step, k_error = f32(delta), f32(1e-6)
    curve: list[tuple[np.float32, np.float32]] = []  # (precision, recall), recall descending
    last_recall, max_precision = min(best), f32(0.0)
    for r in sorted(best, reverse=True):
        while last_recall - r > step + k_error:
            last_recall = f32(last_recall - step)
            curve.append((max_precision, last_recall))
        max_precision = max(best[r], max_precision)
        curve.append((max_precision, r))
        last_recall = r
    if len(curve) >= 2:  # the (1, 0) point is made up: use the precision of real data
        curve[-1] = (curve[-2][0], curve[-1][1])
    area = f32(0.0)
    for (p0, r0), (p1, r1) in itertools.pairwise(curve):
        area = f32(float(area) + 0.5 * float(f32(r0 - r1)) * float(f32(p0 + p1)))
    return float(area)


def curve_metrics(
    tp: np.ndarray,
    fp: np.ndarray,
    fn: np.ndarray,
    sum_ha: np.ndarray,
    sum_la: np.ndarray,
    delta: float,
) -> dict[str, float]:
    """AP, APH and APL of one class at one level from its counts per score cutoff (all
    ``(C,)``; ``sum_ha`` / ``sum_la``: summed heading accuracy / longitudinal affinity of
    the TPs)."""
    f32 = np.float32
    tp_fp = tp + fp
    tp_fn = tp + fn
    tp = tp.astype(f32)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(tp_fn > 0, tp / tp_fn.astype(f32), f32(0.0)).astype(f32)
        out = {}
        for name, numerator in (("AP", tp), ("APH", sum_ha), ("APL", sum_la)):
            precision = np.where(tp_fp > 0, numerator.astype(f32) / tp_fp.astype(f32), f32(0.0))
            precision = np.where(recall == 0, f32(1.0), precision).astype(f32)
            out[name] = mean_average_precision(precision, recall, delta)
    return out
