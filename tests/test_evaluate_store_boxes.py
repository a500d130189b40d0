"""``bevkd evaluate --store``: a store's cached boxes scored as detections by the real devkit.

The stores here are real Zarr stores whose ``boxes`` field holds the GT itself (score 1), a
shifted copy, or a copy with mixed scores, for the val frames of the tiny synthetic world.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from nuscenes_copy import private_copy

from bevkd.datasets.frame import Frame
from bevkd.datasets.nuscenes_index import load_index
from bevkd.eval.store_boxes import eval_frames, evaluate_store, sweep
from bevkd.pipeline.cli import main
from bevkd.pipeline.config import Config, DataConfig, config_yaml, load_config
from bevkd.pipeline.geometry import NUSCENES_CLASSES
from bevkd.storage.fields import boxes_field
from bevkd.storage.reader import open_store
from bevkd.storage.schema import SCHEMA_VERSION, StoreContract, StoreError
from bevkd.storage.testing import DEMO_GRID, synthetic_provenance
from bevkd.storage.writer import StoreWriter

Rows = Callable[[Frame], np.ndarray]


@pytest.fixture(scope="module")
def root(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return private_copy(tiny_nuscenes, tmp_path_factory.mktemp("nuscenes"))


@pytest.fixture(scope="module")
def val_frames(root: Path) -> list[Frame]:
    return load_index(DataConfig(root=str(root))).frames("val")


def gt_rows(frame: Frame, shift: float = 0.0, scores: np.ndarray | None = None) -> np.ndarray:
    """The frame's GT (boxes the devkit keeps: with LiDAR points) as store rows, score 1."""
    keep = frame.num_lidar_pts > 0
    rows = np.zeros((int(keep.sum()), 11), np.float32)
    rows[:, :9] = frame.boxes[keep]
    rows[:, 0] += shift
    rows[:, 9] = 1.0 if scores is None else scores[: len(rows)]
    rows[:, 10] = frame.labels[keep]
    return rows


def write_boxes_store(
    url: Path,
    root: Path | Config,
    frames: list[Frame],
    rows: Rows,
    skipped: dict[int, str] | None = None,
) -> Path:
    """A finalized store with one ``boxes`` field for ``frames`` (tokens and all), whose
    provenance config is ``root``'s (a config, or the defaults with that nuScenes root)."""
    cfg = root if isinstance(root, Config) else Config(data=DataConfig(root=str(root)))
    contract = StoreContract(SCHEMA_VERSION, DEMO_GRID, cfg.classes, (boxes_field("boxes"),))
    tokens = [f.token for f in frames]
    provenance = synthetic_provenance(tokens)
    provenance["config"] = config_yaml(cfg)
    writer = StoreWriter.create(
        str(url), contract, tokens, [f.scene for f in frames], [f.split for f in frames],
        [f.has_label for f in frames], provenance, shard_size=4,
    )  # fmt: skip
    skipped = skipped or {}
    for shard in writer.pending_shards():
        mine = {i: r for i, r in skipped.items() if i in writer.shard_frames(shard)}
        shard_rows = [rows(frames[i]) for i in writer.rows_for(shard, "boxes", mine)]
        writer.write_shard(shard, {}, {"boxes": shard_rows}, skipped=mine)
    writer.finalize()
    return url


