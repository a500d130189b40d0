"""Run the official Waymo Open Dataset detection metrics on hand-made frames; write reference.json.

Runs ONLY in the separate venv that ``waymo_env.sh`` builds (TensorFlow 2.13 +
waymo-open-dataset-tf-2-12-0 1.6.7); it imports neither bevkd nor anything from this repo:

    bash tests/data/waymo_metrics/waymo_env.sh /work/waymoenv
    /work/waymoenv/bin/python tests/data/waymo_metrics/make_official_reference.py

The metrics come from the official C++ op ``py_metrics_ops.detection_metrics``
(``waymo_open_dataset/metrics/ops/detection_metrics_ops.cc``), called with two configs:

- ``detection``: ``WODDetectionEvaluator._get_default_config()`` (the Python twin of
  ``GetConfig()`` in ``metrics/tools/compute_detection_metrics_main.cc``): Hungarian matcher,
  IoU 0.7 / 0.5 / 0.5 (vehicle / pedestrian / cyclist), 3D boxes, score cutoffs 0.00..1.00,
  LEVEL_1 and LEVEL_2; only its OBJECT_TYPE breakdown is kept (the RANGE one is dropped).
- ``let``: ``GetConfig()`` of ``metrics/tools/compute_detection_let_metrics_main.cc`` (the 3D
  camera-only challenge): LET enabled, TYPE_RANGE_ALIGNED, 10 % longitudinal tolerance, at least
  0.5 m, sensor (camera) at (1.43, 0, 2.18), IoU 0.5 / 0.3 / 0.3, LEVEL_2 only.

The op takes each ground-truth box's difficulty level as given. The tools decide it before they
call the metrics (``compute_detection_metrics_main.cc`` lines 137-153): a box with no lidar
point is dropped; a box without a human-labelled level is LEVEL_2 when it holds <= 5 points,
else LEVEL_1. :func:`tool_preprocess` does that here, so the fixture stores the raw inputs
(points and labelled level) and bevkd has to reproduce that step too.

The output is deterministic (fixed seeds, no threads involved in the numbers).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import platform
from pathlib import Path

import numpy as np
import tensorflow as tf
from waymo_open_dataset import label_pb2
from waymo_open_dataset.metrics.ops import py_metrics_ops
from waymo_open_dataset.metrics.python import config_util_py as config_util
from waymo_open_dataset.metrics.python import wod_detection_evaluator
from waymo_open_dataset.protos import breakdown_pb2, metrics_pb2

OUT = Path(__file__).resolve().parent / "reference.json"
VEH, PED, SIGN, CYC = 1, 2, 3, 4  # label.proto Label.Type
NAMES = {VEH: "VEHICLE", PED: "PEDESTRIAN", CYC: "CYCLIST"}
SIZES = {VEH: (4.6, 2.0, 1.7), PED: (0.85, 0.8, 1.8), SIGN: (0.6, 0.1, 0.8), CYC: (1.8, 0.7, 1.7)}


def box(cls: int, x: float, y: float, yaw: float = 0.0, z: float | None = None) -> list[float]:
    length, width, height = SIZES[cls]
    return [x, y, height / 2 if z is None else z, length, width, height, yaw]


def hand_frames() -> list[dict]:
    """Frames 0-7: each one aims at one rule. Boxes: x, y, z, length, width, height, heading."""
    frames = []
    # 0: vehicles at several ranges; small errors, one heading flipped by pi (APH weight 0), one
    # heading off by pi/2, one false positive.
    frames.append(
        {
            "gt": [
                (VEH, box(VEH, 12, 3, 0.2), 400, 0),
                (VEH, box(VEH, 35, -6, 1.4), 120, 0),
                (VEH, box(VEH, 58, 10, -0.6), 40, 0),
                (VEH, box(VEH, 22, -15, 3.0), 200, 0),
            ],
            "det": [
                (VEH, box(VEH, 12.1, 3.05, 0.25), 0.91, False),
                (VEH, box(VEH, 35.2, -6.1, 1.4 - math.pi), 0.83, False),
                (VEH, box(VEH, 58.0, 10.1, -0.6 + math.pi / 2), 0.47, False),
                (VEH, box(VEH, 22.05, -15.0, -3.1), 0.66, False),
                (VEH, box(VEH, 40, 20, 0.0), 0.72, False),
            ],
        }
    )
    # 1: Hungarian vs score-first matching (pedestrians, IoU 0.5). p1 (higher score) overlaps
    # A by 0.633 and B by 0.569; p2 overlaps only A (0.778). Score-first: p1-A, p2 unmatched
    # (1 TP). Hungarian maximises summed IoU: p1-B, p2-A (2 TPs).
    frames.append(
        {
            "gt": [
                (PED, box(PED, 20, 0.0, math.pi / 2), 80, 0),
                (PED, box(PED, 20, 0.4, math.pi / 2), 80, 0),
            ],
            "det": [
                (PED, box(PED, 20, 0.18, math.pi / 2), 0.9, False),
                (PED, box(PED, 20, -0.1, math.pi / 2), 0.6, False),
            ],
        }
    )
    # 2: difficulty. A GT with 3 points (LEVEL_2 by points) matched by a detection; a GT
    # labelled LEVEL_2 by hand with 50 points, missed; a LEVEL_1 GT missed; a 0-point GT
    # (dropped) under a detection, which then is a false positive.
    frames.append(
        {
            "gt": [
                (VEH, box(VEH, 45, 4, 0.0), 3, 0),
                (VEH, box(VEH, 30, -4, 0.1), 50, 2),
                (PED, box(PED, 15, 8, 0.7), 5, 0),
                (PED, box(PED, 18, 9, 0.7), 6, 0),
                (CYC, box(CYC, 25, -9, 1.0), 0, 0),
                (VEH, box(VEH, 70, 0, 0.0), 12, 0),
            ],
            "det": [
                (VEH, box(VEH, 45.1, 4.05, 0.05), 0.8, False),
                (PED, box(PED, 15.02, 8.03, 0.75), 0.55, False),
                (CYC, box(CYC, 25, -9, 1.0), 0.7, False),
            ],
        }
    )
    # 3: IoU near the thresholds. Vehicles shifted along x by d: IoU = (4.6 - d) / (4.6 + d),
    # 0.7 at d = 0.8118. Pedestrians shifted along their length: 0.5 at d = 0.2833.
    frames.append(
        {
            "gt": [
                (VEH, box(VEH, 15, 20, 0.0), 300, 0),
                (VEH, box(VEH, 15, 30, 0.0), 300, 0),
                (PED, box(PED, 10, -20, 0.0), 60, 0),
                (PED, box(PED, 10, -25, 0.0), 60, 0),
                (CYC, box(CYC, 30, 5, 0.4), 30, 0),
            ],
            "det": [
                (VEH, box(VEH, 15.78, 20, 0.0), 0.74, False),  # IoU 0.7098
                (VEH, box(VEH, 15.84, 30, 0.0), 0.76, False),  # IoU 0.6912
                (PED, box(PED, 10.27, -20, 0.0), 0.58, False),  # IoU 0.5178
                (PED, box(PED, 10.30, -25, 0.0), 0.61, False),  # IoU 0.4783
                (CYC, box(CYC, 30.1, 5.05, 0.9), 0.52, False),
            ],
        }
    )
    # 4: camera-style errors along the line of sight (LET): vehicles at ~10, 30, 60, 80 m with
    # range errors 0.3, 2.0, 5.0 and 9.0 m, a pedestrian 0.3 m too far at 8 m, a cyclist 3 m
    # too close at 40 m.
    sensor = np.array([1.43, 0.0, 2.18])

    def along_sight(cls: int, x: float, y: float, dr: float, yaw: float = 0.0) -> list[float]:
        b = box(cls, x, y, yaw)
        c = np.array(b[:3]) - sensor
        c = c * (1 + dr / np.linalg.norm(c))
        return [*(c + sensor).tolist(), *b[3:]]

    frames.append(
        {
            "gt": [
                (VEH, box(VEH, 10, 2, 0.3), 900, 0),
                (VEH, box(VEH, 28, -11, 1.2), 250, 0),
                (VEH, box(VEH, 55, 24, -0.4), 60, 0),
                (VEH, box(VEH, 80, -5, 0.0), 20, 0),
                (PED, box(PED, 8, -3, 2.0), 150, 0),
                (CYC, box(CYC, 40, 8, -1.3), 25, 0),
            ],
            "det": [
                (VEH, along_sight(VEH, 10, 2, 0.3, 0.3), 0.88, False),
                (VEH, along_sight(VEH, 28, -11, 2.0, 1.25), 0.81, False),
                (VEH, along_sight(VEH, 55, 24, 5.0, -0.5), 0.64, False),
                (VEH, along_sight(VEH, 80, -5, -9.0, 0.1), 0.57, False),
                (PED, along_sight(PED, 8, -3, 0.3, 1.9), 0.77, False),
                (CYC, along_sight(CYC, 40, 8, -3.0, -1.2), 0.49, False),
            ],
        }
    )
    # 5: a false positive that overlaps a no-label zone (neither TP nor FP), signs (ignored).
    frames.append(
        {
            "gt": [
                (SIGN, box(SIGN, 9, 6, 0.0, z=2.5), 40, 0),
                (PED, box(PED, 6, -2, 0.1), 300, 0),
            ],
            "det": [
                (SIGN, box(SIGN, 9, 6, 0.0, z=2.5), 0.9, False),
                (PED, box(PED, 6.05, -2.02, 0.2), 0.85, False),
                (PED, box(PED, 30, 30, 0.0), 0.95, True),
                (PED, box(PED, 31, 31, 0.0), 0.35, False),
            ],
        }
    )
    # 6: detections only; 7: ground truth only.
    frames.append({"gt": [], "det": [(VEH, box(VEH, 20, 20, 0.0), 0.42, False)]})
    frames.append({"gt": [(CYC, box(CYC, 14, 4, 0.2), 90, 0)], "det": []})
    return frames


def random_frames(seed: int, count: int, objects: tuple[int, int] = (6, 12)) -> list[dict]:
    """Frames with GT at random ranges and detections = GT + noise, dropped boxes and clutter."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        gt, det = [], []
        for _ in range(rng.integers(*objects)):
            cls = int(rng.choice([VEH, VEH, PED, CYC, SIGN]))
            rng_m, az = rng.uniform(5, 75), rng.uniform(-math.pi, math.pi)
            x, y = rng_m * math.cos(az), rng_m * math.sin(az)
            b = box(cls, x, y, rng.uniform(-math.pi, math.pi))
            b[3:6] = [s * rng.uniform(0.85, 1.15) for s in b[3:6]]
            points = int(rng.choice([0, 1, 3, 5, 6, 20, 200, 1500]))
            level = 2 if rng.random() < 0.1 else 0
            gt.append((cls, [round(v, 4) for v in b], points, level))
            if rng.random() < 0.8:
                noise = rng.normal(0, [0.15, 0.15, 0.1, 0.1, 0.05, 0.05, 0.1])
                d = (np.array(b) + noise).tolist()
                if rng.random() < 0.15:
                    d[6] += math.pi  # a flipped heading
                if rng.random() < 0.4:  # a camera-like range error
                    scale = 1 + rng.normal(0, 0.06)
                    d[0], d[1] = d[0] * scale, d[1] * scale
                score = float(np.clip(rng.normal(0.7, 0.2), 0.02, 0.99))
                det.append((cls, [round(v, 4) for v in d], round(score, 4), False))
        for _ in range(rng.integers(0, 4)):
            cls = int(rng.choice([VEH, PED, CYC]))
            b = box(cls, rng.uniform(-60, 60), rng.uniform(-60, 60), rng.uniform(-3, 3))
            det.append(
                (cls, [round(v, 4) for v in b], round(float(rng.uniform(0.05, 0.6)), 4), False)
            )
        frames.append({"gt": gt, "det": det})
    return frames


