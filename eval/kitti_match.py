"""The KITTI devkit's matching, vectorised over frames and score thresholds.

The devkit (``compute_statistics``) matches GT in file order; at a score threshold ``t`` only
detections scoring >= ``t`` take part. A frame's counts change only at its own detection
scores, so :func:`threshold_events` evaluates each frame once per distinct score ("level"),
all frames and levels at once as rows of padded arrays, and returns the changes of tp / fp / fn
at each score. Summing the changes in descending score order gives tp / fp / fn at any
threshold, which both the exact AP|R40 and the devkit's sampled one need.

Flags follow the devkit: GT 0 valid, 1 ignored (other difficulty or neighbouring class), -1
not this class; detections 0 valid, 1 ignored (too small), -1 not this class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bevkd.datasets.kitti_labels import KittiObject
from bevkd.eval.kitti_iou import (
    bev_intersection_pairs,
    bev_iou_pairs,
    box3d_iou_pairs,
    image_overlap_pairs,
)


@dataclass
class Packed:
    """All frames' GT (DontCare apart) and detections, frame-major, in file order.

    ``pairs[metric]`` = (detection index, GT index, overlap) for every same-frame pair with a
    positive overlap; ``dc_overlap`` (D,) is each detection's largest intersection-over-its-area
    with a DontCare box of its frame.
    """

    gt_frame: np.ndarray
    gt_type: np.ndarray
    gt_height: np.ndarray
    gt_occluded: np.ndarray
    gt_truncated: np.ndarray
    dt_frame: np.ndarray
    dt_type: np.ndarray
    dt_height: np.ndarray
    dt_score: np.ndarray
    dc_overlap: np.ndarray
    pairs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def _rect(objects: Sequence[KittiObject]) -> np.ndarray:
    return np.array([(*o.location, *o.dimensions, o.rotation_y) for o in objects]).reshape(-1, 7)


def pack(
    gt: Sequence[Sequence[KittiObject]], dt: Sequence[Sequence[KittiObject]], metrics: Sequence[str]
) -> Packed:
    """Pack per-frame GT and detections (detections need scores) and their overlaps."""
    gts = [[o for o in frame if o.type != "DontCare"] for frame in gt]
    dcs = [[o for o in frame if o.type == "DontCare"] for frame in gt]
    flat_gt = [o for frame in gts for o in frame]
    flat_dt = [o for frame in dt for o in frame]
    gt_frame = np.repeat(np.arange(len(gts)), [len(f) for f in gts])
    dt_frame = np.repeat(np.arange(len(dt)), [len(f) for f in dt])
    gt_bbox = np.array([o.bbox for o in flat_gt], np.float64).reshape(-1, 4)
    dt_bbox = np.array([o.bbox for o in flat_dt], np.float64).reshape(-1, 4)
    # every same-frame (detection, GT) pair
    gt_start = np.r_[0, np.cumsum([len(f) for f in gts])]
    dt_start = np.r_[0, np.cumsum([len(f) for f in dt])]
    pd, pg = [], []
    for f in range(len(gts)):
        d, g = np.meshgrid(
            np.arange(dt_start[f], dt_start[f + 1]),
            np.arange(gt_start[f], gt_start[f + 1]),
            indexing="ij",
        )
        pd.append(d.ravel())
        pg.append(g.ravel())
    pair_dt = np.concatenate(pd) if pd else np.zeros(0, np.int64)
    pair_gt = np.concatenate(pg) if pg else np.zeros(0, np.int64)
    values: dict[str, np.ndarray] = {}
    if "2d" in metrics:
        values["2d"] = image_overlap_pairs(dt_bbox[pair_dt], gt_bbox[pair_gt])
    if "bev" in metrics or "3d" in metrics:
        a, b = _rect(flat_dt)[pair_dt], _rect(flat_gt)[pair_gt]
        inter = bev_intersection_pairs(a, b)
        values["bev"] = bev_iou_pairs(a, b, inter)
        values["3d"] = box3d_iou_pairs(a, b, inter)
    pairs = {}
    for metric in metrics:
        keep = values[metric] > 0
        pairs[metric] = (pair_dt[keep], pair_gt[keep], values[metric][keep])
    dc_overlap = np.zeros(len(flat_dt))
    for f, boxes in enumerate(dcs):
        if boxes and dt_start[f + 1] > dt_start[f]:
            dc_bbox = np.array([o.bbox for o in boxes], np.float64)
            inside = image_overlap_pairs(
                dt_bbox[dt_start[f] : dt_start[f + 1], None], dc_bbox[None], criterion=0
            )
            dc_overlap[dt_start[f] : dt_start[f + 1]] = inside.max(axis=1)
    return Packed(
        gt_frame=gt_frame,
        gt_type=np.array([o.type for o in flat_gt], dtype=object),
        gt_height=gt_bbox[:, 3] - gt_bbox[:, 1],
        gt_occluded=np.array([o.occluded for o in flat_gt], np.int64),
        gt_truncated=np.array([o.truncated for o in flat_gt], np.float64),
        dt_frame=dt_frame,
        dt_type=np.array([o.type for o in flat_dt], dtype=object),
        dt_height=np.abs(dt_bbox[:, 3] - dt_bbox[:, 1]),
        dt_score=np.array([o.score for o in flat_dt], np.float64),
        dc_overlap=dc_overlap,
        pairs=pairs,
    )


def _local_index(frame: np.ndarray) -> np.ndarray:
    """Position of each element within its frame (``frame`` sorted)."""
    first = np.searchsorted(frame, frame, side="left")
    return np.arange(len(frame)) - first


@dataclass
class _Dense:
    """Relevant detections and GT of the frames that have relevant detections, padded:
    ``overlap`` (F, D, G), ``dt_flag``/``score``/``dc`` (F, D), ``gt_flag`` (F, G); padding
    has flag -1 and score -inf."""

    overlap: np.ndarray
    dt_flag: np.ndarray
    score: np.ndarray
    dc: np.ndarray
    gt_flag: np.ndarray


def _dense(
    p: Packed, metric: str, ign_gt: np.ndarray, ign_dt: np.ndarray, dc_hit: np.ndarray
) -> _Dense | None:
    dets = np.nonzero(ign_dt != -1)[0]
    if not len(dets):
        return None
    frames = np.unique(p.dt_frame[dets])
    d_row = np.searchsorted(frames, p.dt_frame[dets])
    d_col = _local_index(p.dt_frame[dets])
    gts = np.nonzero((ign_gt != -1) & np.isin(p.gt_frame, frames))[0]
    g_row = np.searchsorted(frames, p.gt_frame[gts])
    g_col = _local_index(p.gt_frame[gts])
    n_d, n_g = int(d_col.max()) + 1, int(g_col.max()) + 1 if len(gts) else 0
    out = _Dense(
        overlap=np.zeros((len(frames), n_d, n_g)),
        dt_flag=np.full((len(frames), n_d), -1, np.int64),
        score=np.full((len(frames), n_d), -np.inf),
        dc=np.zeros((len(frames), n_d), bool),
        gt_flag=np.full((len(frames), n_g), -1, np.int64),
    )
    out.dt_flag[d_row, d_col] = ign_dt[dets]
    out.score[d_row, d_col] = p.dt_score[dets]
    out.dc[d_row, d_col] = dc_hit[dets]
    out.gt_flag[g_row, g_col] = ign_gt[gts]
    # scatter the overlaps of pairs whose detection and GT are both relevant
    d_slot = np.full((len(ign_dt), 2), -1)
    d_slot[dets] = np.stack([d_row, d_col], axis=1)
    g_slot = np.full(len(ign_gt), -1)
    g_slot[gts] = g_col
    pd, pg, value = p.pairs[metric]
    keep = (d_slot[pd, 0] >= 0) & (g_slot[pg] >= 0)
    out.overlap[d_slot[pd[keep], 0], d_slot[pd[keep], 1], g_slot[pg[keep]]] = value[keep]
    return out


def threshold_events(
    p: Packed,
    metric: str,
    ign_gt: np.ndarray,
    ign_dt: np.ndarray,
    dc_hit: np.ndarray,
    min_overlap: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(score, d_tp, d_fp, d_fn)`` per (frame, level): the change of the counts when the
    threshold drops to ``score``. With no detection eligible, tp = fp = 0 and fn = #valid GT."""
    dense = _dense(p, metric, ign_gt, ign_dt, dc_hit)
    if dense is None:
        return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    # rows: each frame's distinct detection scores, descending
    frame_of, det_of = np.nonzero(dense.dt_flag != -1)
    order = np.lexsort((-dense.score[frame_of, det_of], frame_of))
    row_frame, row_score = frame_of[order], dense.score[frame_of, det_of][order]
    distinct = np.r_[True, (np.diff(row_frame) != 0) | (np.diff(row_score) != 0)]
    row_frame, row_score = row_frame[distinct], row_score[distinct]
    rows = np.arange(len(row_frame))
    eligible = dense.score[row_frame] >= row_score[:, None]
    flag = dense.dt_flag[row_frame]
    assigned = np.zeros_like(eligible)
    tp = np.zeros(len(rows), np.int64)
    fn = np.zeros(len(rows), np.int64)
    for k in range(dense.gt_flag.shape[1]):
        gk = dense.gt_flag[row_frame, k]
        ov = dense.overlap[row_frame, :, k]
        cand = eligible & ~assigned & (ov > min_overlap) & (gk != -1)[:, None]
        valid, small = cand & (flag == 0), cand & (flag == 1)
        # a valid detection (best overlap, first on ties) beats a too-small one (first in order)
        has_valid = valid.any(axis=1)
        chosen = np.where(
            has_valid, np.argmax(np.where(valid, ov, -1.0), axis=1), np.argmax(small, axis=1)
        )
        found = has_valid | small.any(axis=1)
        fn += (gk == 0) & ~found
        tp += (gk == 0) & found & (flag[rows, chosen] == 0)
        assigned[rows[found], chosen[found]] = True
    fp = (eligible & ~assigned & (flag == 0) & ~dense.dc[row_frame]).sum(axis=1)
    first = np.r_[True, row_frame[1:] != row_frame[:-1]]
    base_fn = (dense.gt_flag == 0).sum(axis=1)[row_frame]
    prev = lambda counts, start: np.where(first, start, np.r_[0, counts[:-1]])  # noqa: E731
    return row_score, tp - prev(tp, 0), fp - prev(fp, 0), fn - prev(fn, base_fn)


def tp_scores(
    p: Packed, metric: str, ign_gt: np.ndarray, ign_dt: np.ndarray, min_overlap: float
) -> np.ndarray:
    """The devkit's first pass (``compute_fp=False``, every detection eligible): each GT takes
    the highest-scoring free detection above the overlap; returns the scores of the TPs."""
    dense = _dense(p, metric, ign_gt, ign_dt, np.zeros(len(ign_dt), bool))
    if dense is None:
        return np.zeros(0)
    rows = np.arange(len(dense.score))
    assigned = np.zeros(dense.score.shape, bool)
    out = []
    for k in range(dense.gt_flag.shape[1]):
        gk = dense.gt_flag[:, k]
        cand = (
            ~assigned
            & (dense.dt_flag != -1)
            & (dense.overlap[:, :, k] > min_overlap)
            & (gk != -1)[:, None]
        )
        chosen = np.argmax(np.where(cand, dense.score, -np.inf), axis=1)
        found = cand.any(axis=1)
        hit = found & (gk == 0) & (dense.dt_flag[rows, chosen] == 0)
        out.append(dense.score[rows[hit], chosen[hit]])
        assigned[rows[found], chosen[found]] = True
    return np.concatenate(out) if out else np.zeros(0)
