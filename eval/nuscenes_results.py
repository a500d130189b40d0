"""nuScenes detection results JSON from bevkd boxes (ego frame) and from the GT itself.

Format (https://www.nuscenes.org/object-detection): ``{"meta": {...}, "results": {sample_token:
[box, ...]}}`` with each box in the *global* frame: ``translation`` (3), ``size`` (w, l, h, the
devkit's order), ``rotation`` (quaternion w, x, y, z, yaw only), ``velocity`` (2),
``detection_name``, ``detection_score``, ``attribute_name``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pyquaternion import Quaternion

from bevkd.datasets.frame import Frame
from bevkd.models.outputs import Detections
from bevkd.pipeline.geometry import NUSCENES_CLASSES, yaw_of

CAMERA_META = {
    "use_camera": True,
    "use_lidar": False,
    "use_radar": False,
    "use_map": False,
    "use_external": False,
}
MOVING_SPEED = 0.2  # m/s: above it a vehicle is "moving", a cycle "with_rider" (CenterPoint's rule)
_VEHICLES = {"car", "truck", "bus", "trailer", "construction_vehicle"}


def default_attribute(name: str, speed: float) -> str:
    """The attribute a box of class ``name`` gets when the model predicts none."""
    moving = speed > MOVING_SPEED
    if name in _VEHICLES:
        return "vehicle.moving" if moving else "vehicle.parked"
    if name == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    if name in ("bicycle", "motorcycle"):
        return "cycle.with_rider" if moving else "cycle.without_rider"
    return ""  # barrier, traffic_cone: the devkit evaluates no attribute for them


def ego_boxes_to_results(
    token: str,
    boxes: np.ndarray,
    scores: np.ndarray,
    names: Sequence[str],
    ego2global: np.ndarray,
) -> list[dict[str, Any]]:
    """``(N, 9)`` ego-frame boxes of one frame -> result boxes in the global frame."""
    out = []
    rot = ego2global[:3, :3]
    for box, score, name in zip(np.asarray(boxes, np.float64), scores, names, strict=True):
        centre = rot @ box[:3] + ego2global[:3, 3]
        c, s = np.cos(box[6]), np.sin(box[6])
        heading = rot @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        # Boxes stand upright in the global frame: keep only the yaw of the ego's pitch/roll.
        quaternion = Quaternion(axis=[0.0, 0.0, 1.0], angle=yaw_of(heading))
        velocity = (rot @ np.array([box[7], box[8], 0.0]))[:2]
        out.append(
            {
                "sample_token": token,
                "translation": [float(v) for v in centre],
                "size": [float(box[4]), float(box[3]), float(box[5])],
                "rotation": [float(v) for v in quaternion.elements],
                "velocity": [float(v) for v in velocity],
                "detection_name": name,
                "detection_score": float(score),
                "attribute_name": default_attribute(name, float(np.hypot(box[7], box[8]))),
            }
        )
    return out


def _check_classes(classes: Sequence[str]) -> None:
    unknown = [c for c in classes if c not in NUSCENES_CLASSES]
    if unknown:
        raise ValueError(f"classes {unknown} are not nuScenes detection classes {NUSCENES_CLASSES}")


def detections_to_results(
    frames: Sequence[Frame],
    detections: Sequence[Detections],
    classes: Sequence[str] = NUSCENES_CLASSES,
    meta: dict[str, bool] | None = None,
) -> dict[str, Any]:
    """Results JSON body for ``frames`` from one :class:`Detections` (ego frame) per frame.

    ``labels`` index ``classes``. Every frame gets an entry, an empty list when nothing was
    detected: the devkit requires every sample of the evaluated split.
    """
    if len(frames) != len(detections):
        raise ValueError(f"{len(frames)} frames but {len(detections)} detections")
    _check_classes(classes)
    results: dict[str, list[dict[str, Any]]] = {}
    for frame, det in zip(frames, detections, strict=True):
        det = det.cpu()
        boxes = det.boxes.double().numpy().reshape(-1, 9)
        names = [classes[int(i)] for i in det.labels.tolist()]
        results[frame.token] = ego_boxes_to_results(
            frame.token, boxes, det.scores.numpy(), names, frame.ego2global
        )
    return {"meta": dict(meta or CAMERA_META), "results": results}


def gt_to_results(
    frames: Sequence[Frame], classes: Sequence[str] = NUSCENES_CLASSES
) -> dict[str, Any]:
    """The GT of labeled ``frames`` as a results body (score 1), a perfect detector's output.

    Boxes with no LiDAR points are left out, as the devkit leaves them out of its GT (it drops
    GT boxes with 0 LiDAR and 0 radar points; the synthetic world has no radar).
    """
    _check_classes(classes)
    results = {}
    for frame in frames:
        keep = frame.num_lidar_pts > 0
        names = [classes[int(i)] for i in frame.labels[keep]]
        scores = np.ones(int(keep.sum()))
        results[frame.token] = ego_boxes_to_results(
            frame.token, frame.boxes[keep], scores, names, frame.ego2global
        )
    return {"meta": dict(CAMERA_META, use_lidar=True), "results": results}


def write_results(body: dict[str, Any], path: str | Path) -> Path:
    """Write a results body as JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body))
    return path
