"""Evaluation through the devkit: GT as results scores AP 1, and the results writer is exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nuscenes.nuscenes import NuScenes
from nuscenes_copy import private_copy
from pyquaternion import Quaternion

from bevkd.datasets.frame import Frame
from bevkd.datasets.nuscenes_index import load_index
from bevkd.eval.nuscenes import class_ranges, run
from bevkd.eval.nuscenes_results import detections_to_results, gt_to_results, write_results
from bevkd.models.outputs import Detections
from bevkd.pipeline.cli import main
from bevkd.pipeline.config import Config, DataConfig, EvalConfig, GridConfig
from bevkd.pipeline.errors import DataError
from bevkd.pipeline.geometry import NUSCENES_CLASSES


@pytest.fixture(scope="module")
def root(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy: the index these tests write stays out of the shared fixture."""
    return private_copy(tiny_nuscenes, tmp_path_factory.mktemp("nuscenes"))


@pytest.fixture(scope="module")
def val_frames(root: Path) -> list[Frame]:
    return load_index(DataConfig(root=str(root))).frames("val")


def _gt_detections(
    frames: list[Frame], shift: float = 0.0, keep_every: int = 1
) -> list[Detections]:
    out = []
    for frame in frames:
        keep = np.flatnonzero(frame.num_lidar_pts > 0)[::keep_every]
        boxes = frame.boxes[keep].copy()
        boxes[:, 0] += shift
        out.append(
            Detections(
                torch.from_numpy(boxes), torch.ones(len(keep)), torch.from_numpy(frame.labels[keep])
            )
        )
    return out


