"""KITTI as a new user lays it out: split lists beside ``object/``, which list was used, raw
drives without ``timestamps.txt``, and the devkit's 41-point AP sampling from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from kitti_real_format import LABEL_LINES, write_object_frame, write_raw_calib, write_raw_frame

from bevkd.datasets import kitti as kitti_module
from bevkd.datasets.kitti import load_kitti_frames
from bevkd.datasets.kitti_lists import BUNDLED_SPLITS, announce_list, split_list_path
from bevkd.pipeline.config import ConfigError, load_config


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    root = tmp_path / "kitti"
    for frame in ("000001", "000002", "000004"):
        write_object_frame(root / "object", frame, LABEL_LINES)
    write_raw_calib(root / "raw" / "2011_09_26")
    return root


def test_a_list_beside_the_object_folder_is_used_and_named(root: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000004\n000001\n")
    announce_list.cache_clear()
    assert split_list_path("train", root / "object") == root / "ImageSets" / "train.txt"
    frames = load_kitti_frames(root, "train")
    assert [f.token for f in frames] == ["000004", "000001"]  # the user's list, not bevkd's
    err = capsys.readouterr().err
    assert f"split 'train': {root / 'ImageSets' / 'train.txt'} (your list)" in err
    # one in object/ImageSets wins over one beside it; the bundled list comes last
    (root / "object" / "ImageSets").mkdir()
    (root / "object" / "ImageSets" / "train.txt").write_text("000002\n")
    assert split_list_path("train", root / "object") == root / "object" / "ImageSets" / "train.txt"
    assert split_list_path("val", root / "object") == BUNDLED_SPLITS / "val.txt"


def test_the_bundled_list_is_named_as_such(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    announce_list.cache_clear()
    announce_list("val", BUNDLED_SPLITS / "val.txt")
    announce_list("val", BUNDLED_SPLITS / "val.txt")  # once per process
    err = capsys.readouterr().err
    assert err.count("[kitti] split 'val'") == 1 and "bundled list" in err


def test_a_drive_without_timestamps_says_so_once(root: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    lines = [write_raw_frame(root / "raw", "2011_09_26", 7, i) for i in (0, 1, 2)]
    stamps = (
        root / "raw" / "2011_09_26" / "2011_09_26_drive_0007_sync" / "image_02" / "timestamps.txt"
    )
    (root / "object" / "ImageSets").mkdir()
    (root / "object" / "ImageSets" / "raw.txt").write_text("\n".join(lines) + "\n")
    with_stamps = load_kitti_frames(root, "raw")
    assert all(f.timestamp > 0 for f in with_stamps)
    stamps.unlink()
    kitti_module._drive_timestamps.cache_clear()
    kitti_module._no_timestamp.cache_clear()
    capsys.readouterr()
    frames = load_kitti_frames(root, "raw")
    assert [f.timestamp for f in frames] == [0, 0, 0]
    err = capsys.readouterr().err
    assert err.count("timestamps.txt is missing") == 1 and "2011_09_26_drive_0007_sync" in err


def test_kitti_sampling_is_a_config_key_and_an_evaluate_option(root: Path, tmp_path: Path) -> None:
    from bevkd.eval.kitti_ap import write_detections
    from bevkd.pipeline.cli import cli

    with pytest.raises(ConfigError, match=r"eval\.kitti_sampling"):
        load_config(None, ["eval.kitti_sampling=r41"])
    from test_kitti_eval_run import _label  # a label line whose 2D box is its 3D box's projection

    for frame, x in (("000011", -3.0), ("000012", 4.0)):
        write_object_frame(root / "object", frame, [_label("Car", x, 15.0, (1.5, 1.6, 3.9), 0.3)])
    (root / "object" / "ImageSets").mkdir()
    (root / "object" / "ImageSets" / "val.txt").write_text("000011\n000012\n")
    cfg = load_config(None, ["data.format=kitti", f"data.root={root}", "classes=[car, pedestrian, bicycle]"])  # fmt: skip
    results = tmp_path / "results"
    for frame in load_kitti_frames(root, "val", cfg.classes):
        write_detections(results, frame, frame.boxes, np.linspace(0.9, 0.5, len(frame.boxes)),
                         frame.labels, cfg.classes)  # fmt: skip
    got = {}
    for sampling in ("exact", "devkit"):
        out = tmp_path / f"eval_{sampling}"
        result = CliRunner().invoke(cli, [
            "evaluate", "--results", str(results), "--out", str(out), "--kitti-sampling", sampling,
            "--set", "data.format=kitti", "--set", f"data.root={root}",
            "--set", "classes=[car, pedestrian, bicycle]",
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        got[sampling] = json.loads((out / "kitti_ap.json").read_text())
        assert got[sampling]["sampling"] == sampling
    # 2 perfectly found cars: the exact definition reaches 100, the devkit's 41 samples cannot
    assert got["exact"]["ap"]["Car"]["3d"]["moderate"] == pytest.approx(100.0)
    assert got["devkit"]["ap"]["Car"]["3d"]["moderate"] < 100.0
