"""Waymo AP / APH (LEVEL_1, LEVEL_2) and LET-3D-AP / APH / APL against the official C++ op, and
on small cases worked out by hand.

``tests/data/waymo_metrics/reference.json`` holds 12 frames and what waymo-open-dataset 1.6.7's
``py_metrics_ops.detection_metrics`` (TensorFlow 2.13.1) made of them, per class and level: AP,
APH, APL and the TP / FP / FN counts at each of the 101 score cutoffs. It was written by
``make_official_reference.py`` in the venv of ``waymo_env.sh``; nothing here needs TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from bevkd.eval import waymo_iou
from bevkd.eval.waymo_ap import mean_average_precision
from bevkd.eval.waymo_metrics import (
    CAMERA_LET_3D,
    DETECTION_3D,
    FrameBoxes,
    LetConfig,
    MetricsConfig,
    evaluate,
    format_table,
    measure,
    waymo_metrics,
    waymo_types,
)

REFERENCE = Path(__file__).parent / "data" / "waymo_metrics" / "reference.json"
# a bigger file from `make_official_reference.py --stress N --out PATH` for a one-off check
OFFICIAL = Path(os.environ.get("BEVKD_WAYMO_REFERENCE", REFERENCE))
VEH, PED, CYC = 1, 2, 4


def load_reference(path: Path = REFERENCE) -> tuple[dict, list[FrameBoxes], list[FrameBoxes]]:
    ref = json.loads(path.read_text())
    gt, det = [], []
    for i, frame in enumerate(ref["frames"]):
        g, d = frame["gt"], frame["det"]
        gt.append(
            FrameBoxes(
                np.array(g["boxes"], np.float64).reshape(-1, 7),
                np.array(g["types"]),
                num_lidar_points=np.array(g["num_lidar_points"]),
                difficulty=np.array(g["difficulty"]),
                frame_id=str(i),
            )
        )
        det.append(
            FrameBoxes(
                np.array(d["boxes"], np.float64).reshape(-1, 7),
                np.array(d["types"]),
                scores=np.array(d["scores"]),
                overlap_nlz=np.array(d["overlap_nlz"], bool),
                frame_id=str(i),
            )
        )
    return ref, gt, det


@pytest.mark.parametrize(("kind", "config"), [("detection", DETECTION_3D), ("let", CAMERA_LET_3D)])
def test_matches_the_official_op(kind: str, config: MetricsConfig) -> None:
    ref, gt, det = load_reference(OFFICIAL)
    ours = evaluate(gt, det, config)
    counts = measure(gt, det, config)
    checked = 0
    for cls, levels in ref[kind].items():
        for j, (level, official) in enumerate(levels.items()):
            for key in ("AP", "APH", "APL"):
                assert ours[cls][level][key] == pytest.approx(official[key], abs=1e-4), (
                    f"{kind} {cls} {level} {key}: bevkd {ours[cls][level][key]:.6f}, "
                    f"official {official[key]:.6f}"
                )
            c = counts[cls]
            tp_fp_fn = np.stack([c.tp, c.fp, c.fn[:, j]], axis=1)
            np.testing.assert_array_equal(
                tp_fp_fn, np.array(official["tp_fp_fn"]), err_msg=f"{kind} {cls} {level}"
            )
            checked += 1
    assert checked == (6 if kind == "detection" else 3)


def test_the_fixture_is_not_trivial() -> None:
    """The official numbers are neither 0 nor 1, LEVEL_1 differs from LEVEL_2 and LET-APL from
    LET-APH and LET-AP in every class, so a rule broken in bevkd has numbers to move."""
    ref = json.loads(REFERENCE.read_text())
    aps = [m["AP"] for levels in ref["detection"].values() for m in levels.values()]
    assert all(0.1 < ap < 0.9 for ap in aps)
    for levels in ref["detection"].values():
        assert levels["L1"]["AP"] != levels["L2"]["AP"]
        # the official TPs and FPs are the same at both levels: only FNs depend on the level
        # (a match to a LEVEL_2 box is a TP at LEVEL_1 too)
        l1, l2 = np.array(levels["L1"]["tp_fp_fn"]), np.array(levels["L2"]["tp_fp_fn"])
        np.testing.assert_array_equal(l1[:, :2], l2[:, :2])
        assert (l1[:, 2] < l2[:, 2]).any()
    for levels in ref["let"].values():
        assert levels["L2"]["APL"] < levels["L2"]["APH"] < levels["L2"]["AP"]


# ---- box terms by hand ------------------------------------------------------------------


def vbox(x: float, y: float = 0.0, yaw: float = 0.0, z: float = 1.0, size=(4.6, 2.0, 2.0)) -> list:
    return [x, y, z, *size, yaw]


def test_iou3d_by_hand() -> None:
    a = np.array([vbox(10)])
    assert waymo_iou.iou3d(a, a)[0, 0] == pytest.approx(1.0)
    # shifted 0.8 m along the length: (4.6 - 0.8) / (4.6 + 0.8)
    assert waymo_iou.iou3d(np.array([vbox(10.8)]), a)[0, 0] == pytest.approx(3.8 / 5.4, abs=1e-6)
    # a 4 x 2 footprint turned 90 degrees about its centre: overlap 2 x 2 = 4, union 8 + 8 - 4
    b, c = vbox(0, size=(4, 2, 1)), vbox(0, yaw=math.pi / 2, size=(4, 2, 1))
    assert waymo_iou.iou3d(np.array([b]), np.array([c]))[0, 0] == pytest.approx(4 / 12)
    # raised by half its height: half the volume overlaps, V / 2 over 1.5 V
    d = vbox(0, z=1.5, size=(4, 2, 1))
    assert waymo_iou.iou3d(np.array([b]), np.array([d]))[0, 0] == pytest.approx(1 / 3)
    # apart, and a box thinner than 1 cm (kMinBoxDim): 0
    assert waymo_iou.iou3d(np.array([vbox(30)]), a)[0, 0] == 0.0
    assert waymo_iou.iou3d(np.array([vbox(10, size=(4.6, 0.01, 2))]), a)[0, 0] == 0.0


def test_heading_accuracy_by_hand() -> None:
    gt = np.array([vbox(0, yaw=0.0), vbox(0, yaw=-3.1)])
    pred = np.array([vbox(0, yaw=math.pi), vbox(0, yaw=math.pi / 2), vbox(0, yaw=3.0)])
    ha = waymo_iou.heading_accuracy(pred, gt)
    assert ha[0, 0] == pytest.approx(0.0, abs=1e-7)  # flipped: no credit
    assert ha[1, 0] == pytest.approx(0.5)
    # 3.0 vs -3.1: |6.1| > pi, so 2 pi - 6.1 = 0.1832 rad
    assert ha[2, 1] == pytest.approx(1 - (2 * math.pi - 6.1) / math.pi, abs=1e-6)


def test_longitudinal_affinity_by_hand() -> None:
    origin = np.zeros(3)
    gt = np.array([vbox(20, z=0.0), vbox(3, z=0.0)])
    pred = np.array([vbox(21, z=0.0), vbox(20, y=1.0, z=0.0), vbox(23, z=0.0), vbox(3.25, z=0.0)])
    la = waymo_iou.longitudinal_affinity(pred, gt, origin, 0.1, 0.5)
    assert la[0, 0] == pytest.approx(0.5)  # 1 m too far at 20 m: tolerance 2 m
    assert la[1, 0] == pytest.approx(1.0)  # sideways only: no error along the line of sight
    assert la[2, 0] == 0.0  # 3 m > 2 m
    assert la[3, 1] == pytest.approx(0.5)  # 0.25 m at 3 m: the 0.5 m floor applies
    # LET-IoU slides the prediction along its line of sight onto the ground truth
    assert waymo_iou.let_iou3d(pred[:1], gt[:1], origin)[0, 0] == pytest.approx(1.0)


# ---- AP rules by hand --------------------------------------------------------------------


def gt_frame(boxes: list, types: list, points: list, difficulty: list | None = None) -> FrameBoxes:
    return FrameBoxes(
        np.array(boxes).reshape(-1, 7),
        np.array(types),
        num_lidar_points=np.array(points),
        difficulty=None if difficulty is None else np.array(difficulty),
    )


def det_frame(boxes: list, types: list, scores: list) -> FrameBoxes:
    return FrameBoxes(np.array(boxes).reshape(-1, 7), np.array(types), scores=np.array(scores))


def test_ap_and_aph_of_a_worked_curve() -> None:
    """Two 2 x 2 x 2 m vehicles. d1 (0.9) on A turned 90 degrees (IoU 1, heading accuracy
    0.5), d2 (0.8) on nothing, d3 (0.7) on B exactly.

    Cutoffs <= 0.70: TP 2, FP 1 (P 2/3, R 1); 0.71-0.80: P 1/2, R 1/2; 0.81-0.90: P 1, R 1/2;
    above: recall 0, P set to 1. Max precision per recall: {0: 1, 0.5: 1, 1: 2/3}. Walking down
    from R 1, points every 0.05 keep P 2/3 down to R 0.55, then (1, 0.5), then P 1 down to R 0.
    Area: 2/3 * 0.45 + 0.5 * 0.05 * (2/3 + 1) + 1 * 0.5 = 0.3 + 0.041667 + 0.5 = 0.841667.
    APH's precisions: sum_ha / (TP + FP) = 1.5/3, 0.5/2, 0.5/1 -> {0: 1, 0.5: 0.5, 1: 0.5};
    the point at R 0 takes the precision of the point above it, 0.5: area 0.5.
    """
    size = (2.0, 2.0, 2.0)
    gt = gt_frame([vbox(10, size=size), vbox(30, size=size)], [VEH, VEH], [100, 100])
    det = det_frame(
        [vbox(10, yaw=math.pi / 2, size=size), vbox(50, 50, size=size), vbox(30, size=size)],
        [VEH, VEH, VEH],
        [0.9, 0.8, 0.7],
    )
    m = evaluate([gt], [det], DETECTION_3D)["VEHICLE"]
    assert m["L1"]["AP"] == pytest.approx(0.3 + 0.05 * 0.5 * (2 / 3 + 1) + 0.5, abs=1e-5)
    assert m["L1"]["APH"] == pytest.approx(0.5, abs=1e-5)
    # the same curve through the AP function alone
    precisions = np.array([2 / 3, 0.5, 1.0, 1.0])
    recalls = np.array([1.0, 0.5, 0.5, 0.0])
    assert mean_average_precision(precisions, recalls, 0.05) == pytest.approx(0.841667, abs=1e-5)


def two_vehicles(points_b: int = 3, difficulty_b: int = 0) -> FrameBoxes:
    """A (100 points, LEVEL_1) at 10 m and B at 30 m, LEVEL_2 by points or by label."""
    return gt_frame([vbox(10), vbox(30)], [VEH, VEH], [100, points_b], [0, difficulty_b])


def test_level_2_ground_truth_is_ignored_at_level_1() -> None:
    # only A found: nothing is missed at LEVEL_1 (B is ignored); at LEVEL_2 recall is 1/2, so
    # the curve is P 1 from R 0.5 down to 0: AP 0.5
    m = evaluate([two_vehicles()], [det_frame([vbox(10)], [VEH], [0.9])], DETECTION_3D)
    assert m["VEHICLE"]["L1"]["AP"] == pytest.approx(1.0, abs=1e-5)
    assert m["VEHICLE"]["L2"]["AP"] == pytest.approx(0.5, abs=1e-5)
    assert (m["VEHICLE"]["L1"]["num_gt"], m["VEHICLE"]["L2"]["num_gt"]) == (1, 2)
    # a hand-labelled LEVEL_2 box with many points is LEVEL_2 all the same
    labelled = two_vehicles(points_b=500, difficulty_b=2)
    m = evaluate([labelled], [det_frame([vbox(10)], [VEH], [0.9])], DETECTION_3D)
    assert m["VEHICLE"]["L1"]["AP"] == pytest.approx(1.0, abs=1e-5)


def test_a_match_to_level_2_counts_as_a_tp_at_level_1() -> None:
    """As detection_metrics.cc counts it: TPs are not filtered by level, only FNs are. Only B
    found: at LEVEL_1 TP 1 (B), FN 1 (A): R 1/2, P 1: AP 0.5 (0 if the match were dropped)."""
    m = evaluate([two_vehicles()], [det_frame([vbox(30)], [VEH], [0.9])], DETECTION_3D)
    assert m["VEHICLE"]["L1"]["AP"] == pytest.approx(0.5, abs=1e-5)
    assert m["VEHICLE"]["L2"]["AP"] == pytest.approx(0.5, abs=1e-5)


def test_ground_truth_without_points_is_dropped() -> None:
    """B has 0 points, so it is gone and the detection on it (0.95) is a FP. Cutoffs <= 0.90:
    TP 1, FP 1 (P 0.5, R 1); 0.91-0.95: TP 0 (R 0, P set to 1). Curve: P 0.5 from R 1 to 0:
    AP 0.5 (with B kept as LEVEL_2 it would be 1)."""
    det = det_frame([vbox(10), vbox(30)], [VEH, VEH], [0.9, 0.95])
    m = evaluate([two_vehicles(points_b=0)], [det], DETECTION_3D)
    assert m["VEHICLE"]["L1"]["AP"] == pytest.approx(0.5, abs=1e-5)
    assert m["VEHICLE"]["L2"]["AP"] == pytest.approx(0.5, abs=1e-5)


def test_matching_is_optimal_not_greedy() -> None:
    """Pedestrians 0.8 m wide side by side, A at y 0 and B at y 0.4. p1 (0.9) at y 0.18:
    IoU (0.8 - 0.18) / (0.8 + 0.18) = 0.633 with A, 0.58 / 1.02 = 0.569 with B; p2 (0.6) at
    y -0.1: 0.778 with A, 0.3 / 1.3 with B. Score-first matching gives p1-A and leaves p2 a FP
    (AP 0.5); the maximum-IoU assignment p1-B, p2-A finds both (AP 1)."""
    size = (0.8, 0.8, 1.8)
    gt = gt_frame([vbox(20, 0.0, size=size), vbox(20, 0.4, size=size)], [PED, PED], [80, 80])
    det = det_frame([vbox(20, 0.18, size=size), vbox(20, -0.1, size=size)], [PED, PED], [0.9, 0.6])
    m = evaluate([gt], [det], DETECTION_3D)
    assert m["PEDESTRIAN"]["L1"]["AP"] == pytest.approx(1.0, abs=1e-5)


def test_let_tolerates_range_error_and_apl_pays_for_it() -> None:
    """A 4.6 m vehicle 20 m in front of the camera (1.43, 0, 2.18), detected 1 m too far.
    3D IoU (4.6 - 1) / (4.6 + 1) = 0.643 < 0.7: AP 0. LET: the box slides back onto the
    ground truth (LET-IoU 1), tolerance 10 % of 20 m = 2 m, affinity 1 - 1/2 = 0.5:
    LET-AP 1, LET-APH 1, LET-APL 0.5."""
    cam = LetConfig().sensor_location
    gt = gt_frame([vbox(cam[0] + 20, z=cam[2])], [VEH], [400])
    det = det_frame([vbox(cam[0] + 21, z=cam[2])], [VEH], [0.8])
    result = waymo_metrics([gt], [det])
    assert result["VEHICLE"]["L1"]["AP"] == 0.0
    let = result["LET"]["VEHICLE"]
    assert let["AP"] == pytest.approx(1.0, abs=1e-5)
    assert let["APH"] == pytest.approx(1.0, abs=1e-5)
    assert let["APL"] == pytest.approx(0.5, abs=1e-5)


# ---- API --------------------------------------------------------------------------------


def test_waymo_metrics_and_table() -> None:
    _, gt, det = load_reference()
    result = waymo_metrics(gt, det)
    assert set(result) == {"VEHICLE", "PEDESTRIAN", "CYCLIST", "mean", "LET"}
    assert set(result["VEHICLE"]) == {"L1", "L2"}
    assert result["mean"]["L2"]["APH"] == pytest.approx(
        np.mean([result[c]["L2"]["APH"] for c in ("VEHICLE", "PEDESTRIAN", "CYCLIST")])
    )
    table = format_table(result).splitlines()
    assert table[0] == "| class | L1 AP | L1 APH | L2 AP | L2 APH | LET-AP | LET-APH | LET-APL |"
    assert [row.split(" | ")[0] for row in table[2:]] == [
        "| VEHICLE",
        "| PEDESTRIAN",
        "| CYCLIST",
        "| mean",
    ]
    assert "LET" not in waymo_metrics(gt, det, let=False)


def test_bevkd_boxes_and_classes_convert() -> None:
    """bevkd's 9-column boxes (with velocity) lose the velocity; class indices into bevkd's
    class list become Waymo types, 0 (never scored) for classes Waymo has no type for."""
    boxes = np.arange(18, dtype=np.float64).reshape(2, 9)
    frame = FrameBoxes(boxes, np.array([1, 2]), scores=np.ones(2))
    np.testing.assert_array_equal(frame.boxes, boxes[:, :7])
    classes = ["car", "truck", "pedestrian", "bicycle"]
    np.testing.assert_array_equal(waymo_types(np.array([0, 1, 2, 3]), classes), [1, 0, 2, 4])


def test_bad_inputs_name_the_frame() -> None:
    with pytest.raises(ValueError, match="frame 'f7': boxes must be"):
        FrameBoxes(np.zeros((2, 6)), np.array([1, 1]), frame_id="f7")
    with pytest.raises(ValueError, match="frame 'f7': boxes must be"):
        FrameBoxes(np.zeros((3, 7)), np.array([1, 1]), frame_id="f7")
    with pytest.raises(ValueError, match="frame 'f7': scores has 1 entries for 2 boxes"):
        FrameBoxes(np.zeros((2, 7)), np.array([1, 1]), scores=np.ones(1), frame_id="f7")
    no_points = FrameBoxes(np.zeros((1, 7)), np.array([1]), frame_id="f8")
    with pytest.raises(ValueError, match="frame 'f8': ground truth needs num_lidar_points"):
        waymo_metrics([no_points], [det_frame([], [], [])])
    with pytest.raises(ValueError, match="2 ground-truth frames but 1 detection frames"):
        waymo_metrics([two_vehicles(), two_vehicles()], [det_frame([], [], [])])
    with pytest.raises(ValueError, match="no frames to evaluate"):
        waymo_metrics([], [])
