"""Waymo detection metrics on bevkd detections: AP/APH at LEVEL_1 and LEVEL_2 and the
camera-only LET-3D-AP/APH/APL (:mod:`bevkd.eval.waymo_metrics`), from frames and their
detections or from a ``waymo_results.json`` written here.

The ground truth is each labelled frame's boxes with their ``num_lidar_points_in_box`` (the
level rule: <= 5 points is LEVEL_2). With ``data.fov_only`` only the boxes the student's
cameras see are scored, ground truth and detections alike (:mod:`bevkd.datasets.fov`), as
Waymo's camera-only tool keeps only the boxes some camera sees.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bevkd.datasets import fov
from bevkd.datasets.frame import Frame
from bevkd.eval.waymo_metrics import FrameBoxes, format_table, waymo_metrics, waymo_types
from bevkd.models.outputs import Detections
from bevkd.pipeline.config import Config
from bevkd.pipeline.errors import DataError

RESULTS_NAME = "waymo_results.json"


def _in_view(frame: Frame, cameras: Sequence[str], xy: np.ndarray) -> np.ndarray:
    """(N,) bool: ``xy`` seen by the frame's cameras named in ``cameras`` (all when empty)."""
    chosen = [c for c in frame.cameras if not cameras or c.name in cameras]
    if not chosen:
        raise DataError(f"frame {frame.token}: none of the cameras {list(cameras)} to restrict to")
    return fov.visible(
        xy,
        np.stack([c.cam2img for c in chosen]),
        np.stack([c.cam2ego for c in chosen]),
        [c.width for c in chosen],
    )


def ground_truth(frame: Frame, classes: Sequence[str], cameras: Sequence[str] = ()) -> FrameBoxes:
    """The frame's labelled boxes of Waymo's scored types (only those ``cameras`` see, if
    given)."""
    boxes = np.asarray(frame.boxes, np.float64).reshape(-1, 9)
    types = waymo_types(np.asarray(frame.labels), classes)
    points = np.asarray(frame.num_lidar_pts, np.int64).reshape(-1)
    if len(points) != len(boxes):
        raise DataError(
            f"frame {frame.token}: {len(boxes)} boxes but {len(points)} LiDAR point counts; "
            "Waymo's levels need num_lidar_points_in_box for every box"
        )
    keep = types > 0
    if cameras:
        keep &= _in_view(frame, cameras, boxes[:, :2])
    return FrameBoxes(boxes[keep], types[keep], num_lidar_points=points[keep], frame_id=frame.token)


def predictions(
    frame: Frame, det: Detections, classes: Sequence[str], cameras: Sequence[str] = ()
) -> FrameBoxes:
    """A frame's detections of Waymo's scored types (only those ``cameras`` see, if given)."""
    boxes = det.boxes.numpy().astype(np.float64).reshape(-1, det.boxes.shape[-1])
    types = waymo_types(det.labels.numpy(), classes)
    scores = det.scores.numpy().astype(np.float64)
    keep = types > 0
    if cameras:
        keep &= _in_view(frame, cameras, boxes[:, :2])
    return FrameBoxes(boxes[keep], types[keep], scores=scores[keep], frame_id=frame.token)


def write_results(
    path: Path, frames: Sequence[Frame], detections: Sequence[Detections], classes: Sequence[str]
) -> Path:
    """Detections as JSON: ``{"classes": [...], "frames": {token: {"boxes": [[x, y, z, l, w,
    h, yaw, vx, vy], ...], "scores": [...], "labels": [...]}}}`` (ego frame)."""
    body = {
        "classes": list(classes),
        "frames": {
            frame.token: {
                "boxes": det.boxes.numpy().astype(float).round(4).tolist(),
                "scores": det.scores.numpy().astype(float).round(5).tolist(),
                "labels": det.labels.numpy().astype(int).tolist(),
            }
            for frame, det in zip(frames, detections, strict=True)
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body))
    return path


def read_results(path: Path, frames: Sequence[Frame]) -> tuple[list[Detections], list[str]]:
    """The detections of ``frames`` from a :func:`write_results` file (a frame it lacks has
    none) and the class list its labels index."""
    import torch

    try:
        body = json.loads(Path(path).read_text())
        classes, stored = list(body["classes"]), body["frames"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a bevkd Waymo results file ({exc})") from None
    unknown = sorted(set(stored) - {f.token for f in frames})
    if unknown:
        raise DataError(
            f"{path}: {len(unknown)} frames not in the evaluated split, e.g. {unknown[0]}"
        )
    out = []
    for frame in frames:
        entry = stored.get(frame.token, {"boxes": [], "scores": [], "labels": []})
        boxes = np.asarray(entry["boxes"], np.float32).reshape(-1, 9)
        out.append(
            Detections(
                torch.from_numpy(boxes),
                torch.tensor(entry["scores"], dtype=torch.float32),
                torch.tensor(entry["labels"], dtype=torch.int64),
            )
        )
    return out, classes


def evaluate(
    cfg: Config,
    frames: Sequence[Frame],
    detections: Sequence[Detections],
    out_dir: str | Path,
    classes: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the labelled frames' detections; writes ``waymo_results.json``, ``metrics.json``
    and ``summary.md`` into ``out_dir`` and returns the summary (:func:`waymo_metrics`' keys
    plus ``eval_set``, ``num_frames``, ``fov_only``)."""
    out = Path(out_dir)
    classes = tuple(cfg.classes if classes is None else classes)
    write_results(out / RESULTS_NAME, frames, detections, classes)
    cameras = tuple(cfg.data.cameras) if cfg.data.fov_only else ()
    pairs = [(f, d) for f, d in zip(frames, detections, strict=True) if f.has_label]
    gt = [ground_truth(f, classes, cameras) for f, _ in pairs]
    det = [predictions(f, d, classes, cameras) for f, d in pairs]
    summary: dict[str, Any] = {
        "metric": "waymo",
        **waymo_metrics(gt, det, let=True),
        "eval_set": cfg.eval.eval_set,
        "num_frames": len(pairs),
        "fov_only": cfg.data.fov_only,
        **(extra or {}),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(summary_text(summary) + "\n")
    return summary


def summary_text(summary: dict[str, Any]) -> str:
    """The headline and the per-class table of an :func:`evaluate` summary."""
    scope = ", inside the cameras' field of view" if summary.get("fov_only") else ""
    head = (
        f"Waymo {summary['eval_set']} ({summary['num_frames']} labelled frames{scope}): "
        f"mAPH L2 {summary['mean']['L2']['APH']:.4f}  LET-3D-APL {summary['LET']['mean']['APL']:.4f}"
    )
    return f"{head}\n\n{format_table(summary)}"
