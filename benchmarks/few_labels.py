"""The few-labels block of the results: 25% of the demo's labels plus every unlabelled frame.

    .venv/bin/python benchmarks/few_labels.py [--seeds 0 1 2 3 4] [--oracle-seeds 0 1 2]
                                              [--arms ...] [--parallel 2] [--report-only]

18 of the 72 labelled demo train frames keep their GT (``data.labeled_fraction=0.25``,
``data.label_seed=0``: the same subset in every arm and seed); the other 54 and the 72
unlabelled sweeps are unlabelled frames. Two teacher settings:

- **honest**: a LiDAR teacher and a label encoder trained under the same budget (the 18 kept
  frames only, as in LPCG and every semi-supervised detector), and their own store
  (``work/demo/few_labels/teacher_25pct.zarr``);
- **oracle teacher**: the demo store, whose teachers trained on all 72 labelled frames, so
  also on the 54 the student hides. Named so in every table; ``train-student`` runs it only
  with ``student.teacher_saw_hidden_labels=true``.

Arms (each about ``STEPS`` optimizer steps of batch 4, its epochs set from its frame count, one
thread, ``--parallel`` at once): ``baseline 25%`` (GT on the 18 frames only), ``cmkd``,
``pseudo_label`` and ``cmkd+pseudo_label`` per teacher setting (the 18 labelled and 126
unlabelled frames), and ``baseline 100%`` (GT on all 72, the ceiling). ``--seeds`` runs the
baseline, honest and ceiling arms (the headline); ``--oracle-seeds`` the oracle arms.

Each arm is a real ``bevkd train-student`` run under ``work/demo/few_labels/<arm>_seed<n>``
(resumable; a finished arm is found there or in ``benchmarks/runs/``, and not run again). The
report judges each claim with Welch's t-test and a Holm correction over the block's family of
comparisons (:mod:`bevkd.eval.verdicts`), and scores the pseudo-labels themselves (each
store's cached boxes, ``bevkd evaluate --store``) on val and on the 54 hidden frames alone
(``eval.sample_tokens``). It writes the few-labels block of ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import reporting
from doc_blocks import write_block
from reporting import claim_pairs, frames_cell, markdown_table

from bevkd.stages.demo_students import Arm
from bevkd.stages.run_ledger import dagger, footnote

OUT = Path("work/demo")
HERE = OUT / "few_labels"
DATA = "work/demo/data"
ORACLE_STORE = "work/demo/teacher.zarr"
HONEST_STORE = str(HERE / "teacher_25pct.zarr")
STEPS, BATCH = 500, 4
LABELLED, HIDDEN, SWEEPS = 18, 54, 72  # 25% of the 72 labelled train frames; the rest; sweeps
BUDGET = ["data.labeled_fraction=0.25", "data.label_seed=0"]
ORACLE_KEY = "student.teacher_saw_hidden_labels=true"
# The budget teachers train as many steps as the demo's on all 72 frames (12 and 8 epochs).
TEACHERS = {
    "lidar": ("configs/demo/lidar_teacher.yaml", HERE / "teacher_lidar", 12 * 72 // LABELLED),
    "label_encoder": (
        "configs/demo/label_encoder.yaml",
        HERE / "teacher_label",
        8 * 72 // LABELLED,
    ),
}


def epochs(frames: int, steps: int = STEPS) -> int:
    """Epochs that give about ``steps`` optimizer steps of BATCH over ``frames`` (full batches
    only)."""
    return math.ceil(steps / (frames // BATCH))


@dataclass(frozen=True)
class FewArm:
    """One row of the block: its config, overrides and which teacher setting it reads."""

    name: str
    config: str
    sets: tuple[str, ...]
    teacher: str  # "none" (no teacher field), "honest" or "oracle"

    @property
    def store(self) -> str:
        return ORACLE_STORE if self.teacher == "oracle" else HONEST_STORE

    def folder(self, seed: int) -> str:
        slug = self.name.replace(" ", "_").replace("%", "pct").replace("+", "_")
        return f"few_labels/{slug.replace('(', '').replace(')', '')}_seed{seed}"


MIXED = ("cmkd", "pseudo_label", "cmkd+pseudo_label")  # the arms that train unlabelled frames
SEMI = (*BUDGET, "student.unlabeled=true", f"train.epochs={epochs(LABELLED + HIDDEN + SWEEPS)}")
ARMS: dict[str, FewArm] = {
    "baseline 25%": FewArm(
        "baseline 25%", "configs/demo/student_baseline.yaml",
        (*BUDGET, "student.unlabeled=false", f"train.epochs={epochs(LABELLED)}"), "none",
    ),
    **{
        f"{name} (honest)": FewArm(
            f"{name} (honest)", f"configs/demo/student_{name.replace('+', '_')}.yaml", SEMI,
            "honest",
        )
        for name in MIXED
    },
    **{
        f"{name} (oracle teacher)": FewArm(
            f"{name} (oracle teacher)", f"configs/demo/student_{name.replace('+', '_')}.yaml",
            (*SEMI, ORACLE_KEY), "oracle",
        )
        for name in MIXED
    },
    "baseline 100%": FewArm(
        "baseline 100%", "configs/demo/student_baseline.yaml",
        ("student.unlabeled=false", f"train.epochs={epochs(LABELLED + HIDDEN)}"), "none",
    ),
}  # fmt: skip
TEACHER_SAW = {
    "none": "no teacher",
    "honest": f"the {LABELLED} kept frames",
    "oracle": f"all {LABELLED + HIDDEN} (the {HIDDEN} hidden too)",
}
# The block's family of comparisons: (claim, arm a, arm b); a "holds" when a > b.
CLAIMS: tuple[tuple[str, str, str], ...] = (
    *((f"{m} (honest) beats the baseline", f"{m} (honest)", "baseline 25%") for m in MIXED),
    *((f"{m} (oracle teacher, saw the hidden labels) beats the baseline",
       f"{m} (oracle teacher)", "baseline 25%") for m in MIXED),
    *((f"the oracle teacher adds to {m}", f"{m} (oracle teacher)", f"{m} (honest)") for m in MIXED),
    ("cmkd+pseudo_label (honest) beats the all-labels ceiling",
     "cmkd+pseudo_label (honest)", "baseline 100%"),
)  # fmt: skip


def run(command: list[str], log: Path) -> None:
    """A bevkd command as its own process, its output appended to ``log``; fails loudly."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full = [sys.executable, "-m", "bevkd.pipeline.cli", *command]
    print(f"[few-labels] {' '.join(command)}  (log {log})", flush=True)
    with log.open("a") as out:
        code = subprocess.run(full, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {code}); see {log}")