def tool_preprocess(gt: list[tuple]) -> list[tuple]:
    """compute_detection_metrics_main.cc lines 137-153: drop boxes without lidar points; an
    unlabelled level (0, UNKNOWN) becomes LEVEL_2 for <= 5 points, else LEVEL_1."""
    out = []
    for cls, b, points, level in gt:
        if points <= 0:
            continue
        if level == label_pb2.Label.UNKNOWN:
            level = label_pb2.Label.LEVEL_2 if points <= 5 else label_pb2.Label.LEVEL_1
        out.append((cls, b, level))
    return out


def let_config() -> metrics_pb2.Config:
    """GetConfig() of metrics/tools/compute_detection_let_metrics_main.cc, OBJECT_TYPE only."""
    config = metrics_pb2.Config()
    config.breakdown_generator_ids.append(breakdown_pb2.Breakdown.OBJECT_TYPE)
    config.difficulties.add().levels.append(label_pb2.Label.LEVEL_2)
    config.matcher_type = metrics_pb2.MatcherProto.TYPE_HUNGARIAN
    config.iou_thresholds.extend([0.0, 0.5, 0.3, 0.3, 0.3])
    config.box_type = label_pb2.Label.Box.TYPE_3D
    config.score_cutoffs.extend([i * 0.01 for i in range(100)] + [1.0])
    let = config.let_metric_config
    let.enabled = True
    let.align_type = metrics_pb2.Config.LongitudinalErrorTolerantConfig.TYPE_RANGE_ALIGNED
    let.longitudinal_tolerance_percentage = 0.1
    let.min_longitudinal_tolerance_meter = 0.5
    let.sensor_location.x, let.sensor_location.y, let.sensor_location.z = 1.43, 0.0, 2.18
    return config


