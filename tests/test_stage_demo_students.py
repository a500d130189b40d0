"""The demo's stage two: real ``bevkd train-student`` processes side by side over a real store,
one results table, and a rerun that reuses finished arms instead of training them again."""

from __future__ import annotations

import json
import shutil
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


# ------------------------------------------------------------------------------------------
# The run ledger (no training: finished runs are faked as train-student leaves them)
# ------------------------------------------------------------------------------------------

BASELINE = Arm("baseline (seed 0)", "configs/demo/student_baseline.yaml", "results/baseline_seed0")
METRICS = {"mAP": 0.125, "NDS": 0.25, "class_ap": {"car": 0.5}}
# as train-student prints them (train_student.training_frames; loop.fit's epoch line)
TRAIN_OUT = (
    "[train-student] 72 labelled + 72 unlabelled frames; 0 left out because the teacher "
    "skipped them\n"
    "epoch 1/2: 18 steps in 12.5 s (data wait 1.0%), loss 3.2000\n"
    "epoch 2/2: 18 steps in 13.0 s (data wait 1.1%), loss 2.9000\n"
)


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A work/ and a benchmarks/runs/ of their own; returns the out folder under that work/."""
    from bevkd.stages import run_ledger

    monkeypatch.setattr(run_ledger, "WORK", tmp_path / "work")
    monkeypatch.setattr(run_ledger, "LEDGER", tmp_path / "runs")
    return tmp_path / "work" / "demo"


def _finish(folder: Path, sha: str | None, metrics: dict = METRICS) -> None:
    """What a finished train-student run leaves: its evaluation, log, output and config hash."""
    (folder / "eval").mkdir(parents=True)
    (folder / "eval" / "metrics.json").write_text(json.dumps(metrics))
    rows = [{"epoch": 1, "step": 18, "loss": 3.2}, {"epoch": 2, "step": 36, "loss": 2.9},
            {"epoch": 2, "step": 36, "val_NDS": 0.25}]  # fmt: skip
    (folder / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "train.out").write_text(TRAIN_OUT)
    if sha is not None:
        (folder / "config.sha256").write_text(sha + "\n")


def _sha(out: Path, arm: Arm) -> str:
    from bevkd.distill.recipes import with_recipe_defaults
    from bevkd.pipeline.config import config_sha256, load_config

    sets = ["data.root=d", "student.store=s", f"train.out_dir={out / arm.folder}"]
    return config_sha256(with_recipe_defaults(load_config(arm.config, sets)))


def _no_training(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Fail any train-student launch; other subprocesses (git) run as usual."""
    import subprocess

    real, launched = subprocess.run, []

    def run(command: list[str], *args: object, **kwargs: object) -> object:
        if "train-student" in command:
            launched.append(command)
            raise AssertionError("a finished arm was trained again")
        return real(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    return launched


def test_a_finished_arm_goes_into_the_ledger_and_a_fresh_clone_reuses_it(
    ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bevkd.stages.demo_students import arm_metrics, train_arm

    folder = ledger / BASELINE.folder
    _finish(folder, _sha(ledger, BASELINE))
    _no_training(monkeypatch)
    # a run older than the ledger (no run.json, no checkpoint): reused, marked, recorded
    got = train_arm(BASELINE, ledger, "s", "d")
    assert got == {**METRICS, "reused": {"commit": "unknown", "dirty": True}}
    entry = json.loads((ledger.parent.parent / "runs/demo/results/baseline_seed0.json").read_text())
    assert entry == json.loads((folder / "run.json").read_text())
    assert entry["metrics"] == METRICS and entry["config_sha256"] == _sha(ledger, BASELINE)
    assert entry["steps"] == 36 and entry["frames"] == {"labelled": 72, "unlabelled": 72}
    assert entry["epoch_s"] == 25.5 and entry["wall_s"] is None and entry["resumed"] is False
    assert entry["code"] == {"commit": "unknown", "dirty": True}
    # a fresh clone: no work/, the ledger alone
    shutil.rmtree(ledger.parent)
    assert arm_metrics(folder) == got
    assert train_arm(BASELINE, ledger, "s", "d") == got
    # another config (here: another store) does not take the ledger's result
    assert arm_metrics(ledger / "results/baseline_seed1") is None


def test_a_result_of_this_commits_clean_tree_is_not_marked(
    ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bevkd.pipeline.provenance import code_version
    from bevkd.stages import run_ledger
    from bevkd.stages.demo_students import arm_metrics

    head = code_version()["commit"]
    monkeypatch.setattr(run_ledger, "code_version", lambda: {"commit": head, "dirty": True})
    folder = ledger / BASELINE.folder
    _finish(folder, None)
    cases = [({"commit": head, "dirty": False}, None),  # the tree now may be dirty: not its result
             ({"commit": head, "dirty": True}, {"commit": head, "dirty": True}),
             ({"commit": "0123456789abcdef", "dirty": False},
              {"commit": "0123456789abcdef", "dirty": False})]  # fmt: skip
    for code, mark in cases:
        (folder / "run.json").write_text(json.dumps({"code": code, "metrics": {"stale": 1}}))
        got = arm_metrics(folder)
        assert got is not None and got.get("reused") == mark
        assert got["mAP"] == 0.125 and "stale" not in got  # the evaluation on disk wins
    runs = [METRICS, {**METRICS, "reused": {"commit": "0123456789abcdef", "dirty": True}}]
    assert run_ledger.dagger(runs[:1]) == "" and run_ledger.dagger(runs) == "†"
    assert run_ledger.footnote(runs[:1]) == []
    (note,) = run_ledger.footnote(runs)
    assert note.startswith("† Made by other code than the report's: 0123456789 with uncommitted")
    assert head[:10] not in note  # a block must not change with every later commit
    assert "`--fresh`" in note


def test_fresh_trains_a_marked_arm_again_and_records_the_new_run(
    ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from bevkd.stages import run_ledger
    from bevkd.stages.demo_students import train_arm

    monkeypatch.setattr(run_ledger, "code_version", lambda: {"commit": "c0ffee", "dirty": False})
    monkeypatch.setattr("bevkd.stages.demo_students.code_version",
                        lambda: {"commit": "c0ffee", "dirty": False})  # fmt: skip
    folder = ledger / BASELINE.folder
    sha = _sha(ledger, BASELINE)
    _finish(folder, sha)
    old = {"code": {"commit": "0ld", "dirty": False}, "config_sha256": sha, "metrics": METRICS}
    (folder / "run.json").write_text(json.dumps(old))
    launched = []
    new = {**METRICS, "mAP": 0.25}

    def train_student(command: list[str], *args: object, **kwargs: object) -> object:
        launched.append(command)
        _finish(folder, sha, new)  # what the real train-student run would leave
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", train_student)
    assert train_arm(BASELINE, ledger, "s", "d")["reused"] == {"commit": "0ld", "dirty": False}
    assert not launched  # reused, marked
    assert train_arm(BASELINE, ledger, "s", "d", fresh=True) == new  # c0ffee, clean: unmarked
    assert len(launched) == 1 and launched[0][3:5] == ["train-student", "--config"]
    assert json.loads((folder.with_name("baseline_seed0.replaced") / "run.json").read_text()) == old
    entry = json.loads((ledger.parent.parent / "runs/demo/results/baseline_seed0.json").read_text())
    assert entry["code"] == {"commit": "c0ffee", "dirty": False} and entry["metrics"] == new
    assert entry["wall_s"] >= 0 and entry["steps"] == 36 and entry["arm"] == BASELINE.name
    assert train_arm(BASELINE, ledger, "s", "d", fresh=True) == new and len(launched) == 1


def test_a_ledger_entry_of_another_config_or_without_weights_is_trained_again(
    ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bevkd.stages import run_ledger
    from bevkd.stages.demo_students import train_arm

    folder = ledger / BASELINE.folder
    path = run_ledger.ledger_file(folder)
    assert path == ledger.parent.parent / "runs/demo/results/baseline_seed0.json"
    path.parent.mkdir(parents=True)
    entry = {"code": {"commit": "x", "dirty": False}, "config_sha256": _sha(ledger, BASELINE),
             "metrics": METRICS}  # fmt: skip
    path.write_text(json.dumps({**entry, "config_sha256": "another"}))
    launched = _no_training(monkeypatch)
    with pytest.raises(AssertionError, match="trained again"):
        train_arm(BASELINE, ledger, "s", "d")
    path.write_text(json.dumps(entry))
    assert train_arm(BASELINE, ledger, "s", "d")["mAP"] == 0.125 and len(launched) == 1
    with pytest.raises(AssertionError, match="trained again"):
        train_arm(BASELINE, ledger, "s", "d", weights=True)  # a later phase starts from it
    assert run_ledger.ledger_file(Path("/elsewhere") / BASELINE.folder) is None