def sets(items: list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def build_stores() -> None:
    """The oracle store (the demo's, built if missing), the budget teachers and their store.
    Each step is skipped when its output exists; training resumes from ``last.pt``."""
    run(["cache-teacher", "--config", "configs/demo/cache.yaml", "--build-missing"],
        HERE / "logs" / "demo_store.out")  # fmt: skip
    lidar_best = TEACHERS["lidar"][1] / "best.pt"
    for name, (config, out, n_epochs) in TEACHERS.items():
        if (out / "eval" / "metrics.json").is_file():
            continue
        extra = [f"model.checkpoint={lidar_best}"] if name == "label_encoder" else []
        run(["train-teacher", "--config", config,
             *sets([*BUDGET, f"train.out_dir={out}", f"train.epochs={n_epochs}", *extra])],
            HERE / "logs" / f"teacher_{name}.out")  # fmt: skip
    run(["cache-teacher", "--config", "configs/demo/cache.yaml", *sets([
        "cache.teachers=[lidar, label_encoder]", f"cache.lidar_checkpoint={lidar_best}",
        f"cache.label_encoder_checkpoint={TEACHERS['label_encoder'][1] / 'best.pt'}",
        f"store.url={HONEST_STORE}"])], HERE / "logs" / "honest_store.out")  # fmt: skip


def jobs_for(names: list[str], seeds: list[int], oracle_seeds: list[int]) -> list[tuple]:
    """``((arm name, seed), Arm, overrides, store)``: the headline arms seed by seed, then the
    oracle arms, so the first seeds of every headline arm finish first."""
    out = []
    for name in names:
        arm = ARMS[name]
        for seed in oracle_seeds if arm.teacher == "oracle" else seeds:
            job = Arm(f"{name} (seed {seed})", arm.config, arm.folder(seed))
            out.append(((name, seed), job, [*arm.sets, f"train.seed={seed}"], arm.store))
    return sorted(out, key=lambda j: (ARMS[j[0][0]].teacher == "oracle", j[0][1]))


def run_parallel(
    jobs: list[tuple], parallel: int, fresh: bool = False
) -> dict[tuple[str, int], dict]:
    """Jobs ``parallel`` at a time; returns (arm, seed) -> metrics."""
    from concurrent.futures import ThreadPoolExecutor

    from bevkd.stages.demo_students import train_arm

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {
            key: pool.submit(train_arm, arm, OUT, store, DATA, tuple(extra), fresh=fresh)
            for key, arm, extra, store in jobs
        }
        return {key: f.result() for key, f in futures.items()}


def finished(jobs: list[tuple]) -> dict[tuple[str, int], dict]:
    """The jobs already evaluated (in work/ or in the run ledger); nothing is trained."""
    from bevkd.stages import run_ledger
    from bevkd.stages.demo_students import arm_config_sha256, arm_metrics

    out = {}
    for key, arm, extra, store in jobs:
        wanted = arm_config_sha256(arm, OUT, store, DATA, tuple(extra))
        reads = None if ARMS[key[0]].teacher == "none" else store
        m = arm_metrics(OUT / arm.folder, reads, wanted)
        if m is not None:  # with the steps and frames its own log recorded
            entry = run_ledger.find(OUT / arm.folder)
            record = entry[0] if entry else {}
            out[key] = {**m, "steps": record.get("steps"), "frames": record.get("frames")}
    return out


def logged(runs: list[dict], key: str) -> str:
    """The steps (or labelled + unlabelled frames) the seeds' logs recorded: one value, or the
    range; "?" for a run without a record."""
    if key == "frames":
        return ", ".join(sorted({frames_cell(m.get("frames"), missing="?") for m in runs}))
    steps = [m.get("steps") for m in runs]
    if None in steps or not steps:
        return "?"
    return str(steps[0]) if min(steps) == max(steps) else f"{min(steps)}-{max(steps)}"


def car(m: dict[str, Any]) -> float:
    return float(m["class_ap"]["car"])


def mean_std(values: list[float]) -> str:
    """Mean ± std over the seeds; one seed's value says it is one."""
    return reporting.mean_std(values, one=" (1 seed)")


def by_arm(metrics: dict[tuple[str, int], dict]) -> dict[str, list[dict]]:
    """Arm -> its seeds' metrics, in seed order."""
    out: dict[str, list[dict]] = {}
    for (name, _), m in sorted(metrics.items(), key=lambda kv: kv[0][1]):
        out.setdefault(name, []).append(m)
    return out


def arm_table(runs: dict[str, list[dict]], teacher: str) -> list[str]:
    """The rows of one teacher setting (with the baselines), car AP first: mean ± std, each
    seed, and the share of the baseline-to-ceiling gap the arm closes."""
    low = [car(m) for m in runs.get("baseline 25%", [])]
    high = [car(m) for m in runs.get("baseline 100%", [])]
    gap = statistics.mean(high) - statistics.mean(low) if low and high else None
    rows = []
    for name, arm in ARMS.items():
        if arm.teacher not in ("none", teacher) or not runs.get(name):
            continue
        cars = [car(m) for m in runs[name]]
        closed = (
            f"{(statistics.mean(cars) - statistics.mean(low)) / gap:+.0%}"
            if gap and arm.teacher != "none"
            else ""
        )
        rows.append([
            f"{name}{dagger(runs[name])}", TEACHER_SAW[arm.teacher], len(cars), mean_std(cars),
            ", ".join(f"{c:.3f}" for c in cars), mean_std([m["mAP"] for m in runs[name]]),
            mean_std([m["NDS"] for m in runs[name]]), closed, logged(runs[name], "steps"),
            logged(runs[name], "frames"),
        ])  # fmt: skip
    return markdown_table(
        ["arm", "teacher trained on", "seeds", "car AP", "car AP per seed", "mAP", "NDS",
         "gap closed", "steps", "frames (labelled + unlabelled)"], rows,
    )  # fmt: skip


def verdict_lines(runs: dict[str, list[dict]]) -> list[str]:
    """The verdict table of :func:`judged_claims`."""
    return judged_claims(runs)[0]


def judged_claims(runs: dict[str, list[dict]]) -> tuple[list[str], dict]:
    """Every claim of :data:`CLAIMS` whose two arms ran, judged on car AP and mAP by Welch's
    t-test with a Holm correction over the whole block (:func:`verdicts.verdict_table`)."""
    from bevkd.eval import verdicts

    pairs = claim_pairs(CLAIMS, runs, {
        "car AP": lambda ms: [car(m) for m in ms], "mAP": lambda ms: [float(m["mAP"]) for m in ms],
    })  # fmt: skip
    if not pairs:
        return [], {}
    table, judged = verdicts.verdict_table(pairs, ["car AP", "mAP"])
    return ["Verdicts (a claim holds when its first arm is higher):", "", *table], judged


def readme_block(runs: dict[str, list[dict]]) -> str:
    """The README's few-labels block: the honest arms' car AP and what holds, nothing else."""
    from bevkd.eval import verdicts

    rows = [
        [
            f"{name}{dagger(runs[name])}",
            TEACHER_SAW[arm.teacher],
            len(runs[name]),
            mean_std([car(m) for m in runs[name]]),
        ]
        for name, arm in ARMS.items()
        if arm.teacher in ("none", "honest") and runs.get(name)
    ]
    if not rows:
        return "No few-labels arm has been evaluated by this code yet.\n"
    _, judged = judged_claims(runs)
    return "\n".join([
        f"{LABELLED} of {LABELLED + HIDDEN} labelled frames keep their GT; the teachers "
        f"trained on those {LABELLED} only. Car AP on val, mean ± std over seeds:",
        "",
        *markdown_table(["arm", "teacher trained on", "seeds", "car AP"], rows),
        "",
        "Welch's t-test, Holm over the block's comparisons (α = 0.05):",
        "",
        *verdicts.summary(judged),
        *(["", *footnote([m for ms in runs.values() for m in ms])] if any(
            dagger(ms) for ms in runs.values()) else []),
    ]) + "\n"  # fmt: skip


def report(metrics: dict[tuple[str, int], dict], quality: list[str]) -> str:
    """The few-labels block: the honest table, the oracle table, the verdicts, the
    pseudo-labels' own quality."""
    runs = by_arm(metrics)
    lines = [
        "## Few labels, many unlabelled frames (generated by benchmarks/few_labels.py)",
        "",
        f"{LABELLED} of the {LABELLED + HIDDEN} labelled demo train frames keep their GT "
        f"(data.labeled_fraction 0.25, label_seed 0); the {HIDDEN} hidden frames and the "
        f"{SWEEPS} sweeps are unlabelled. Every arm aims at {STEPS} optimizer steps of batch "
        f"{BATCH} (its epochs set from its frame count; the steps and frames columns are what "
        "its own log recorded), frames shuffled together. nuScenes devkit on the val split.",
        "",
        f"### Honest: teacher and label encoder trained on the {LABELLED} kept frames only",
        "",
        *arm_table(runs, "honest"),
        "",
        f"### Oracle teacher: the demo teachers, trained on all {LABELLED + HIDDEN} labelled "
        "frames (the hidden ones too)",
        "",
        "Not a semi-supervised result: the teacher fitted the GT the student hides. Kept to show "
        "what the leak was worth.",
        "",
        *arm_table(runs, "oracle"),
        "",
        *verdict_lines(runs),
        "",
        *quality,
        "",
        *footnote([m for ms in runs.values() for m in ms]),
    ]
    return "\n".join(lines) + "\n"


def hidden_tokens() -> list[str]:
    """The 54 labelled train frames the budget hides, from the demo's own index."""
    from bevkd.datasets import budget
    from bevkd.datasets.dataset import load_frames
    from bevkd.pipeline.config import load_config

    cfg = load_config("configs/demo/student_baseline.yaml", [f"data.root={DATA}", *BUDGET])
    return list(budget.choose(cfg.data, load_frames(cfg, "train")).hidden)


def pseudo_label_quality(thresholds: list[float]) -> list[str]:
    """Each store's cached LiDAR-teacher boxes scored as detections, per threshold: on val, and
    on the hidden train frames alone (``eval.sample_tokens``): the pseudo-labels' own quality."""
    from bevkd.eval.store_boxes import store_config, sweep
    from bevkd.storage.reader import open_store

    listed = HERE / "hidden_tokens.txt"
    listed.write_text("".join(f"{t}\n" for t in hidden_tokens()))
    lines = [
        "The pseudo-labels themselves: each store's cached LiDAR-teacher boxes scored against "
        "GT (`bevkd evaluate --store <store> --score-threshold ...`), on val and on the "
        f"{HIDDEN} hidden train frames alone (`--set eval.eval_set=train "
        "eval.sample_tokens=<their list>`):",
        "",
    ]
    rows = []
    for teacher, url in (("honest", HONEST_STORE), ("oracle", ORACLE_STORE)):
        store = open_store(url)
        for where, sets_ in (("val", ["eval.eval_set=val"]),
                             ("hidden train", ["eval.eval_set=train",
                                               f"eval.sample_tokens={listed}"])):  # fmt: skip
            cfg = store_config(store, None, sets_)
            out = HERE / "pseudo_quality" / f"{teacher}_{where.split()[0]}"
            for t, r in sweep(cfg, store, "boxes", thresholds, out).items():
                rows.append([TEACHER_SAW[teacher], f"{where} ({r['num_samples']})", f"{t:g}",
                             r["store"]["num_boxes"], f"{r['mAP']:.3f}",
                             f"{r['class_ap']['car']:.3f}"])  # fmt: skip
    header = ["teacher trained on", "frames (scored)", "score threshold", "boxes", "mAP", "car AP"]
    return lines + markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[4:]),
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4],
                        help="seeds of the baseline, honest and ceiling arms")  # fmt: skip
    parser.add_argument("--oracle-seeds", nargs="*", type=int, default=[0, 1, 2],
                        help="seeds of the oracle-teacher arms")  # fmt: skip
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--thresholds", nargs="*", type=float, default=[0.3, 0.5, 0.7],
                        help="score thresholds at which the stores' boxes are scored")  # fmt: skip
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--fresh", action="store_true",
                        help="train again the arms whose result other code made (marked †)")  # fmt: skip
    parser.add_argument("--report-only", action="store_true",
                        help="write the block from the arms already evaluated; train nothing")  # fmt: skip
    args = parser.parse_args()

    jobs = jobs_for(args.arms, args.seeds, args.oracle_seeds)
    if not args.report_only:
        build_stores()
        run_parallel(jobs, args.parallel, args.fresh)
    metrics = finished(jobs)
    quality = pseudo_label_quality(args.thresholds or [0.3])
    text = report(metrics, quality)
    write_block(Path("docs/results.md"), "few-labels", text)
    write_block(Path("README.md"), "few-labels-readme", readme_block(by_arm(metrics)))
    (HERE / "metrics.json").write_text(
        json.dumps({f"{k[0]} seed {k[1]}": v for k, v in metrics.items()}, indent=1, default=str)
    )
    print(text)


if __name__ == "__main__":
    main()