def detection_config() -> metrics_pb2.Config:
    """WODDetectionEvaluator's default config with its OBJECT_TYPE breakdown only."""
    config = wod_detection_evaluator.WODDetectionEvaluator()._get_default_config()
    del config.breakdown_generator_ids[1:]
    del config.difficulties[1:]
    return config


def run_op(config: metrics_pb2.Config, frames: list[dict]) -> dict:
    gt = [(i, *g) for i, f in enumerate(frames) for g in tool_preprocess(f["gt"])]
    det = [(i, *d) for i, f in enumerate(frames) for d in f["det"]]
    ap, aph, apl, pr, _, _, _ = py_metrics_ops.detection_metrics(
        prediction_bbox=tf.constant([d[2] for d in det], tf.float32, shape=(len(det), 7)),
        prediction_type=tf.constant([d[1] for d in det], tf.uint8, shape=(len(det),)),
        prediction_score=tf.constant([d[3] for d in det], tf.float32, shape=(len(det),)),
        prediction_frame_id=tf.constant([d[0] for d in det], tf.int64, shape=(len(det),)),
        prediction_overlap_nlz=tf.constant([d[4] for d in det], tf.bool, shape=(len(det),)),
        ground_truth_bbox=tf.constant([g[2] for g in gt], tf.float32, shape=(len(gt), 7)),
        ground_truth_type=tf.constant([g[1] for g in gt], tf.uint8, shape=(len(gt),)),
        ground_truth_frame_id=tf.constant([g[0] for g in gt], tf.int64, shape=(len(gt),)),
        ground_truth_difficulty=tf.constant([g[3] for g in gt], tf.uint8, shape=(len(gt),)),
        config=config.SerializeToString(),
    )
    out: dict = {}
    for i, name in enumerate(config_util.get_breakdown_names_from_config(config)):
        # OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1 -> VEHICLE, L1
        cls, level = name.removeprefix("OBJECT_TYPE_TYPE_").rsplit("_LEVEL_", 1)
        if cls == "SIGN":
            continue
        counts = pr.numpy()[i, :, 2:5].astype(int)  # TP, FP, FN per score cutoff
        out.setdefault(cls, {})[f"L{level}"] = {
            "AP": float(ap.numpy()[i]),
            "APH": float(aph.numpy()[i]),
            "APL": float(apl.numpy()[i]),
            "tp_fp_fn": counts.tolist(),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--stress",
        type=int,
        default=0,
        help="instead of the fixture: this many dense random frames (15-40 objects each), for a "
        "one-off check with BEVKD_WAYMO_REFERENCE=<out> pytest tests/test_waymo_metrics.py",
    )
    args = parser.parse_args()
    if args.stress:
        frames = random_frames(seed=11, count=args.stress, objects=(15, 40))
    else:
        frames = hand_frames() + random_frames(seed=7, count=4)
    versions = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "waymo-open-dataset-tf-2-12-0": importlib.metadata.version("waymo-open-dataset-tf-2-12-0"),
        "numpy": np.__version__,
    }
    fixture = {
        "about": "official Waymo detection metrics (C++ op) on hand-made frames; "
        "see make_official_reference.py",
        "versions": versions,
        "frames": [
            {
                "gt": {
                    "boxes": [g[1] for g in f["gt"]],
                    "types": [g[0] for g in f["gt"]],
                    "num_lidar_points": [g[2] for g in f["gt"]],
                    "difficulty": [g[3] for g in f["gt"]],
                },
                "det": {
                    "boxes": [d[1] for d in f["det"]],
                    "types": [d[0] for d in f["det"]],
                    "scores": [d[2] for d in f["det"]],
                    "overlap_nlz": [d[3] for d in f["det"]],
                },
            }
            for f in frames
        ],
        "detection": run_op(detection_config(), frames),
        "let": run_op(let_config(), frames),
    }
    text = json.dumps(fixture, separators=(",", ":"))
    args.out.write_text(text + "\n")
    print(f"wrote {args.out} ({len(text)} bytes), {versions}")
    for kind in ("detection", "let"):
        for cls, levels in fixture[kind].items():
            for level, m in levels.items():
                print(
                    f"{kind:9s} {cls:10s} {level} AP {m['AP']:.6f} APH {m['APH']:.6f} APL {m['APL']:.6f}"
                )


if __name__ == "__main__":
    main()
