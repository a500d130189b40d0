"""``eval.kitti_ap.run``: KITTI result files on disk -> AP|R40 JSON, from ego-frame detections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kitti_real_format import P2, write_object_frame

from bevkd.datasets.kitti import load_kitti_frames
from bevkd.datasets.kitti_boxes import image_boxes
from bevkd.datasets.kitti_labels import KittiObject, format_label_line
from bevkd.eval.kitti_ap import run, write_detections
from bevkd.pipeline.config import load_config
from bevkd.pipeline.errors import DataError


def _label(kind: str, x: float, z: float, hwl: tuple[float, float, float], ry: float) -> str:
    """A label line whose 2D box is the projection of its 3D box, as KITTI's nearly are."""
    bbox = image_boxes(np.array([[x, 1.65, z, *hwl, ry]]), P2, (1242, 375))[0]
    return format_label_line(KittiObject(kind, 0.0, 0, 0.0, tuple(bbox), hwl, (x, 1.65, z), ry))  # type: ignore[arg-type]


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    root = tmp_path / "kitti"
    write_object_frame(
        root / "object",
        "000010",
        [
            _label("Car", -3.0, 15.0, (1.5, 1.6, 3.9), 0.3),
            _label("Pedestrian", 2.0, 9.0, (1.8, 0.6, 0.8), -1.0),
        ],
    )
    write_object_frame(
        root / "object",
        "000011",
        [
            _label("Car", 4.0, 22.0, (1.6, 1.7, 4.2), -1.4),
            _label("Van", -4.0, 12.0, (2.1, 1.9, 5.0), 1.5),
        ],
    )
    (root / "object" / "ImageSets").mkdir()
    (root / "object" / "ImageSets" / "val.txt").write_text("000010\n000011\n")
    return root


def test_ego_detections_round_trip_to_100(root: Path, tmp_path: Path) -> None:
    cfg = load_config(
        None, ["data.format=kitti", f"data.root={root}", "classes=[car, pedestrian, bicycle]"]
    )
    frames = load_kitti_frames(root, "val", cfg.classes)
    results = tmp_path / "results"
    for frame in frames:
        write_detections(
            results,
            frame,
            frame.boxes,
            np.linspace(0.9, 0.5, len(frame.boxes)),
            frame.labels,
            cfg.classes,
        )
    result = run(cfg, results, tmp_path / "eval")
    for metric in ("3d", "bev", "2d"):
        assert result["ap"]["Car"][metric]["moderate"] == pytest.approx(100.0)
        assert result["ap"]["Pedestrian"][metric]["easy"] == pytest.approx(100.0)
    assert result["ap"]["Cyclist"]["3d"]["easy"] is None
    assert result["num_gt"]["Car"] == {"easy": 2, "moderate": 2, "hard": 2}
    saved = json.loads((tmp_path / "eval" / "kitti_ap.json").read_text())
    assert saved["ap"]["Car"]["3d"]["hard"] == pytest.approx(100.0)
    assert "Car" in (tmp_path / "eval" / "kitti_ap.txt").read_text()
    assert (tmp_path / "eval" / "config.yaml").is_file()
    # at half resolution the same 2D boxes count as taller: the thresholds halve
    assert run(cfg, results, tmp_path / "eval2", image_scale=0.5)["num_gt"]["Car"]["easy"] == 2


def test_missing_or_unscored_results(root: Path, tmp_path: Path) -> None:
    cfg = load_config(None, ["data.format=kitti", f"data.root={root}"])
    results = tmp_path / "results"
    results.mkdir()
    (results / "000010.txt").write_text("")
    with pytest.raises(DataError, match=r"000011\.txt not found \(write an empty file"):
        run(cfg, results, tmp_path / "eval")
    (results / "000011.txt").write_text((root / "object/training/label_2/000011.txt").read_text())
    with pytest.raises(DataError, match=r"000011\.txt: detection lines need a 16th field"):
        run(cfg, results, tmp_path / "eval")
