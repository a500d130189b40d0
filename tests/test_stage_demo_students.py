"""The demo's stage two: real ``bevkd train-student`` processes side by side over a real store,
one results table, and a rerun that reuses finished arms instead of training them again."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from stage_helpers import SMALL_MODEL, cached_world

from bevkd.pipeline.errors import BevkdError
from bevkd.stages.demo_students import Arm, results_table, train_students

TINY_STUDENT = [
    *SMALL_MODEL,
    "model.kind=camera",
    "student.bev_channels=16",
    "model.image_backbone_channels=[8, 16, 32]",
    "model.camera_bev_channels=8",
    "train.epochs=1",
    "train.torch_threads=1",
]


@pytest.fixture(scope="module")
def world(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root, _, url = cached_world(
        tiny_nuscenes, tmp_path_factory.mktemp("demo_students"), "cache.teachers=[lidar]"
    )
    return root, url


def test_arms_train_side_by_side_and_a_rerun_reuses_them(
    world: tuple[Path, Path], tmp_path: Path
) -> None:
    root, url = world
    arms = (
        Arm("baseline", "configs/demo/student_baseline.yaml", "baseline"),
        Arm("cmkd + unlabeled", "configs/demo/student_cmkd_unlabeled.yaml", "cmkd_unlabeled"),
    )
    rows = train_students(
        tmp_path, str(url), str(root), parallel=2, arms=arms, extra=tuple(TINY_STUDENT)
    )
    assert list(rows) == ["baseline", "cmkd + unlabeled"]
    for arm in arms:
        metrics = json.loads((tmp_path / arm.folder / "eval" / "metrics.json").read_text())
        assert rows[arm.name]["mAP"] == metrics["mAP"] and 0.0 <= metrics["mAP"] <= 1.0
        assert (tmp_path / arm.folder / "best.pt").is_file()
        saved = (tmp_path / arm.folder / "config.yaml").read_text()
        assert f"store: {url}" in saved and f"root: {root}" in saved  # the demo's paths won
    log = (tmp_path / "cmkd_unlabeled" / "train.out").read_text()
    assert "3 labelled + 3 unlabelled frames" in log  # the arm's own config was used
    table = results_table(rows)
    assert table.splitlines()[0] == "| model | mAP | NDS | car AP |"
    assert "| cmkd + unlabeled |" in table
    started = time.perf_counter()
    again = train_students(tmp_path, str(url), str(root), arms=arms, extra=tuple(TINY_STUDENT))
    assert again == rows and time.perf_counter() - started < 5.0  # finished: reused, not rerun
    # A folder trained under another config is not passed off as this config's result.
    with pytest.raises(BevkdError, match="holds a run of another config"):
        train_students(
            tmp_path, str(url), str(root), arms=arms[:1], extra=(*TINY_STUDENT, "train.lr=0.1")
        )


def test_a_failing_arm_raises_with_the_end_of_its_log(
    world: tuple[Path, Path], tmp_path: Path
) -> None:
    root, url = world
    arm = Arm("broken", "configs/demo/student_cmkd.yaml", "broken")
    with pytest.raises(BevkdError, match=r"(?s)student 'broken' failed.*student\.bev_channels=8"):
        train_students(
            tmp_path,
            str(url),
            str(root),
            arms=(arm,),
            extra=(*TINY_STUDENT, "student.bev_channels=8"),
        )


def test_a_kitti_arms_evaluation_counts_as_finished(tmp_path: Path) -> None:
    """KITTI runs write eval/kitti_ap.json, not metrics.json: a finished KITTI arm is found
    (so a chained phase can start from it) and summarised by its Car AP|R40."""
    from bevkd.stages.demo_students import arm_metrics, headline

    assert arm_metrics(tmp_path) is None
    (tmp_path / "eval").mkdir()
    car = {m: {"easy": 50.0, "moderate": 41.25, "hard": 30.0} for m in ("3d", "bev", "2d")}
    (tmp_path / "eval" / "kitti_ap.json").write_text(json.dumps({"ap": {"Car": car}}))
    metrics = arm_metrics(tmp_path)
    assert metrics is not None and headline(metrics) == "Car AP|R40 moderate: 3D 41.25, BEV 41.25"