def test_gt_boxes_score_ap_1_through_the_cli(
    root: Path, val_frames: list[Frame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = write_boxes_store(tmp_path / "teacher.zarr", root, val_frames, gt_rows)
    main(["evaluate", "--store", str(url)])  # the dataset comes from the store's provenance
    printed = capsys.readouterr().out
    out = tmp_path / "teacher.zarr.eval" / "val_boxes"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gt_classes"], "the tiny world's val split should hold evaluable GT"
    for name in metrics["gt_classes"]:
        assert metrics["class_ap"][name] == pytest.approx(1.0), name
    assert metrics["mAP"] == pytest.approx(
        len(metrics["gt_classes"]) / len(NUSCENES_CLASSES), abs=1e-6
    )
    assert metrics["num_samples"] == len(val_frames)
    assert metrics["store"]["field"] == "boxes" and metrics["store"]["skipped_frames"] == {}
    assert metrics["store"]["num_boxes"] == sum(len(gt_rows(f)) for f in val_frames)
    assert "mAP" in printed and "NDS" in printed and str(url) in printed
    assert f"store `{url}`" in (out / "summary.md").read_text()
    assert (out / "results_nusc.json").is_file() and (out / "config.yaml").is_file()


def test_shifted_boxes_score_lower_and_skipped_frames_are_named(
    root: Path, val_frames: list[Frame], tmp_path: Path
) -> None:
    gt = next(i for i, f in enumerate(val_frames) if len(gt_rows(f)))
    url = write_boxes_store(
        tmp_path / "shifted.zarr",
        root,
        val_frames,
        lambda f: gt_rows(f, shift=1.5),
        skipped={gt: "point file is truncated"},
    )
    store = open_store(str(url))
    cfg = Config(data=DataConfig(root=str(root)))
    summary = evaluate_store(cfg, store, "boxes", tmp_path / "eval")
    present = [summary["class_ap"][name] for name in summary["gt_classes"]]
    # 1.5 m off matches at the 2 m and 4 m thresholds only: at most half the AP.
    assert present and 0.0 < float(np.mean(present)) <= 0.5 + 1e-9, summary["class_ap"]
    assert summary["store"]["skipped_frames"] == {val_frames[gt].token: "point file is truncated"}
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert val_frames[gt].token in saved["store"]["skipped_frames"]


def test_a_frame_missing_from_the_store_is_named(
    root: Path, val_frames: list[Frame], tmp_path: Path
) -> None:
    url = write_boxes_store(tmp_path / "partial.zarr", root, val_frames[1:], gt_rows)
    cfg = Config(data=DataConfig(root=str(root)))
    with pytest.raises(
        StoreError, match=rf"1 of the {len(val_frames)} 'val' frames.*{val_frames[0].token}"
    ):
        evaluate_store(cfg, open_store(str(url)), "boxes", tmp_path / "eval")
    with pytest.raises(
        StoreError, match=r"'fusion_boxes': no such field; its boxes fields are \['boxes'\]"
    ):
        evaluate_store(cfg, open_store(str(url)), "fusion_boxes", tmp_path / "eval")


def test_threshold_sweep_through_the_cli(
    root: Path, val_frames: list[Frame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GT boxes with alternating scores 0.8 / 0.2: a cut at 0.5 keeps about half of them.
    def mixed(frame: Frame) -> np.ndarray:
        return gt_rows(frame, scores=np.resize([0.8, 0.2], len(frame.boxes)).astype(np.float32))

    url = write_boxes_store(tmp_path / "mixed.zarr", root, val_frames, mixed)
    out = tmp_path / "sweep"
    main(["evaluate", "--store", str(url), "--score-threshold", "0,0.5", "--out", str(out)])
    printed = capsys.readouterr().out
    body = json.loads((out / "sweep.json").read_text())
    by_threshold = {row["score_threshold"]: row for row in body["thresholds"]}
    assert set(by_threshold) == {0.0, 0.5}
    assert by_threshold[0.5]["num_boxes"] < by_threshold[0.0]["num_boxes"]
    assert by_threshold[0.5]["mAP"] < by_threshold[0.0]["mAP"]
    assert (out / "score_0.5" / "metrics.json").is_file() and "score >= 0.5" in printed
    # The Python function returns {threshold: summary} the same way.
    cfg = Config(data=DataConfig(root=str(root)))
    results = sweep(cfg, open_store(str(url)), "boxes", [0.5], tmp_path / "again")
    assert list(results) == [0.5]
    assert results[0.5]["mAP"] == pytest.approx(by_threshold[0.5]["mAP"])


def test_kitti_store_scores_through_kitti_ap(tiny_kitti: Path, tmp_path: Path) -> None:
    cfg = load_config(
        None, ["data.format=kitti", f"data.root={tiny_kitti}", "classes=[car, pedestrian, bicycle]"]
    )
    frames = eval_frames(cfg)

    def all_gt(frame: Frame) -> np.ndarray:
        rows = np.zeros((len(frame.boxes), 11), np.float32)
        rows[:, :9], rows[:, 9], rows[:, 10] = frame.boxes, 1.0, frame.labels
        return rows

    url = write_boxes_store(tmp_path / "kitti.zarr", cfg, frames, all_gt)
    result = evaluate_store(cfg, open_store(str(url)), "boxes", tmp_path / "eval")
    assert result["num_gt"]["Car"]["moderate"] > 0
    for metric in ("bev", "3d", "2d"):
        assert result["ap"]["Car"][metric]["moderate"] == pytest.approx(100.0)
    saved = json.loads((tmp_path / "eval" / "kitti_ap.json").read_text())
    assert saved["store"]["num_boxes"] == sum(len(f.boxes) for f in frames)


def test_store_is_exclusive_with_checkpoint_and_results(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--store", "a.zarr", "--results", "r.json"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["evaluate", "--results", "r.json", "--score-threshold", "0.3"])
