"""Waymo data through the rest of bevkd: config, frames by split role, Waymo's metrics picked by
``bevkd evaluate``, the field-of-view scoring, and the five point features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bevkd.datasets import fov
from bevkd.datasets.dataset import load_frames
from bevkd.datasets.waymo import load_points
from bevkd.eval import waymo as waymo_eval
from bevkd.eval.detections import evaluate_detections
from bevkd.models.outputs import Detections
from bevkd.pipeline.cli import main
from bevkd.pipeline.config import Config, ConfigError, load_config

CLASSES = ("car", "pedestrian", "bicycle")


def _config(root: Path, *extra: str) -> Config:
    return load_config(
        None,
        [
            "data.format=waymo", f"data.root={root}", "data.train_split=training",
            "data.val_split=validation", "data.unlabeled_split=training", "data.cameras=[FRONT]",
            "eval.eval_set=validation",
            f"classes=[{','.join(CLASSES)}]", *extra,
        ],
    )  # fmt: skip


def _perfect(frames: list) -> list[Detections]:
    """The GT of every frame as detections of score 0.9 (none on unlabelled frames), less the
    boxes with no LiDAR point: Waymo drops those from the GT, so detecting one is a FP."""
    out = []
    for f in frames:
        hit = np.asarray(f.num_lidar_pts).reshape(-1) > 0
        out.append(
            Detections(
                torch.from_numpy(np.asarray(f.boxes, np.float32).reshape(-1, 9)[hit]),
                torch.full((int(hit.sum()),), 0.9),
                torch.from_numpy(np.asarray(f.labels, np.int64)[hit]),
            )
        )
    return out


def test_load_frames_reads_waymo_by_split_role(tiny_waymo: Path) -> None:
    cfg = _config(tiny_waymo)
    train, val = load_frames(cfg, "train"), load_frames(cfg, "val")
    assert train and val and {f.split for f in train} == {"training"}
    assert {f.split for f in val} == {"validation"}
    assert any(f.has_label for f in train) and any(not f.has_label for f in train)
    assert {f.dataset for f in train} == {"waymo"}


def test_waymo_needs_one_sweep() -> None:
    with pytest.raises(ConfigError, match=r"data\.lidar_sweeps: the Waymo reader"):
        load_config(None, ["data.format=waymo", "data.lidar_sweeps=3"])


def test_the_fifth_point_feature_is_the_elongation(tiny_waymo: Path, tmp_path: Path) -> None:
    """Column 4 is the range image's elongation channel: the export writes 0; a copy with an
    elongation written into return 1 gives it back on exactly those points."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bevkd.datasets import waymo_schema as ws

    root = tmp_path / "copy"
    shutil.copytree(tiny_waymo, root)
    frame = next(f for f in load_frames(_config(root), "train") if f.has_label)
    before = load_points(frame)
    assert (before[:, 4] == 0).all()
    path = Path(frame.lidar_path)
    table = pq.read_table(path)
    values = table.column(ws.RETURN1_VALUES).to_pylist()
    shapes = table.column(ws.RETURN1_SHAPE).to_pylist()
    returns = 0
    for row, (flat, shape) in enumerate(zip(values, shapes, strict=True)):
        image = np.asarray(flat, np.float32).reshape(shape)
        image[..., 2] = np.where(image[..., 0] > 0, 0.5, -1.0)
        values[row] = image.reshape(-1).tolist()
        stamp = table.column(ws.TIMESTAMP)[row].as_py()
        returns += int((image[..., 0] > 0).sum()) if stamp == frame.timestamp else 0
    column = table.schema.get_field_index(ws.RETURN1_VALUES)
    field = table.schema.field(column)
    written = pa.array(values, type=field.type)
    pq.write_table(table.set_column(column, field, written), path)
    after = load_points(frame)  # one laser: its return 1 points first, then return 2
    np.testing.assert_array_equal(after[:, :4], before[:, :4])
    assert returns > 0
    assert (after[:returns, 4] == 0.5).all() and (after[returns:, 4] == 0).all()


def test_the_gt_as_detections_scores_one(tiny_waymo: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_waymo)
    frames = load_frames(cfg, "val")
    summary = evaluate_detections(cfg, frames, _perfect(frames), tmp_path)
    assert summary["metric"] == "waymo" and summary["num_frames"] == sum(
        f.has_label for f in frames
    )
    assert summary["VEHICLE"]["L1"]["AP"] == pytest.approx(1.0)
    assert summary["VEHICLE"]["L2"]["APH"] == pytest.approx(1.0)
    assert summary["LET"]["VEHICLE"]["APL"] == pytest.approx(1.0)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["mean"] == summary["mean"]
    assert "| VEHICLE |" in (tmp_path / "summary.md").read_text()


