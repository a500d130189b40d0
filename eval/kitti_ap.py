"""KITTI 3D object metric: AP|R40 for 3D, BEV and 2D boxes, Easy / Moderate / Hard.

Rules of the official devkit (``evaluate_object_3d_offline.cpp``) and its Python port in
OpenPCDet (``kitti_object_eval_python/eval.py``, used for CMKD's published numbers):

- difficulty: a GT object counts for a level if its 2D box is taller than 40 / 25 / 25 px,
  occlusion <= 0 / 1 / 2 and truncation <= 0.15 / 0.3 / 0.5; objects of the class failing the
  level are *ignored* (neither TP nor FN), as are the neighbouring classes (Van for Car,
  Person_sitting for Pedestrian). Detections lower than the level's height are ignored.
- matching: GT in file order; a detection matches if its overlap is > 0.7 (Car) or > 0.5
  (Pedestrian, Cyclist); the best-overlapping valid detection wins.
- DontCare: unmatched detections whose 2D box lies > min-overlap inside a DontCare region
  (intersection over the detection's area) are not false positives. The Python port applies
  this to the 2D metric only, the C++ devkit to every metric: ``dontcare_metrics`` picks.
- AP|R40: mean over recall r in {1/40, ..., 40/40} of the interpolated precision
  ``max_{r' >= r} p(r')`` (Simonelli et al., 2019), times 100.

``sampling="exact"`` (default) evaluates that definition on every score threshold.
``sampling="devkit"`` reproduces the devkit's approximation bit for bit: it samples at most
41 thresholds from the TP scores and cannot reach 100 when a class has fewer than 40 GT
objects (10 perfectly detected GT give 22.5). Use it to compare with published tables; on
KITTI val-sized sets the two agree closely (see tests/test_kitti_ap.py).

Pixel thresholds assume real KITTI images (375 px high). ``image_scale`` multiplies them for
images stored at another resolution (0.5 for a half-resolution export).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bevkd.datasets.kitti_labels import KittiObject
from bevkd.eval.kitti_match import Packed, pack, threshold_events, tp_scores

DIFFICULTIES = ("easy", "moderate", "hard")
MIN_HEIGHT = (40.0, 25.0, 25.0)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
MIN_OVERLAP = {
    "Car": 0.7,
    "Pedestrian": 0.5,
    "Cyclist": 0.5,
    "Van": 0.7,
    "Person_sitting": 0.5,
    "Truck": 0.7,
}
NEIGHBOUR = {"Car": "Van", "Pedestrian": "Person_sitting"}
METRICS = ("3d", "bev", "2d")
N_SAMPLE_PTS = 41


def ignore_flags(p: Packed, cls: str, level: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The devkit's ``clean_data`` for all frames at once: GT flags (0 valid, 1 ignored, -1
    other class) and detection flags (0 valid, 1 too small, -1 other class)."""
    min_height = MIN_HEIGHT[level] * scale
    same = p.gt_type == cls
    neighbour = p.gt_type == NEIGHBOUR.get(cls, "")
    hard = (
        (p.gt_occluded > MAX_OCCLUSION[level])
        | (p.gt_truncated > MAX_TRUNCATION[level])
        | (p.gt_height <= min_height)
    )
    ign_gt = np.where(same & ~hard, 0, np.where(neighbour | same, 1, -1))
    ign_dt = np.where(p.dt_height < min_height, 1, np.where(p.dt_type == cls, 0, -1))
    return ign_gt, ign_dt


def get_thresholds(scores: np.ndarray, num_gt: int) -> np.ndarray:
    """The devkit's score sampling: about one threshold per 1/40 of recall."""
    scores = np.sort(np.asarray(scores, np.float64))[::-1]
    current, out = 0.0, []
    for i, score in enumerate(scores):
        left = (i + 1) / num_gt
        right = (i + 2) / num_gt if i < len(scores) - 1 else left
        if (right - current) < (current - left) and i < len(scores) - 1:
            continue
        out.append(score)
        current += 1.0 / (N_SAMPLE_PTS - 1.0)
    return np.array(out[:N_SAMPLE_PTS])


