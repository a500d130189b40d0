"""Waymo Open Dataset 3D detection metrics in numpy: AP / APH at LEVEL_1 and LEVEL_2, and the
camera-only LET-3D-AP / LET-3D-APH / LET-3D-APL (Hung et al., "Let-3D-AP: Longitudinal Error
Tolerant 3D Average Precision for Camera-Only 3D Detection", 2022).

Transcribed from waymo-open-dataset 1.6.7 (commit 99a4cb3 of
github.com/waymo-research/waymo-open-dataset, the source of the pip wheel of that version; paths
under ``src/waymo_open_dataset/``). ``tests/test_waymo_metrics.py`` checks the numbers against
the official C++ op run on hand-made frames (``tests/data/waymo_metrics/``). The box terms
(IoU, LET-IoU, longitudinal affinity, heading accuracy) are in :mod:`bevkd.eval.waymo_iou`,
the precision/recall curves and their area in :mod:`bevkd.eval.waymo_ap`.

**Ground truth** (``metrics/tools/compute_detection_metrics_main.cc`` ``Compute``, lines
137-153; the op itself takes the levels as given): a box with ``num_lidar_points_in_box <= 0``
is dropped; a box without a human-labelled level (``UNKNOWN``) is ``LEVEL_2`` if it holds <= 5
points, else ``LEVEL_1``. The camera-only tool (``compute_detection_let_metrics_main.cc`` lines
177-206) does the same with ``num_top_lidar_points_in_box``, keeps only boxes some camera sees
and evaluates their ``camera_synced_box``: that is the caller's choice of boxes and counts.

**Config** (``metrics/python/wod_detection_evaluator.py`` ``_get_default_config``, the twin of
``GetConfig`` in ``compute_detection_metrics_main.cc`` lines 97-122): OBJECT_TYPE breakdown
(one shard per ``Label.Type``: VEHICLE 1, PEDESTRIAN 2, SIGN 3, CYCLIST 4; SIGN is not reported
here), levels LEVEL_1 and LEVEL_2, ``TYPE_HUNGARIAN`` matcher, IoU thresholds 0.7 / 0.5 / 0.5,
3D boxes, score cutoffs ``i * 0.01`` for i < 100 and 1.0 (101, float32), ``desired_recall_delta``
0.05 (``protos/metrics.proto`` default), ``min_precision`` 0 and ``min_heading_accuracy`` -1
(defaults that never act). LET (``compute_detection_let_metrics_main.cc`` lines 102-158):
IoU 0.5 / 0.3 / 0.3, LEVEL_2 only, ``TYPE_RANGE_ALIGNED``, tolerance 10 % of the range and at
least 0.5 m, sensor (the cameras' mean location) at (1.43, 0, 2.18) in the vehicle frame.

**Per frame and class** (``metrics/detection_metrics.cc``):

- ``ComputeDetectionMeasurementsPerBreakdownShard`` (lines 150-192): for every score cutoff
  the predictions with ``score >= cutoff`` (``metrics_utils.cc`` ``BuildSubsets``, line 164) are
  matched again, against all ground truths of the class, whatever their level.
- ``HungarianMatcher::Match`` (``metrics/matcher.cc`` lines 192-250): a maximum-weight
  assignment (``metrics/hungarian.cc``, Kuhn-Munkres) on integer weights ``round(IoU * 1e6)``
  (``matcher.h`` ``QuantizedWeight``, ``iou.cc`` ``kMaxIoU``), 0 for pairs that cannot match
  (``CanMatch``: ``IoU >= threshold``, float32). Assigned pairs that cannot match are dropped.
  With LET (``Matcher::Create``, ``matcher.cc`` lines 55-89) the IoU is the LET-IoU, a pair
  also needs a longitudinal affinity > 0, and the weight is ``round(LET-IoU * affinity * 1e6)``.
  Here ``scipy.optimize.linear_sum_assignment(maximize=True)`` solves the same problem; where
  two assignments tie in total weight the two solvers may pick different ones.
- ``ComputeDetectionMeasurementFromMatchingResult`` (lines 40-144): every matched prediction is
  a TP (also at LEVEL_1 when its ground truth is LEVEL_2: the OBJECT_TYPE breakdown is not
  ground-truth-only), adding its heading accuracy to ``sum_ha`` and (LET) its longitudinal
  affinity to ``sum_longitudinal_affinity``; an unmatched prediction is a FP unless it
  overlaps a no-label zone (``metrics_utils.cc`` ``IsFP``); an unmatched ground truth is a FN
  at level L only if its own level is <= L (``IsDetectionFN``): LEVEL_2 boxes are ignored at
  LEVEL_1, not missed.

**Curves** (``ToDetectionMetrics`` and ``metrics_utils.cc`` ``ComputeMeanAveragePrecision``,
transcribed in :mod:`bevkd.eval.waymo_ap`), on the counts summed over frames: per cutoff
``P = TP / (TP + FP)``, APH's ``sum_ha / (TP + FP)``, APL's ``sum_la / (TP + FP)``, recall
``TP / (TP + FN)``; precision made monotonic from high recall down, points added every 0.05 of
recall, area by trapezoids. A class without ground truth gets AP 0, as the op reports it.

**LET, as the code has it** (the paper's words aside): the prediction slides along its line of
sight to the point nearest the ground truth centre with no limit (``AlignedPredictionBox``);
the tolerance ``max(0.1 r, 0.5 m)`` acts only through the longitudinal affinity, which must be
> 0 for a match and weights the TP in LET-APL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bevkd.datasets.waymo import WAYMO_TO_BEVKD
from bevkd.eval import waymo_iou
from bevkd.eval.waymo_ap import curve_metrics

WAYMO_TYPES = {"VEHICLE": 1, "PEDESTRIAN": 2, "SIGN": 3, "CYCLIST": 4}  # label.proto Label.Type
CLASSES = ("VEHICLE", "PEDESTRIAN", "CYCLIST")
LEVEL_1, LEVEL_2 = 1, 2
L2_MAX_POINTS = 5  # kDetectionLevel2NumPointsThreshold
SCORE_CUTOFFS = (*(float(np.float32(i * 0.01)) for i in range(100)), 1.0)
# bevkd's class names for the Waymo types (datasets/waymo.py maps them the other way)
# bevkd class -> Waymo type: the reader's own mapping, inverted (one table for both)
WAYMO_TYPE_OF_CLASS = {name: type_id for type_id, name in WAYMO_TO_BEVKD.items()}


def waymo_types(labels: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """``(N,)`` Waymo type ids of bevkd class indices ``labels`` into ``classes``; 0
    (``TYPE_UNKNOWN``, never evaluated) for classes Waymo does not score."""
    lookup = np.array([WAYMO_TYPE_OF_CLASS.get(name, 0) for name in classes], np.int64)
    return lookup[np.asarray(labels, np.int64).reshape(-1)]


@dataclass(frozen=True)
class FrameBoxes:
    """One frame's boxes, ground truth or detections, in the Waymo vehicle frame.

    ``boxes``: ``(N, 7)`` x, y, z (centre), length, width, height, heading (about +z from +x);
    more columns (bevkd's velocity) are dropped.
    ``types``: ``(N,)`` Waymo ``Label.Type`` ids (:data:`WAYMO_TYPES`).
    ``scores``: ``(N,)`` in [0, 1], detections only.
    ``num_lidar_points``: ``(N,)`` lidar points in each box, ground truth only (LET: the top
    lidar's count, as the camera-only tool uses).
    ``difficulty``: ``(N,)`` human-labelled level (1, 2; 0 = unlabelled, decided by points).
    ``overlap_nlz``: ``(N,)`` bool, a detection overlapping a no-label zone (never a FP).
    """

    boxes: np.ndarray
    types: np.ndarray
    scores: np.ndarray | None = None
    num_lidar_points: np.ndarray | None = None
    difficulty: np.ndarray | None = None
    overlap_nlz: np.ndarray | None = None
    frame_id: str = ""

    def __post_init__(self) -> None:
        n = len(np.asarray(self.types).reshape(-1))
        boxes = np.asarray(self.boxes, np.float64)
        if n == 0 and boxes.size == 0:
            boxes = boxes.reshape(0, 7)
        if boxes.ndim != 2 or len(boxes) != n or boxes.shape[1] < 7:
            raise ValueError(
                f"frame {self.frame_id!r}: boxes must be (N, 7) for N = {n} types, got shape "
                f"{np.shape(self.boxes)}"
            )
        object.__setattr__(self, "boxes", boxes[:, :7])
        for name in ("scores", "num_lidar_points", "difficulty", "overlap_nlz"):
            value = getattr(self, name)
            if value is not None and len(np.asarray(value).reshape(-1)) != n:
                raise ValueError(
                    f"frame {self.frame_id!r}: {name} has {len(np.asarray(value).reshape(-1))} "
                    f"entries for {n} boxes"
                )


@dataclass(frozen=True)
class LetConfig:
    """``Config.LongitudinalErrorTolerantConfig`` (``protos/metrics.proto``), TYPE_RANGE_ALIGNED."""

    sensor_location: tuple[float, float, float] = (1.43, 0.0, 2.18)
    longitudinal_tolerance_percentage: float = 0.1
    min_longitudinal_tolerance_meter: float = 0.5


@dataclass(frozen=True)
class MetricsConfig:
    """The parts of ``Config`` (``protos/metrics.proto``) that vary here; the matcher is always
    Hungarian, boxes 3D, the breakdown OBJECT_TYPE. ``levels``: difficulty levels reported."""

    iou_thresholds: dict[str, float]
    levels: tuple[int, ...]
    let: LetConfig | None = None
    score_cutoffs: tuple[float, ...] = SCORE_CUTOFFS
    desired_recall_delta: float = 0.05


# wod_detection_evaluator.py _get_default_config (compute_detection_metrics_main.cc GetConfig)
DETECTION_3D = MetricsConfig({"VEHICLE": 0.7, "PEDESTRIAN": 0.5, "CYCLIST": 0.5}, (1, 2))
# compute_detection_let_metrics_main.cc GetConfig: the 3D camera-only detection challenge
CAMERA_LET_3D = MetricsConfig(
    {"VEHICLE": 0.5, "PEDESTRIAN": 0.3, "CYCLIST": 0.3}, (2,), LetConfig()
)


@dataclass
class Counts:
    """Counts of one class summed over frames, per score cutoff ``(C,)`` (``fn``: ``(C, L)``
    for the config's levels)."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    sum_ha: np.ndarray
    sum_la: np.ndarray
    num_gt: np.ndarray  # (L,) ground truths at or below each level

    def __iadd__(self, other: Counts) -> Counts:
        for name in ("tp", "fp", "fn", "sum_ha", "sum_la", "num_gt"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


def gt_levels(frame: FrameBoxes) -> tuple[np.ndarray, np.ndarray]:
    """Boxes kept (``(N,)`` bool: at least one lidar point) and their levels (``(N,)``)."""
    if frame.num_lidar_points is None:
        raise ValueError(
            f"frame {frame.frame_id!r}: ground truth needs num_lidar_points (boxes without "
            "points are dropped and <= 5 points make LEVEL_2)"
        )
    points = np.asarray(frame.num_lidar_points).reshape(-1)
    labelled = np.zeros(len(points), np.int64)
    if frame.difficulty is not None:
        labelled = np.asarray(frame.difficulty, np.int64).reshape(-1)
    by_points = np.where(points <= L2_MAX_POINTS, LEVEL_2, LEVEL_1)
    return points > 0, np.where(labelled > 0, labelled, by_points)


def _pair_terms(
    pred: np.ndarray, gt: np.ndarray, threshold: float, config: MetricsConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(P, G)`` can-match mask, integer matching weights, heading accuracy, affinity."""
    ha = waymo_iou.heading_accuracy(pred, gt)
    if config.let is None:
        iou = waymo_iou.iou3d(pred, gt).astype(np.float32)
        affinity = np.ones_like(iou)
        can = iou >= np.float32(threshold)
        weight = iou
    else:
        sensor = np.asarray(config.let.sensor_location, np.float64)
        iou = waymo_iou.let_iou3d(pred, gt, sensor).astype(np.float32)
        affinity = waymo_iou.longitudinal_affinity(
            pred,
            gt,
            sensor,
            config.let.longitudinal_tolerance_percentage,
            config.let.min_longitudinal_tolerance_meter,
        ).astype(np.float32)
        can = (affinity != 0) & (iou >= np.float32(threshold))
        weight = iou * affinity
    # QuantizedWeight: std::round(float weight * kMaxIoU), half away from zero (weights >= 0)
    scaled = (weight * np.float32(1e6)).astype(np.float64)  # the float product, exactly
    quantized = np.floor(scaled + 0.5).astype(np.int64)
    return can, np.where(can, quantized, 0), ha, affinity.astype(np.float64)


def _match(can: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the matched pairs: the maximum-weight assignment, minus the
    assigned pairs that cannot match (``HungarianMatcher::Match``)."""
    from scipy.optimize import linear_sum_assignment

    if can.size == 0 or not can.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    ok = can[rows, cols]
    return rows[ok], cols[ok]


def _select(gt: FrameBoxes, det: FrameBoxes, cls: str) -> tuple[np.ndarray, ...]:
    """One class's ground truth (boxes, levels) and detections (boxes, scores, overlap_nlz)."""
    type_id = WAYMO_TYPES[cls]
    kept, levels = gt_levels(gt)
    g_mask = kept & (np.asarray(gt.types).reshape(-1) == type_id)
    if det.scores is None:
        raise ValueError(f"frame {det.frame_id!r}: detections need scores")
    d_mask = np.asarray(det.types).reshape(-1) == type_id
    nlz = np.zeros(len(d_mask), bool)
    if det.overlap_nlz is not None:
        nlz = np.asarray(det.overlap_nlz, bool).reshape(-1)
    return (
        np.asarray(gt.boxes).reshape(-1, 7)[g_mask],
        levels[g_mask],
        np.asarray(det.boxes).reshape(-1, 7)[d_mask],
        np.asarray(det.scores, np.float32).reshape(-1)[d_mask],
        nlz[d_mask],
    )


def measure_frame(gt: FrameBoxes, det: FrameBoxes, cls: str, config: MetricsConfig) -> Counts:
    """Counts of one frame and one class, per score cutoff."""
    g_boxes, g_levels, d_boxes, scores, nlz = _select(gt, det, cls)
    shape = (len(d_boxes), len(g_boxes))
    can, weight = np.zeros(shape, bool), np.zeros(shape, np.int64)
    ha, affinity = np.zeros(shape), np.zeros(shape)
    if len(d_boxes) and len(g_boxes):
        threshold = config.iou_thresholds[cls]
        can, weight, ha, affinity = _pair_terms(d_boxes, g_boxes, threshold, config)
    order = np.argsort(-scores, kind="stable")
    matchable = can.any(axis=1)
    # the subset at a cutoff is the top-n predictions by score; cutoffs that keep the same n
    # give the same matching, so each distinct n is matched once
    cutoffs = np.asarray(config.score_cutoffs, np.float32)
    n_keep = (scores[None, :] >= cutoffs[:, None]).sum(axis=1)
    distinct, at = np.unique(n_keep, return_inverse=True)
    tp, fp, sum_ha, sum_la = (np.zeros(len(distinct)) for _ in range(4))
    fn = np.zeros((len(distinct), len(config.levels)))
    for u, n in enumerate(distinct):
        subset = order[:n]
        rows = subset[matchable[subset]]  # the others can never be matched
        r, gt_idx = _match(can[rows], weight[rows])
        pd_idx = rows[r]
        tp[u] = len(pd_idx)
        sum_ha[u] = ha[pd_idx, gt_idx].sum()
        sum_la[u] = affinity[pd_idx, gt_idx].sum()
        unmatched_pd = np.ones(len(scores), bool)
        unmatched_pd[pd_idx] = False
        fp[u] = (unmatched_pd[subset] & ~nlz[subset]).sum()  # no-label zones: never a FP
        unmatched_gt = np.ones(len(g_boxes), bool)
        unmatched_gt[gt_idx] = False
        fn[u] = [(unmatched_gt & (g_levels <= level)).sum() for level in config.levels]
    num_gt = np.array([(g_levels <= level).sum() for level in config.levels], np.int64)
    as_int = np.int64
    return Counts(tp[at].astype(as_int), fp[at].astype(as_int), fn[at].astype(as_int),
                  sum_ha[at], sum_la[at], num_gt)  # fmt: skip


def measure(
    gt: list[FrameBoxes], det: list[FrameBoxes], config: MetricsConfig
) -> dict[str, Counts]:
    """Counts per class, summed over the frames (``gt[k]`` and ``det[k]`` are one frame)."""
    if len(gt) != len(det):
        raise ValueError(f"{len(gt)} ground-truth frames but {len(det)} detection frames")
    if not gt:
        raise ValueError("no frames to evaluate")
    totals: dict[str, Counts] = {}
    for g, d in zip(gt, det, strict=True):
        for cls in CLASSES:
            counts = measure_frame(g, d, cls, config)
            if cls in totals:
                totals[cls] += counts
            else:
                totals[cls] = counts
    return totals


def evaluate(
    gt: list[FrameBoxes], det: list[FrameBoxes], config: MetricsConfig
) -> dict[str, dict[str, dict[str, float]]]:
    """``{class: {"L1": {"AP", "APH", "APL", "num_gt"}, ...}}`` for the config's levels."""
    totals = measure(gt, det, config)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for cls, counts in totals.items():
        out[cls] = {}
        for j, level in enumerate(config.levels):
            metrics = curve_metrics(
                counts.tp, counts.fp, counts.fn[:, j], counts.sum_ha, counts.sum_la,
                config.desired_recall_delta,
            )  # fmt: skip
            out[cls][f"L{level}"] = {**metrics, "num_gt": int(counts.num_gt[j])}
    return out


def _mean(per_class: dict[str, dict[str, float]], keys: tuple[str, ...]) -> dict[str, float]:
    return {k: float(np.mean([per_class[c][k] for c in CLASSES])) for k in keys}


def waymo_metrics(gt: list[FrameBoxes], det: list[FrameBoxes], let: bool = True) -> dict:
    """The Waymo leaderboard numbers for matched lists of frames.

    Returns ``{"VEHICLE": {"L1": {"AP", "APH", "num_gt"}, "L2": {...}}, "PEDESTRIAN": ...,
    "CYCLIST": ..., "mean": {"L1": {"AP", "APH"}, "L2": ...}}`` and, with ``let``,
    ``"LET": {"VEHICLE": {"AP", "APH", "APL", "num_gt"}, ..., "mean": {...}}`` (LEVEL_2, the
    camera-only challenge's config). The mean is over VEHICLE, PEDESTRIAN and CYCLIST.
    """
    result: dict = {}
    detection = evaluate(gt, det, DETECTION_3D)
    for cls in CLASSES:
        result[cls] = {
            level: {k: m[k] for k in ("AP", "APH", "num_gt")} for level, m in detection[cls].items()
        }
    result["mean"] = {
        level: _mean({c: detection[c][level] for c in CLASSES}, ("AP", "APH"))
        for level in ("L1", "L2")
    }
    if let:
        camera = evaluate(gt, det, CAMERA_LET_3D)
        result["LET"] = {cls: dict(camera[cls]["L2"]) for cls in CLASSES}
        result["LET"]["mean"] = _mean(result["LET"], ("AP", "APH", "APL"))
    return result


def format_table(metrics: dict) -> str:
    """A markdown table of :func:`waymo_metrics`' result (values as fractions)."""
    header = ["class", "L1 AP", "L1 APH", "L2 AP", "L2 APH"]
    if "LET" in metrics:
        header += ["LET-AP", "LET-APH", "LET-APL"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cls in (*CLASSES, "mean"):
        m = metrics[cls]
        cells = [m["L1"]["AP"], m["L1"]["APH"], m["L2"]["AP"], m["L2"]["APH"]]
        if "LET" in metrics:
            cells += [metrics["LET"][cls][k] for k in ("AP", "APH", "APL")]
        lines.append(f"| {cls} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")
    return "\n".join(lines)
