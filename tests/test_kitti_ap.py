"""KITTI AP|R40 on constructed cases with answers worked out by hand."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bevkd.datasets.kitti_labels import KittiObject
from bevkd.eval.kitti_ap import evaluate_kitti, get_thresholds


def obj(
    x: float = 0.0,
    z: float = 20.0,
    *,
    kind: str = "Car",
    height: float = 60.0,
    occluded: int = 0,
    truncated: float = 0.0,
    score: float | None = None,
    left: float | None = None,
) -> KittiObject:
    """A 4 x 1.6 x 1.5 m box along x at (x, 1.6, z) with a 2D box ``height`` px tall; 2D boxes
    of objects at different x never overlap."""
    left = 20.0 * x + 600.0 if left is None else left
    bbox = (left, 150.0, left + 15.0, 150.0 + height)
    return KittiObject(
        kind, truncated, occluded, 0.0, bbox, (1.5, 1.6, 4.0), (x, 1.6, z), 0.0, score
    )


def scene(n: int, per_frame: int = 5) -> dict[str, list[KittiObject]]:
    """``n`` easy cars, ``per_frame`` to a frame, 10 m apart."""
    frames: dict[str, list[KittiObject]] = {}
    for i in range(n):
        frames.setdefault(f"{i // per_frame:06d}", []).append(obj(x=10.0 * (i % per_frame)))
    return frames


def as_detections(
    gt: dict[str, list[KittiObject]], scores: float | list[float] = 0.9
) -> dict[str, list[KittiObject]]:
    flat = [(k, o) for k, objs in gt.items() for o in objs]
    values = scores if isinstance(scores, list) else [scores] * len(flat)
    out: dict[str, list[KittiObject]] = {k: [] for k in gt}
    for (k, o), s in zip(flat, values, strict=True):
        out[k].append(replace(o, score=s))
    return out


def ap(result: dict, cls: str = "Car", metric: str = "3d", level: str = "moderate") -> float | None:
    return result["ap"][cls][metric][level]


def test_perfect_predictions_give_100() -> None:
    gt = scene(45)
    gt["000100"] = [obj(kind="Pedestrian"), obj(x=10, kind="Cyclist"), obj(x=20, kind="Pedestrian")]
    rng = np.random.default_rng(0)
    dt = as_detections(gt, list(rng.uniform(0.1, 1.0, 48)))
    result = evaluate_kitti(gt, dt)
    for cls in ("Car", "Pedestrian", "Cyclist"):
        for metric in ("3d", "bev", "2d"):
            for level in ("easy", "moderate", "hard"):
                assert ap(result, cls, metric, level) == pytest.approx(100.0)
    assert result["num_gt"]["Car"] == {"easy": 45, "moderate": 45, "hard": 45}
    assert result["num_gt"]["Pedestrian"]["easy"] == 2
    # the devkit's sampling: 45 GT reach 100; 2 perfectly found pedestrians give 2 thresholds,
    # index 0 is never averaged, so 1/40 of the recall positions: 2.5
    devkit = evaluate_kitti(gt, dt, sampling="devkit")
    assert ap(devkit) == pytest.approx(100.0)
    assert ap(devkit, "Pedestrian") == pytest.approx(2.5)


def test_shifted_box_iou_decides() -> None:
    """Shifting a 4 m box by d along its length gives IoU (4 - d) / (4 + d): 0.739 at 0.6 m
    (a TP at 0.7) and 0.667 at 0.8 m (a FP plus a FN). The 2D boxes stay identical."""
    gt = scene(45)
    for shift, expected in ((0.6, 100.0), (0.8, 0.0)):
        dt = {
            k: [replace(o, score=0.9, location=(o.location[0] + shift, *o.location[1:])) for o in v]
            for k, v in gt.items()
        }
        result = evaluate_kitti(gt, dt)
        assert ap(result, metric="3d") == pytest.approx(expected)
        assert ap(result, metric="bev") == pytest.approx(expected)
        assert ap(result, metric="2d") == pytest.approx(100.0)
    # At the looser Car overlap monocular papers also report, the 0.8 m shift (IoU 0.667) is a TP
    dt = {k: [replace(o, score=0.9, location=(o.location[0] + 0.8, *o.location[1:])) for o in v]
          for k, v in gt.items()}  # fmt: skip
    loose = evaluate_kitti(gt, dt, min_overlap={"Car": 0.5})
    assert ap(loose, metric="3d") == pytest.approx(100.0) and loose["min_overlap"]["Car"] == 0.5


def test_missing_detections() -> None:
    """40 GT, the first 20 found: recall 1/2 at precision 1 -> 20 of 40 positions = 50.
    The devkit samples 20 thresholds (recall 1/40 .. 20/40) into slots 0..19 and averages
    slots 1..40, so it reports 19/40 = 47.5."""
    gt = scene(40)
    dt = {k: [replace(o, score=0.9) for o in v] if int(k) < 4 else [] for k, v in gt.items()}
    assert ap(evaluate_kitti(gt, dt)) == pytest.approx(50.0)
    assert ap(evaluate_kitti(gt, dt, sampling="devkit")) == pytest.approx(47.5)
    assert ap(evaluate_kitti(gt, {})) == 0.0


def test_false_positives_by_rank() -> None:
    """10 FPs scored above all 40 TPs: precision 40/50 at full recall -> 80. Scored below: 100."""
    gt = scene(40)
    fps = [obj(x=200.0 + 10 * i, score=0.95) for i in range(10)]
    dt = as_detections(gt, 0.5)
    dt["000000"] = dt["000000"] + fps
    assert ap(evaluate_kitti(gt, dt)) == pytest.approx(80.0)
    dt["000000"] = [replace(o, score=0.1) if o.location[0] >= 200 else o for o in dt["000000"]]
    assert ap(evaluate_kitti(gt, dt)) == pytest.approx(100.0)


def test_difficulty_filters() -> None:
    gt = scene(40)
    # 30 px tall: not Easy (> 40 px), counts for Moderate and Hard; never detected
    gt["000000"].append(obj(x=100.0, height=30.0))
    dt = as_detections({k: v[:5] if k == "000000" else v for k, v in gt.items()}, 0.9)
    result = evaluate_kitti(gt, dt)
    assert result["num_gt"]["Car"] == {"easy": 40, "moderate": 41, "hard": 41}
    assert ap(result, level="easy") == pytest.approx(100.0)  # ignored, not a miss
    # Moderate: recall 40/41 reaches k/40 for k <= 39
    assert ap(result, level="moderate") == pytest.approx(39 / 40 * 100)
    # occlusion 2 and truncation 0.4 are Hard-only; truncation 0.6 is never counted
    gt["000000"][-1] = obj(x=100.0, occluded=2)
    gt["000001"].append(obj(x=100.0, truncated=0.4))
    gt["000002"].append(obj(x=100.0, truncated=0.6))
    assert evaluate_kitti(gt, dt)["num_gt"]["Car"] == {"easy": 40, "moderate": 40, "hard": 42}
    # the pixel thresholds scale with the image: at half resolution 30 px is Easy (> 20)
    small = {"000000": [obj(height=30.0)]}
    assert (
        evaluate_kitti(small, small | {"000000": [replace(small["000000"][0], score=1.0)]})[
            "num_gt"
        ]["Car"]["easy"]
        == 0
    )
    scaled = evaluate_kitti(
        small, {"000000": [replace(small["000000"][0], score=1.0)]}, image_scale=0.5
    )
    assert scaled["num_gt"]["Car"]["easy"] == 1 and ap(scaled, level="easy") == pytest.approx(100.0)


def test_ignored_detections_and_neighbours() -> None:
    gt = scene(40)
    dt = as_detections(gt, 0.5)
    # a confident detection 20 px tall with no GT: below Moderate's 25 px, so not a FP there,
    # but 20 px also fails Easy's 40 px: ignored everywhere
    dt["000000"].append(obj(x=300.0, height=20.0, score=0.99))
    # a Van under a confident Car detection, and a Person_sitting under a Pedestrian one
    gt["000001"].append(obj(x=300.0, kind="Van"))
    dt["000001"].append(obj(x=300.0, score=0.99))
    gt["000002"] += [obj(x=300.0, kind="Person_sitting"), obj(x=400.0, kind="Pedestrian")]
    dt["000002"] += [
        obj(x=300.0, kind="Pedestrian", score=0.99),
        obj(x=400.0, kind="Pedestrian", score=0.5),
    ]
    result = evaluate_kitti(gt, dt)
    for level in ("easy", "moderate", "hard"):
        assert ap(result, level=level) == pytest.approx(100.0)
        assert ap(result, "Pedestrian", level=level) == pytest.approx(100.0)
    assert ap(result, "Cyclist") is None  # no Cyclist GT at all
    # a Car detection on a Truck is a plain false positive
    gt["000003"].append(obj(x=300.0, kind="Truck"))
    dt["000003"].append(obj(x=300.0, score=0.99))
    assert ap(evaluate_kitti(gt, dt)) == pytest.approx(40 / 41 * 100)


def test_dontcare_regions() -> None:
    """A confident Car detection inside a DontCare box: not a FP for 2D (the Python devkit,
    default); a FP for 3D/BEV unless every metric honours DontCare (the C++ devkit)."""
    gt = scene(40)
    dt = as_detections(gt, 0.5)
    gt["000000"].append(
        KittiObject(
            "DontCare",
            -1,
            -1,
            -10,
            (2500.0, 140.0, 2600.0, 240.0),
            (-1, -1, -1),
            (-1000, -1000, -1000),
            -10,
        )
    )
    dt["000000"].append(obj(x=200.0, score=0.99, left=2540.0))
    result = evaluate_kitti(gt, dt)
    assert ap(result, metric="2d") == pytest.approx(100.0)
    assert ap(result, metric="3d") == pytest.approx(40 / 41 * 100)
    everywhere = evaluate_kitti(gt, dt, dontcare_metrics=("2d", "bev", "3d"))
    assert ap(everywhere, metric="3d") == pytest.approx(100.0)


def test_get_thresholds_by_hand() -> None:
    # 4 GT, 4 TP scores: every score is a threshold (each step of 1/4 > 1/40)
    assert get_thresholds(np.array([0.2, 0.9, 0.5, 0.7]), 4).tolist() == [0.9, 0.7, 0.5, 0.2]
    # 80 GT: recall steps of 1/80, so about every other score is kept
    kept = get_thresholds(np.linspace(1.0, 0.01, 80), 80)
    assert 40 <= len(kept) <= 41


def test_exact_and_devkit_agree_on_a_large_set() -> None:
    """Noisy detections on 400 frames x 4 cars: the devkit's 41-threshold sampling and the
    exact definition differ by well under a point of AP once a class has >> 40 objects."""
    rng = np.random.default_rng(1)
    gt, dt = {}, {}
    for f in range(400):
        key = f"{f:06d}"
        gt[key] = [obj(x=10.0 * i, z=10 + 30 * rng.random()) for i in range(4)]
        dets = []
        for o in gt[key]:
            if rng.random() < 0.85:
                shift = rng.normal(0, 0.35, 2)
                loc = (o.location[0] + shift[0], o.location[1], o.location[2] + shift[1])
                dets.append(
                    replace(
                        o,
                        location=loc,
                        score=float(np.clip(1 - abs(shift).sum() + rng.normal(0, 0.2), 0.01, 1)),
                    )
                )
        if rng.random() < 0.5:
            dets.append(obj(x=100.0, score=float(rng.random())))
        dt[key] = dets
    exact = evaluate_kitti(gt, dt, metrics=("3d", "bev"))
    devkit = evaluate_kitti(gt, dt, metrics=("3d", "bev"), sampling="devkit")
    for metric in ("3d", "bev"):
        a, b = ap(exact, metric=metric), ap(devkit, metric=metric)
        assert a is not None and b is not None and 20.0 < a < 95.0
        assert abs(a - b) < 1.0, (metric, a, b)


def test_detections_need_scores() -> None:
    gt = scene(5)
    with pytest.raises(ValueError, match="has no score"):
        evaluate_kitti(gt, gt)
    with pytest.raises(ValueError, match="without GT"):
        evaluate_kitti(gt, {"999999": []})