def _average_precision(
    p: Packed,
    metric: str,
    ign_gt: np.ndarray,
    ign_dt: np.ndarray,
    min_overlap: float,
    sampling: str,
    dontcare: bool,
) -> float | None:
    num_valid = int((ign_gt == 0).sum())
    if num_valid == 0:
        return None
    dc_hit = (p.dc_overlap > min_overlap) if dontcare else np.zeros(len(ign_dt), bool)
    scores, d_tp, d_fp, d_fn = threshold_events(p, metric, ign_gt, ign_dt, dc_hit, min_overlap)
    if not len(scores):
        return 0.0
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    tp, fp = np.cumsum(d_tp[order]), np.cumsum(d_fp[order])
    fn = num_valid + np.cumsum(d_fn[order])
    if sampling == "devkit":
        thresholds = get_thresholds(tp_scores(p, metric, ign_gt, ign_dt, min_overlap), num_valid)
        last = np.searchsorted(-scores, -thresholds, side="right") - 1  # events with score >= t
        precision = np.zeros(N_SAMPLE_PTS)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision[: len(last)] = np.nan_to_num(tp[last] / (tp[last] + fp[last]))
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        return float(precision[1:].sum() / (N_SAMPLE_PTS - 1) * 100)
    if sampling != "exact":
        raise ValueError(f"sampling must be 'exact' or 'devkit', got '{sampling}'")
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # one point per distinct score
    tp, fp, fn = tp[last], fp[last], fn[last]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(tp / (tp + fp))
    total = 0.0
    for k in range(1, N_SAMPLE_PTS):
        reached = ((N_SAMPLE_PTS - 1) * tp >= k * (tp + fn)) & (tp > 0)  # recall >= k/40, exactly
        total += float(precision[reached].max()) if reached.any() else 0.0
    return total / (N_SAMPLE_PTS - 1) * 100