def test_fov_only_scores_the_boxes_the_camera_sees(tiny_waymo: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_waymo, "data.fov_only=true")
    frames = [f for f in load_frames(cfg, "val") if f.has_label]
    gt = [waymo_eval.ground_truth(f, CLASSES, ("FRONT",)) for f in frames]
    every = [waymo_eval.ground_truth(f, CLASSES) for f in frames]
    assert 0 < sum(len(g.types) for g in gt) < sum(len(g.types) for g in every)
    for frame, boxes in zip(frames, gt, strict=True):
        cam = frame.cameras[0]
        assert fov.visible(
            boxes.boxes[:, :2], cam.cam2img[None], cam.cam2ego[None], [cam.width]
        ).all()
    # detections outside the view are neither true nor false positives: a perfect detector of
    # the whole grid scores 1 inside the view
    summary = evaluate_detections(cfg, frames, _perfect(frames), tmp_path)
    assert summary["fov_only"] and summary["VEHICLE"]["L1"]["AP"] == pytest.approx(1.0)
    in_view = sum(summary[c]["L2"]["num_gt"] for c in ("VEHICLE", "PEDESTRIAN", "CYCLIST"))
    assert in_view == sum(int((g.num_lidar_points > 0).sum()) for g in gt)  # 0 points: dropped


def test_evaluate_reads_back_a_waymo_results_file(tiny_waymo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    cfg = _config(tiny_waymo)
    frames = load_frames(cfg, "val")
    detections = _perfect(frames)
    missed = next(i for i, d in enumerate(detections) if len(d.boxes))  # a labelled frame's
    detections[missed] = Detections(torch.zeros(0, 9), torch.zeros(0), torch.zeros(0, dtype=torch.int64))  # fmt: skip
    results = waymo_eval.write_results(tmp_path / "waymo_results.json", frames, detections, CLASSES)
    out = tmp_path / "eval"
    args = ["evaluate", "--results", str(results), "--out", str(out), "--format", "waymo",
            "--data", str(tiny_waymo), "--set", "eval.eval_set=validation",
            "--set", "data.cameras=[FRONT]", "--set", f"classes=[{','.join(CLASSES)}]"]  # fmt: skip
    main(args)
    printed = capsys.readouterr().out
    assert "Waymo validation" in printed and "| mean |" in printed and "LET-APL" in printed
    again = json.loads((out / "metrics.json").read_text())
    direct = evaluate_detections(cfg, frames, detections, tmp_path / "direct")
    for key in ("mean", "LET"):  # the file keeps boxes to 0.1 mm and 1e-4 rad
        for group, values in direct[key].items():
            assert again[key][group] == pytest.approx(values, abs=1e-4), (key, group)
    assert again["mean"]["L1"]["AP"] < 1.0  # the frame left without detections is missed


def test_a_results_file_of_another_split_is_refused(tiny_waymo: Path, tmp_path: Path) -> None:
    from bevkd.pipeline.errors import DataError

    cfg = _config(tiny_waymo)
    train = load_frames(cfg, "train")
    path = waymo_eval.write_results(tmp_path / "r.json", train[:1], _perfect(train[:1]), CLASSES)
    with pytest.raises(DataError, match="not in the evaluated split"):
        waymo_eval.read_results(path, load_frames(cfg, "val"))


def test_no_tensorflow_anywhere() -> None:
    """Waymo without TensorFlow: no dependency (runtime or extra) or pin names it or the
    official wheel, and reading plus scoring Waymo imports neither."""
    import subprocess
    import sys
    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(d for deps in project["optional-dependencies"].values() for d in deps)]  # fmt: skip
    pins = (root / "constraints.txt").read_text().splitlines()
    for line in [*wanted, *pins]:
        name = line.split(";")[0].strip().lower()
        assert not name.startswith(("tensorflow", "waymo-open-dataset", "waymo_open_dataset")), line
    code = (
        "import sys, bevkd.datasets.waymo, bevkd.eval.waymo, bevkd.eval.waymo_metrics;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'waymo_open_dataset')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_store_sweep_line_gives_waymos_headline(tiny_waymo: Path, tmp_path: Path) -> None:
    from bevkd.eval.store_boxes import sweep_table

    cfg = _config(tiny_waymo)
    frames = load_frames(cfg, "val")
    summary = evaluate_detections(cfg, frames, _perfect(frames), tmp_path)
    line = sweep_table({0.3: {**summary, "store": {"num_boxes": 12}}})
    mean = summary["mean"]
    assert line.startswith("score >= 0.3") and " 12 boxes" in line
    assert f"mAPH L1 {mean['L1']['APH']:.4f}  L2 {mean['L2']['APH']:.4f}" in line
    assert f"LET-3D-APL {summary['LET']['mean']['APL']:.4f}" in line