def test_gt_as_results_scores_ap_1_through_the_cli(
    root: Path, val_frames: list[Frame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = write_results(gt_to_results(val_frames), tmp_path / "gt.json")
    main(
        [
            "evaluate",
            "--data",
            str(root),
            "--results",
            str(results),
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    present = metrics["gt_classes"]
    assert present, "the tiny world's val split should hold evaluable GT"
    for name in present:
        assert metrics["class_ap"][name] == pytest.approx(1.0), name
        assert metrics["class_tp_errors"][name]["ATE"] == pytest.approx(0.0, abs=1e-3)
    # Every class with in-range, non-empty GT in our frames is one the devkit evaluated.
    radius = class_ranges(Config())
    ours = {
        NUSCENES_CLASSES[label]
        for f in val_frames
        for box, label, n in zip(f.boxes, f.labels, f.num_lidar_pts, strict=True)
        if n > 0 and np.hypot(*box[:2]) < radius[NUSCENES_CLASSES[label]] - 0.5
    }
    assert ours <= set(present)
    assert "mAP" in printed and "NDS" in printed
    assert (tmp_path / "eval" / "summary.md").read_text().startswith("# nuScenes detection, val")
    assert (tmp_path / "eval" / "config.yaml").is_file()


def test_detections_to_results_matches_devkit_annotations(
    root: Path, val_frames: list[Frame]
) -> None:
    nusc = NuScenes("v1.0-trainval", str(root), verbose=False)
    body = detections_to_results(val_frames, _gt_detections(val_frames))
    assert set(body["results"]) == {f.token for f in val_frames}
    checked = 0
    for frame in val_frames:
        anns = [nusc.get("sample_annotation", t) for t in nusc.get("sample", frame.token)["anns"]]
        for result in body["results"][frame.token]:
            # Each result is one annotation, in the devkit's global frame and conventions.
            ann = min(
                anns,
                key=lambda a: np.linalg.norm(np.subtract(a["translation"], result["translation"])),
            )
            np.testing.assert_allclose(result["translation"], ann["translation"], atol=1e-4)
            np.testing.assert_allclose(result["size"], ann["size"], atol=1e-4)
            yaw_diff = (
                Quaternion(result["rotation"]).yaw_pitch_roll[0]
                - Quaternion(ann["rotation"]).yaw_pitch_roll[0]
            )
            assert np.cos(yaw_diff) == pytest.approx(1.0, abs=1e-6)
            velocity = np.nan_to_num(nusc.box_velocity(ann["token"])[:2])
            np.testing.assert_allclose(result["velocity"], velocity, atol=1e-4)
            checked += 1
    assert checked > 0


def test_wrong_detections_score_below_1(
    root: Path, val_frames: list[Frame], tmp_path: Path
) -> None:
    cfg = Config(data=DataConfig(root=str(root)))
    # 1.5 m off: matched at the 2 m and 4 m thresholds only, so AP is at most half (less where
    # a shifted box lands nearer a neighbour, as in pedestrian groups).
    body = detections_to_results(val_frames, _gt_detections(val_frames, shift=1.5))
    shifted = run(cfg, write_results(body, tmp_path / "s.json"), tmp_path / "shifted")
    present = [shifted["class_ap"][name] for name in shifted["gt_classes"]]
    assert present and 0.2 < float(np.mean(present)) <= 0.5 + 1e-9, shifted["class_ap"]
    body = detections_to_results(val_frames, _gt_detections(val_frames, keep_every=2))
    halved = run(cfg, write_results(body, tmp_path / "h.json"), tmp_path / "halved")
    assert 0.0 < halved["mAP"] < 1.0


def test_class_range_is_capped_at_the_bev_grid() -> None:
    assert set(class_ranges(Config()).values()) == {25.6}
    wide = Config(grid=GridConfig(point_cloud_range=(-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)))
    assert class_ranges(wide)["car"] == 50.0 and class_ranges(wide)["traffic_cone"] == 30.0
    assert set(class_ranges(Config(eval=EvalConfig(class_range=33.0))).values()) == {33.0}


def test_results_missing_samples_are_a_clear_error(
    root: Path, val_frames: list[Frame], tmp_path: Path
) -> None:
    body = gt_to_results(val_frames)
    body["results"].pop(val_frames[0].token)
    path = write_results(body, tmp_path / "partial.json")
    cfg = Config(data=DataConfig(root=str(root)))
    with pytest.raises(
        DataError,
        match=rf"{path} covers {len(val_frames) - 1} of the {len(val_frames)} 'val' samples",
    ):
        run(cfg, path, tmp_path / "out")
    with pytest.raises(DataError, match="not found"):
        run(cfg, tmp_path / "nothing.json", tmp_path / "out")


def test_bevkd_metrics_equal_the_plain_devkits(
    root: Path, val_frames: list[Frame], tmp_path: Path
) -> None:
    """A results JSON that bevkd writes (the path every evaluated checkpoint takes) scores the
    same with the unpatched devkit, reading the split as a custom name from splits.json."""
    from nuscenes.eval.detection.evaluate import DetectionEval

    from bevkd.eval.nuscenes import detection_config

    rng = np.random.default_rng(0)
    detections = []
    for det in _gt_detections(val_frames, keep_every=2):
        boxes = det.boxes.clone()
        boxes[:, :2] += torch.from_numpy(rng.normal(0.0, 0.4, (len(boxes), 2)))  # imperfect
        scores = torch.from_numpy(rng.uniform(0.2, 1.0, len(boxes))).float()
        detections.append(Detections(boxes, scores, det.labels))
    results = write_results(detections_to_results(val_frames, detections), tmp_path / "r.json")
    cfg = Config(data=DataConfig(root=str(root)))
    ours = run(cfg, results, tmp_path / "bevkd")
    splits_path = root / "v1.0-trainval" / "splits.json"
    splits = json.loads(splits_path.read_text())
    splits_path.write_text(json.dumps({**splits, "plain_val": splits["val"]}))
    try:
        nusc = NuScenes("v1.0-trainval", str(root), verbose=False)
        plain = DetectionEval(nusc, detection_config(cfg), str(results), "plain_val",
                              str(tmp_path / "plain"), verbose=False)  # fmt: skip
        metrics, _ = plain.evaluate()
    finally:
        splits_path.write_text(json.dumps(splits))
    assert 0.05 < ours["mAP"] < 0.95  # a non-trivial score, so equality means something
    assert metrics.mean_ap == pytest.approx(ours["mAP"], abs=1e-12)
    assert metrics.nd_score == pytest.approx(ours["NDS"], abs=1e-12)


def test_eval_sample_tokens_scores_only_the_listed_samples(
    root: Path, val_frames: list[Frame], tmp_path: Path
) -> None:
    # Exact GT on the first val frame, nothing on the others: the whole split misses boxes,
    # the first frame alone is perfect (AP 1 on every class it holds).
    first = val_frames[0]
    detections = _gt_detections(val_frames)
    empty = Detections(torch.zeros((0, 9)), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    detections = [detections[0]] + [empty] * (len(val_frames) - 1)
    results = write_results(detections_to_results(val_frames, detections), tmp_path / "r.json")
    whole = run(Config(data=DataConfig(root=str(root))), results, tmp_path / "whole")
    listed = tmp_path / "tokens.txt"
    listed.write_text(first.token + "\n")
    cfg = Config(data=DataConfig(root=str(root)), eval=EvalConfig(sample_tokens=str(listed)))
    alone = run(cfg, results, tmp_path / "alone")
    assert len(val_frames) > 1 and whole["num_samples"] == len(val_frames)
    assert alone["num_samples"] == 1 and alone["sample_tokens"] == str(listed)
    assert alone["gt_classes"]
    assert all(alone["class_ap"][c] == pytest.approx(1.0) for c in alone["gt_classes"])
    assert any(whole["class_ap"][c] < 1.0 for c in alone["gt_classes"])
    listed.write_text("not-a-sample\n")
    with pytest.raises(DataError, match="1 tokens are not samples of 'val'"):
        run(cfg, results, tmp_path / "bad")
