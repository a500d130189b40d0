"""The few-labels block of the results: 25% of the demo's labels plus every unlabelled frame.

    .venv/bin/python benchmarks/few_labels.py [--seeds 0 1 2] [--arms ...] [--parallel 2]
                                              [--thresholds 0.3 0.5 0.7]

18 of the 72 labelled demo train frames keep their GT (``student.labeled_fraction=0.25``,
``student.label_seed=0``: the same subset in every arm and seed); the other 54 and the 72
unlabelled sweeps are unlabelled frames. Every arm trains about 500 optimizer steps of batch 4
(its epochs are set from its frame count), one thread, ``--parallel`` arms at once:

- ``baseline 25%``: GT on the 18 frames only;
- ``cmkd``, ``pseudo_label``, ``cmkd+pseudo_label``: the 18 labelled and 126 unlabelled frames;
- ``baseline 100%``: GT on all 72 frames, the ceiling.

Each arm is a real ``bevkd train-student`` run under ``work/demo/few_labels/<arm>_seed<n>``
(resumable; a finished arm is not run again). ``--thresholds`` adds ``pseudo_label`` arms at
other score thresholds (seed 0), for the student's car AP against the threshold; the store's
cached boxes are scored too (``bevkd evaluate --store``, val), the pseudo-labels' own quality.
Writes the few-labels block of ``docs/results.md`` (mean ± std over the seeds run, the
fraction of the gap to the ceiling each arm closes, the threshold table and the pseudo-labels'
own quality) and ``docs/few_labels_threshold_lpb<k>.png``. ``--labelled-per-batch k`` puts k
labelled frames in every batch of the mixed arms (2 of 4, as semi-supervised detectors train);
the default 0 shuffles all frames together (each protocol has its own folders and block).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from bevkd.stages.demo_students import Arm

OUT = Path("work/demo")
STEPS, BATCH = 500, 4
LABELLED, HIDDEN, SWEEPS = 18, 54, 72  # 25% of the 72 labelled train frames; the rest; sweeps
FEW = ["student.labeled_fraction=0.25", "student.label_seed=0"]


def epochs(frames: int, steps: int = STEPS) -> int:
    """Epochs that give about ``steps`` optimizer steps of BATCH over ``frames`` (full batches
    only)."""
    return math.ceil(steps / (frames // BATCH))


MIXED = ("cmkd", "pseudo_label", "cmkd+pseudo_label")  # the arms that train unlabelled frames
# arm -> (config, overrides)
ARMS: dict[str, tuple[str, list[str]]] = {
    "baseline 25%": (
        "configs/demo/student_baseline.yaml",
        [*FEW, "student.unlabeled=false", f"train.epochs={epochs(LABELLED)}"],
    ),
    **{
        name: (
            f"configs/demo/student_{name.replace('+', '_')}.yaml",
            [*FEW, "student.unlabeled=true", f"train.epochs={epochs(LABELLED + HIDDEN + SWEEPS)}"],
        )
        for name in MIXED
    },
    "baseline 100%": (
        "configs/demo/student_baseline.yaml",
        ["student.unlabeled=false", f"train.epochs={epochs(LABELLED + HIDDEN)}"],
    ),
}


def with_share(name: str, sets: list[str], k: int) -> tuple[list[str], str]:
    """An arm's overrides and folder tag when every batch holds ``k`` labelled frames (mixed
    arms only): the epoch is then set by the 126 unlabelled frames, ``BATCH - k`` a batch."""
    if not k or name not in MIXED:
        return sets, ""
    steps = SWEEPS + HIDDEN
    kept = [x for x in sets if not x.startswith("train.epochs=")]
    epochs_k = math.ceil(STEPS / (steps // (BATCH - k)))
    return [*kept, f"student.labelled_per_batch={k}", f"train.epochs={epochs_k}"], f"_lpb{k}"


def folder(arm: str, seed: int, extra: str = "") -> str:
    slug = arm.replace(" ", "_").replace("%", "pct").replace("+", "_")
    return f"few_labels/{slug}{extra}_seed{seed}"


def run_parallel(jobs: list[tuple[str, Arm, list[str]]], parallel: int) -> dict[str, dict]:
    """Jobs (key, arm, overrides) ``parallel`` at a time; returns key -> metrics."""
    from concurrent.futures import ThreadPoolExecutor

    from bevkd.stages.demo_students import train_arm

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {
            key: pool.submit(train_arm, arm, OUT, "work/demo/teacher.zarr", "work/demo/data", tuple(sets))
            for key, arm, sets in jobs
        }  # fmt: skip
        return {key: f.result() for key, f in futures.items()}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--thresholds", nargs="*", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument(
        "--labelled-per-batch", type=int, default=0,
        help="labelled frames in every batch of the mixed arms (0: all frames shuffled together)",
    )  # fmt: skip
    parser.add_argument(
        "--report-only", action="store_true",
        help="write the block from the arms already evaluated; train nothing",
    )  # fmt: skip
    args = parser.parse_args()
    k = args.labelled_per_batch

    jobs = []
    for seed in args.seeds:
        for name in args.arms:
            config, sets = ARMS[name]
            sets, tag = with_share(name, sets, k)
            jobs.append(((name, seed), Arm(f"{name} (seed {seed})", config, folder(name, seed, tag)),
                         [*sets, f"train.seed={seed}"]))  # fmt: skip
    config, sets = ARMS["pseudo_label"]
    sets, tag = with_share("pseudo_label", sets, k)
    for threshold in args.thresholds:
        if threshold != 0.3:  # the pseudo_label arm's own threshold is 0.3
            jobs.append(((f"pseudo_label thr {threshold:g}", 0),
                         Arm(f"pseudo_label thr {threshold:g}", config,
                             folder("pseudo_label", 0, f"{tag}_thr{threshold:g}")),
                         [*sets, f"distill.pseudo_threshold={threshold}", "train.seed=0"]))  # fmt: skip
    if args.report_only:  # the arms already evaluated, nothing trained
        from bevkd.stages.demo_students import arm_metrics

        found = {key: arm_metrics(OUT / arm.folder) for key, arm, _ in jobs}
        metrics = {key: m for key, m in found.items() if m is not None}
    else:
        metrics = run_parallel(jobs, args.parallel)

    car = {key: m["class_ap"]["car"] for key, m in metrics.items()}
    by_arm: dict[str, list[dict]] = {}
    for (name, _), m in metrics.items():
        by_arm.setdefault(name, []).append(m)
    low = [m["class_ap"]["car"] for m in by_arm.get("baseline 25%", [])]
    high = [m["class_ap"]["car"] for m in by_arm.get("baseline 100%", [])]
    gap = (statistics.mean(high) - statistics.mean(low)) if low and high else None
    lines = [
        "## Few labels, many unlabelled frames (generated by benchmarks/few_labels.py)",
        "",
        f"18 of the 72 labelled demo train frames keep their GT (label_seed 0); 54 hidden + 72 "
        f"sweeps are unlabelled. About {STEPS} steps of batch {BATCH} per arm; "
        + (
            f"every batch of the mixed arms holds {k} labelled frames (student.labelled_per_batch)"
            if k
            else "frames shuffled together (no fixed labelled share per batch)"
        )
        + ". nuScenes devkit on the 24 val frames.",
        "",
        "| arm | seeds | mAP | NDS | car AP | car AP per seed | gap to the ceiling closed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ARMS:
        runs = [m for m in by_arm.get(name, [])]
        if not runs:
            continue
        cars = [m["class_ap"]["car"] for m in runs]
        closed = (
            f"{(statistics.mean(cars) - statistics.mean(low)) / gap:+.0%}"
            if gap and name not in ("baseline 25%", "baseline 100%")
            else ""
        )
        lines.append(
            f"| {name} | {len(runs)} | {mean_std([m['mAP'] for m in runs])} | "
            f"{mean_std([m['NDS'] for m in runs])} | {mean_std(cars)} | "
            f"{', '.join(f'{c:.3f}' for c in cars)} | {closed} |"
        )
    sweep = sorted(
        (float(k[0].split()[-1]), v) for k, v in car.items() if k[0].startswith("pseudo_label thr")
    )
    zero = [m["class_ap"]["car"] for (n, s), m in metrics.items() if n == "pseudo_label" and s == 0]
    if zero:
        sweep = sorted([*sweep, (0.3, zero[0])])
    if len(sweep) > 1:
        lines += ["", "Student car AP (seed 0) against the pseudo-label score threshold:", ""]
        lines += ["| threshold | car AP |", "|---|---|"] + [
            f"| {t:g} | {c:.3f} |" for t, c in sweep
        ]
        png = f"few_labels_threshold_lpb{k}.png"
        _plot(sweep, Path("docs") / png)
        lines += ["", f"![car AP against the threshold]({png})"]
    lines += ["", *pseudo_label_quality(args.thresholds)]
    text = "\n".join(lines) + "\n"
    write_block(Path("docs/results.md"), f"few-labels-lpb{k}", text)
    Path(OUT / "few_labels" / "metrics.json").write_text(
        json.dumps({f"{k[0]} seed {k[1]}": v for k, v in metrics.items()}, indent=1, default=str)
    )
    print(text)


def pseudo_label_quality(thresholds: list[float]) -> list[str]:
    """The store's cached LiDAR-teacher boxes scored as detections on the train split (whose
    54 hidden frames are most of it), per threshold: the pseudo-labels' own quality."""
    from bevkd.stages.evaluate_store import store_config, sweep
    from bevkd.storage.reader import open_store

    store = open_store("work/demo/teacher.zarr")
    cfg = store_config(store, None, ["eval.eval_set=train"])
    results = sweep(cfg, store, "boxes", thresholds or [0.3], OUT / "few_labels" / "pseudo_quality")
    lines = [
        "The pseudo-labels themselves (`bevkd evaluate --store work/demo/teacher.zarr "
        "--set eval.eval_set=train --score-threshold ...`): the LiDAR teacher's cached boxes "
        "scored against GT on the 72 train frames:",
        "",
        "| score threshold | boxes | mAP | NDS | car AP |",
        "|---|---|---|---|---|",
    ]
    for t, r in results.items():
        car = r["class_ap"]["car"]
        lines.append(
            f"| {t:g} | {r['store']['num_boxes']} | {r['mAP']:.3f} | {r['NDS']:.3f} | {car:.3f} |"
        )
    return lines


def write_block(path: Path, name: str, text: str) -> None:
    """Put ``text`` between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``path``
    (appended if absent), so several generators can share one results page."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    old = path.read_text() if path.is_file() else "# bevkd results (generated blocks)\n"
    block = f"{start}\n{text}{end}\n"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) + 1 :]
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


def _plot(points: list[tuple[float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-")
    ax.set_xlabel("pseudo-label score threshold")
    ax.set_ylabel("student car AP (val)")
    ax.set_title("pseudo_label, 25% labels, seed 0")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
