"""Ego-frame detections scored with the dataset's own metric (nuScenes devkit, KITTI AP|R40 or
Waymo AP/APH and LET-3D-AP), whatever produced them: a checkpoint run over the split
(:func:`bevkd.stages.predict.evaluate_model`) or a teacher store's cached boxes
(:mod:`bevkd.eval.store_boxes`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bevkd.datasets.frame import Frame
from bevkd.models.outputs import Detections
from bevkd.pipeline.config import Config


def evaluate_detections(
    cfg: Config,
    frames: Sequence[Frame],
    detections: Sequence[Detections],
    out_dir: str | Path,
    classes: Sequence[str] | None = None,
    meta: dict[str, bool] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ego-frame detections (one per frame of ``cfg.eval.eval_set``) with the dataset's
    own metric: KITTI AP|R40 for KITTI data, Waymo's AP/APH and LET-3D-AP for Waymo data
    (:mod:`bevkd.eval.waymo`), else the nuScenes devkit on a results JSON.

    ``labels`` index ``classes`` (default ``cfg.classes``); ``meta`` is the results file's sensor
    flags (nuScenes); ``extra`` is merged into the returned summary and its metrics file.
    Writes the results (``kitti_results/``, ``waymo_results.json`` or ``results_nusc.json``)
    and the metrics into ``out_dir``.
    """
    out = Path(out_dir)
    classes = tuple(cfg.classes if classes is None else classes)
    if cfg.data.format == "kitti":
        from bevkd.eval import kitti_ap

        results_dir = out / "kitti_results"
        results_dir.mkdir(parents=True, exist_ok=True)
        for frame, det in zip(frames, detections, strict=True):
            kitti_ap.write_detections(
                results_dir,
                frame,
                det.boxes.numpy(),
                det.scores.numpy(),
                det.labels.numpy(),
                classes,
            )
        metrics: dict[str, Any] = kitti_ap.run(cfg, results_dir, out, extra=extra)
        return metrics
    if cfg.data.format == "waymo":
        from bevkd.eval import waymo

        return waymo.evaluate(cfg, frames, detections, out, classes, extra)
    from bevkd.eval import nuscenes
    from bevkd.eval.nuscenes_results import detections_to_results, write_results

    flags = {"use_camera": False, "use_lidar": False, **(meta or {})}
    body = detections_to_results(
        frames,
        detections,
        classes,
        meta=dict(flags, use_radar=False, use_map=False, use_external=False),
    )
    results = write_results(body, out / "results_nusc.json")
    return nuscenes.run(cfg, results, out, extra=extra)
