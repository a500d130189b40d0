"""benchmarks/kitti_results.py's report: the Car AP|R40 table, its verdicts (Welch's t, Holm
over the table's claims) and the block, from synthetic evaluations; and which phase of a
chained arm must keep its weights. Expected p's come from the textbook formulas."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scipy import stats
from stage_helpers import benchmark_module


@pytest.fixture(scope="module")
def kitti() -> Iterator[Any]:
    yield from benchmark_module("kitti_results")


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided Welch p from the textbook formulas."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(2 * stats.t.sf(abs(t), df))


def _car(moderate_3d: float | None, moderate_bev: float | None) -> dict[str, Any]:
    """A KITTI evaluation (eval/kitti_ap.json's shape): Easy 10 above and Hard 10 below."""

    def levels(m: float | None) -> dict[str, float | None]:
        return {"easy": None if m is None else m + 10, "moderate": m,
                "hard": None if m is None else m - 10}  # fmt: skip

    return {"frames": 24, "ap": {"Car": {"3d": levels(moderate_3d), "bev": levels(moderate_bev)}}}


BASE = [10.0, 11.0, 12.0]
KD = [15.0, 16.0, 17.0]  # t = 5 / sqrt(2/3) = 6.1 (df 4): p = .0036
KD_EIGEN = [16.0, 18.0, 20.0]  # against the baseline p = .013 alone
GT_KD = [11.0, 12.0, 13.0]


def _results(kitti: Any) -> dict[tuple[str, int], dict[str, Any]]:
    arms = dict(zip(kitti.ARMS, (BASE, KD, KD_EIGEN, GT_KD), strict=True))
    return {(arm, s): _car(v[s], v[s] + 10) for arm, v in arms.items() for s in range(3)}


def test_the_table_gives_mean_std_every_seed_and_skips_missing_values(kitti: Any) -> None:
    results = _results(kitti)
    results[("CMKD gt+kd, train + Eigen-clean", 2)] = _car(None, None)  # no GT at a level
    del results[("CMKD kd, train", 1)]
    lines = kitti.table(results, [0, 1, 2])
    assert lines[0].startswith("| arm | seeds | 3D Easy | 3D Moderate |")
    # baseline 3D Moderate: mean 11, sample std 1; Easy 21, Hard 1
    assert lines[2] == ("| baseline (GT), train | 3 | 21.00 ± 1.00 | 11.00 ± 1.00 | 1.00 ± 1.00 | "
                        "31.00 ± 1.00 | 21.00 ± 1.00 | 11.00 ± 1.00 | 10.00, 11.00, 12.00 |")  # fmt: skip
    assert "| CMKD kd, train | 2 | 26.00 ± 1.41 | 16.00 ± 1.41 |" in lines[3]  # seeds 0 and 2
    assert "| CMKD gt+kd, train + Eigen-clean | 3 | 21.50 ± 0.71 | 11.50 ± 0.71 |" in lines[5]
    assert lines[5].endswith("| 11.00, 12.00, - |")
    assert kitti.table({}, [0, 1]) == lines[:2]
    assert kitti.cell([None, None]) == "-" and kitti.cell([41.25]) == "41.25"


def test_verdicts_are_welch_with_holm_over_the_claims(kitti: Any) -> None:
    text = "\n".join(kitti.table(_results(kitti), [0, 1, 2]))
    p_kd, p_eigen = welch_p(KD, BASE), welch_p(KD_EIGEN, BASE)
    p_gt, p_adds = welch_p(GT_KD, BASE), welch_p(KD_EIGEN, KD)
    # 8 comparisons (4 claims x 3D and BEV Moderate; BEV is 3D + 10, the same p); sorted:
    # kd x2 (.0036), kd+Eigen x2 (.013), Eigen adds x2 (.22), gt+kd x2 (.29)
    assert p_kd < p_eigen < p_adds < p_gt
    holm_kd, holm_eigen = 8 * p_kd, max(8 * p_kd, 6 * p_eigen)
    holm_adds = max(holm_eigen, 4 * p_adds)
    holm_gt = max(holm_adds, 2 * p_gt)
    assert holm_kd < 0.05 < 6 * p_eigen and p_eigen < 0.05  # alone it would have held
    assert (f"| CMKD kd, train beats the baseline | holds (Δ +5.00, Welch p = {p_kd:.2g}, "
            f"Holm p = {holm_kd:.2g}, n = 3/3) |") in text  # fmt: skip
    assert (f"| CMKD kd, train + Eigen-clean beats the baseline | not distinguishable at n = 3/3 "
            f"(Δ +7.00, Welch p = {p_eigen:.2g}, Holm p = {holm_eigen:.2g}; detectable ≥ ") in text  # fmt: skip
    assert f"(Δ +1.00, Welch p = {p_gt:.2g}, Holm p = {holm_gt:.2g}; detectable" in text
    assert (f"| Eigen-clean adds to CMKD kd | not distinguishable at n = 3/3 (Δ +2.00, "
            f"Welch p = {p_adds:.2g}, Holm p = {holm_adds:.2g}; ") in text  # fmt: skip
    assert "| claim | 3D Moderate | BEV Moderate |" in text
    assert "Holm over the 8 comparisons of this table, α = 0.05" in text
    # a claim with an arm that did not run is left out of the family
    only = {k: v for k, v in _results(kitti).items() if k[0] != "CMKD kd, train"}
    text = "\n".join(kitti.table(only, [0, 1, 2]))
    assert "Eigen-clean adds" not in text and "Holm over the 4 comparisons" in text


def test_the_block_marks_results_other_code_made(kitti: Any) -> None:
    results = _results(kitti)
    key = ("CMKD kd, train", 1)
    results[key] = {**results[key], "reused": {"commit": "feedfacecafe", "dirty": True}}
    loose = {k: _car(50.0, 60.0) for k in list(results)[:3]}
    text = kitti.report(results, loose, [0, 1, 2])
    assert "on the 24 val frames, mean ± std over seeds [0, 1, 2]" in text
    assert "| CMKD kd, train | 3 | 26.00† ± 1.00 | 16.00† ± 1.00 |" in text
    assert "15.00, 16.00†, 17.00 |" in text
    assert "other code than the report's: feedfaceca with uncommitted changes" in text
    assert text.count("† Made by other code") == 1
    # IoU 0.5: the baseline's three seeds only, one value each, no family to judge
    after = text.split("IoU 0.5 for Car")[1]
    assert "| baseline (GT), train | 3 | 60.00 ± 0.00 | 50.00 ± 0.00 |" in after
    assert "| CMKD" not in after and "Holm" not in after
    text = kitti.report(_results(kitti), {}, [0, 1, 2])
    assert "no run's detections are on disk here" in text and "†" not in text


def test_a_phase_keeps_its_weights_when_the_next_phase_will_train(
    kitti: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(kitti, "train_arm", lambda arm, *a, fresh, weights: calls.append(
        (arm.folder, fresh, weights)) or {"phase": arm.folder})  # fmt: skip
    found: dict[str, dict[str, Any] | None] = {}
    monkeypatch.setattr(kitti, "arm_metrics", lambda folder: found.get(folder.name))
    arm = "CMKD kd, train"
    assert kitti.run_chain(arm, 0) == {"phase": "students/cmkd_kd_train_seed0/phase2"}
    assert calls == [("students/cmkd_kd_train_seed0/phase1", False, True),  # phase 2 will train
                     ("students/cmkd_kd_train_seed0/phase2", False, False)]  # fmt: skip
    phases = kitti.phases(arm, 0)
    assert phases[1][1][-1] == (
        f"student.init_from={kitti.OUT / 'students/cmkd_kd_train_seed0/phase1/best.pt'}"
    )
    calls.clear()
    found["phase2"] = {"reused": {"commit": "x", "dirty": False}}  # finished by other code
    kitti.run_chain(arm, 0)
    assert calls[0] == ("students/cmkd_kd_train_seed0/phase1", False, False)
    calls.clear()
    kitti.run_chain(arm, 0, fresh=True)  # --fresh will train phase 2 again: phase 1's weights
    assert calls[0] == ("students/cmkd_kd_train_seed0/phase1", True, True)
    calls.clear()
    kitti.run_chain("baseline (GT), train", 1)
    assert calls == [("students/baseline_gt_train_seed1", False, False)]


def test_the_block_gives_the_teachers_own_ap_from_its_eval_json(kitti: Any, tmp_path: Path) -> None:
    import json

    folder = tmp_path / "teacher_lidar"
    assert kitti.teacher_results(folder) is None
    (folder / "eval").mkdir(parents=True)
    (folder / "eval" / "kitti_ap.json").write_text(json.dumps(_car(45.7, 50.25)))
    teacher = kitti.teacher_results(folder)  # no saved detections: IoU 0.7 only
    assert teacher is not None and list(teacher) == ["0.7"]
    lines = kitti.teacher_lines(teacher, folder)
    assert f"`{folder / 'eval' / 'kitti_ap.json'}`" in lines[0]
    assert lines[-1] == "| LiDAR teacher | 0.7 | 55.70 | 45.70 | 35.70 | 60.25 | 50.25 | 40.25 |"
    teacher["0.5"] = _car(70.0, None)
    assert kitti.teacher_lines(teacher, folder)[-1] == "| LiDAR teacher | 0.5 | 80.00 | 70.00 | 60.00 | - | - | - |"  # fmt: skip
    text = kitti.report(_results(kitti), {}, [0, 1, 2], teacher)
    assert text.index("| LiDAR teacher | 0.7 | 55.70 | 45.70 |") < text.index(
        "| baseline (GT), train |"
    )
    assert "is not on disk here" in kitti.report(_results(kitti), {}, [0, 1, 2])


def test_the_block_reads_steps_and_frames_from_the_runs_logs(
    kitti: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kitti, "OUT", tmp_path)
    for number, (steps, unlabelled) in enumerate(((480, 48), (160, 48)), start=1):
        run = tmp_path / f"students/cmkd_kd_train_eigen_clean_seed0/phase{number}"
        run.mkdir(parents=True)
        (run / "train_log.jsonl").write_text(f'{{"step": 8, "loss": 1.0}}\n{{"step": {steps}, "loss": 0.5}}\n')  # fmt: skip
        (run / "train.out").write_text(f"[train-student] 71 labelled + {unlabelled} unlabelled frames\n")  # fmt: skip
    arm = "CMKD kd, train + Eigen-clean"
    counts = {arm: kitti.log_counts(arm, 0), BASELINE_ARM: kitti.log_counts(BASELINE_ARM, 0)}
    assert counts[arm] == [{"steps": 480, "frames": {"labelled": 71, "unlabelled": 48}},
                           {"steps": 160, "frames": {"labelled": 71, "unlabelled": 48}}]  # fmt: skip
    assert counts[BASELINE_ARM] == [{"steps": None, "frames": None}]
    lines = kitti.training_lines(counts)
    assert lines[4] == "| CMKD kd, train + Eigen-clean | 480 + 160 | 71 + 48 / 71 + 48 |"
    assert len(lines) == 6  # the baseline, with no log here, has no row
    assert kitti.training_lines({BASELINE_ARM: counts[BASELINE_ARM]}) == []
    text = kitti.report(_results(kitti), {}, [0, 1, 2], None, counts)
    assert "| CMKD kd, train + Eigen-clean | 480 + 160 |" in text


BASELINE_ARM = "baseline (GT), train"