def evaluate_kitti(
    gt: Mapping[str, Sequence[KittiObject]],
    dt: Mapping[str, Sequence[KittiObject]],
    classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"),
    metrics: Sequence[str] = ("bev", "3d", "2d"),
    image_scale: float = 1.0,
    sampling: str = "exact",
    dontcare_metrics: Sequence[str] = ("2d",),
    min_overlap: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """AP|R40 per class, metric and difficulty over the frames of ``gt``.

    ``min_overlap`` replaces the official overlap of some classes (e.g. ``{"Car": 0.5}``, the
    looser threshold monocular 3D papers report beside 0.7).

    ``gt``/``dt`` map frame ids to KITTI objects (detections need scores; a frame missing
    from ``dt`` has no detections). Returns ``{"ap": {cls: {metric: {difficulty: AP}}},
    "num_gt": {cls: {difficulty: n}}, ...}`` with AP in [0, 100], None where a class has no
    GT object at that difficulty.
    """
    unknown = sorted(set(dt) - set(gt))
    if unknown:
        raise ValueError(f"detections for {len(unknown)} frames without GT, e.g. {unknown[:3]}")
    overlap = {**MIN_OVERLAP, **(min_overlap or {})}
    for cls in classes:
        if cls not in overlap:
            raise ValueError(
                f"no KITTI overlap threshold for class '{cls}'; use {sorted(MIN_OVERLAP)}"
            )
    keys = sorted(gt)
    for key in keys:
        for k, obj in enumerate(dt.get(key, ())):
            if obj.score is None:
                raise ValueError(f"frame {key}: detection {k} ({obj.type}) has no score")
    unknown_metrics = set(metrics) - set(METRICS)
    if unknown_metrics:
        raise ValueError(f"unknown KITTI metrics {sorted(unknown_metrics)}; use {METRICS}")
    packed = pack([gt[k] for k in keys], [dt.get(k, ()) for k in keys], metrics)
    ap: dict[str, dict[str, dict[str, float | None]]] = {
        c: {m: {} for m in metrics} for c in classes
    }
    num_gt: dict[str, dict[str, int]] = {c: {} for c in classes}
    for cls in classes:
        for level, name in enumerate(DIFFICULTIES):
            ign_gt, ign_dt = ignore_flags(packed, cls, level, image_scale)
            num_gt[cls][name] = int((ign_gt == 0).sum())
            for metric in metrics:
                ap[cls][metric][name] = _average_precision(
                    packed,
                    metric,
                    ign_gt,
                    ign_dt,
                    overlap[cls],
                    sampling,
                    metric in dontcare_metrics,
                )
    return {
        "metric": "KITTI AP|R40",
        "ap": ap,
        "num_gt": num_gt,
        "min_overlap": {c: overlap[c] for c in classes},
        "frames": len(keys),
        "image_scale": image_scale,
        "sampling": sampling,
        "dontcare_metrics": list(dontcare_metrics),
    }


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of a result: one row per class and metric, E / M / H columns."""
    lines = [f"{result['metric']} ({result['frames']} frames, sampling {result['sampling']})"]
    lines.append(f"{'class':<12}{'metric':<7}{'easy':>8}{'moderate':>10}{'hard':>8}   num_gt E/M/H")
    for cls, per_metric in result["ap"].items():
        counts = "/".join(str(result["num_gt"][cls][d]) for d in DIFFICULTIES)
        for metric, values in per_metric.items():
            cells = ["-" if values[d] is None else f"{values[d]:.2f}" for d in DIFFICULTIES]
            lines.append(f"{cls:<12}{metric:<7}{cells[0]:>8}{cells[1]:>10}{cells[2]:>8}   {counts}")
    return "\n".join(lines)


def read_frames(
    directory: Path, ids: Sequence[str], need_score: bool
) -> dict[str, list[KittiObject]]:
    """``<directory>/<id>.txt`` for every id; a missing file or a missing score is an error."""
    from bevkd.datasets.kitti_labels import read_label
    from bevkd.pipeline.errors import DataError

    out = {}
    for frame_id in ids:
        path = directory / f"{frame_id}.txt"
        if not path.is_file():
            what = (
                "write an empty file for a frame without detections"
                if need_score
                else "check the label directory"
            )
            raise DataError(f"{path} not found ({what})")
        objects = read_label(path)
        if need_score and any(o.score is None for o in objects):
            raise DataError(f"{path}: detection lines need a 16th field, the score")
        out[frame_id] = objects
    return out


def run(
    cfg: Any,
    results_dir: str | Path,
    out_dir: str | Path,
    label_dir: str | Path | None = None,
    split: str | None = None,
    image_scale: float | None = None,
    sampling: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate KITTI-format detection files ``<results_dir>/<id>.txt`` (with scores) against
    ``<label_dir>/<id>.txt`` for the object ids of the list ``split`` (default
    ``cfg.eval.eval_set``); raw-frame lines of a mixed list are skipped (they have no labels).

    ``label_dir`` defaults to ``<object root>/training/label_2``. Classes are ``cfg.classes``
    mapped to KITTI types. ``image_scale`` defaults to ``cfg.data.kitti_pixel_scale``,
    ``sampling`` to ``cfg.eval.kitti_sampling``. Writes ``kitti_ap.json``, ``kitti_ap.txt`` and the resolved config
    into ``out_dir``; returns the result of :func:`evaluate_kitti`, with ``extra`` merged in.
    """
    from bevkd.datasets.kitti import kitti_roots
    from bevkd.datasets.kitti_labels import BEVKD_TO_KITTI
    from bevkd.datasets.kitti_lists import read_split_list, split_list_path
    from bevkd.pipeline.config import save_resolved
    from bevkd.pipeline.errors import DataError

    roots = kitti_roots(cfg.data.root, cfg.data.kitti_raw_root)
    list_path = split_list_path(split or cfg.eval.eval_set, roots.object_root)
    ids = [e.token for e in read_split_list(list_path) if e.kind == "object"]
    if not ids:
        raise DataError(f"{list_path} names no KITTI object frame, so there is nothing to evaluate")
    labels = Path(label_dir) if label_dir else roots.object_root / "training" / "label_2"
    classes = tuple(BEVKD_TO_KITTI[c] for c in cfg.classes if BEVKD_TO_KITTI.get(c) in MIN_OVERLAP)
    if not classes:
        raise DataError(
            f"none of the classes {list(cfg.classes)} has a KITTI counterpart to evaluate"
        )
    gt = read_frames(labels, ids, need_score=False)
    dt = read_frames(Path(results_dir), ids, need_score=True)
    scale = cfg.data.kitti_pixel_scale if image_scale is None else image_scale
    result = evaluate_kitti(
        gt, dt, classes, image_scale=scale, sampling=sampling or cfg.eval.kitti_sampling
    )
    result["split_list"] = str(list_path)
    result.update(extra or {})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kitti_ap.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "kitti_ap.txt").write_text(format_table(result) + "\n")
    save_resolved(cfg, out)
    return result


def write_detections(
    results_dir: str | Path,
    frame: Any,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
) -> Path:
    """Write one frame's ego-frame detections as ``<results_dir>/<token>.txt`` for :func:`run`
    (an empty file when there are none). ``frame`` is the KITTI :class:`Frame` they belong to."""
    from bevkd.datasets.kitti import detections_to_kitti
    from bevkd.datasets.kitti_labels import write_label

    path = Path(results_dir) / f"{frame.token}.txt"
    write_label(path, detections_to_kitti(frame, boxes, scores, labels, classes))
    return path
