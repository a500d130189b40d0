"""The demo's recipe table: every recipe's demo student trained against the demo store, one
seed, and evaluated with the nuScenes devkit on val.

    .venv/bin/python benchmarks/recipe_results.py [--recipes baseline cmkd ...] [--unlabeled]
                                                  [--parallel 2] [--seed 0]

Each arm is a real ``bevkd train-student`` run of ``configs/demo/student_<recipe>.yaml`` under
``work/demo/recipes/<recipe>[_unlabeled][_seed<n>]`` (the demo's arms, see
:mod:`bevkd.stages.demo_students`): resumable, and an arm whose evaluation exists is not run
again. ``--unlabeled`` adds the unlabelled sweeps (``student.unlabeled=true``). Needs the full
demo store (``make cache-teacher``: LiDAR, fusion and label-encoder teachers). Prints a markdown
table, with each arm's optimizer steps and frames read from its own logs (the run ledger's
record, :func:`bevkd.stages.run_ledger.from_log`), writes it to
``work/demo/recipes/results[_unlabeled].md`` and, with the command line, date and machine, into
the ``recipe-results[-unlabeled][-seed<n>]`` block of ``docs/performance.md``. One seed: the
multi-seed table with its verdicts is ``make results`` (docs/results.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bevkd.stages.demo_students import Arm, train_students

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_report import table, write_performance
from reporting import frames_cell
from reporting import run_counts as log_counts

RECIPES = ("baseline", "cmkd", "labeldistill", "simdistill", "focal")
OUT = Path("work/demo")


def report(rows: dict[str, dict[str, Any]], counts: dict[str, dict[str, Any]], seed: int,
           unlabeled: bool) -> list[str]:  # fmt: skip
    """Markdown: per recipe mAP, NDS and car AP on val, and the optimizer steps and labelled +
    unlabelled training frames its logs give ("-" where a log is missing)."""
    sweeps = ", with the unlabelled sweeps" if unlabeled else ""
    lines = [
        f"Demo students, one seed ({seed}){sweeps}; nuScenes devkit on val. Steps and frames "
        "from each run's own logs (`train_log.jsonl`, `train.out`). One seed is not a verdict: "
        "`make results` (docs/results.md) runs the seeds and tests each direction.",
        "",
    ]
    body = []
    for name, m in rows.items():
        got = counts.get(name, {})
        steps = got.get("steps")
        body.append([f"`{name}`", f"{m['mAP']:.3f}", f"{m['NDS']:.3f}",
                     f"{m['class_ap']['car']:.3f}", "-" if steps is None else steps,
                     frames_cell(got.get("frames"))])  # fmt: skip
    return lines + table(
        ["recipe", "mAP", "NDS", "car AP", "optimizer steps", "frames (labelled + unlabelled)"],
        body,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--unlabeled", action="store_true", help="add the unlabelled sweeps")
    parser.add_argument("--parallel", type=int, default=2, help="arms at once (1 thread each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", default="work/demo/teacher.zarr")
    parser.add_argument("--data", default="work/demo/data")
    args = parser.parse_args()
    tail = ("_unlabeled" if args.unlabeled else "") + (f"_seed{args.seed}" if args.seed else "")
    arms = tuple(
        Arm(name, f"configs/demo/student_{name}.yaml", f"recipes/{name}{tail}")
        for name in args.recipes
    )
    extra = [f"train.seed={args.seed}"] + (["student.unlabeled=true"] if args.unlabeled else [])
    started = time.perf_counter()
    rows = train_students(OUT, args.store, args.data, args.parallel, arms, tuple(extra))
    counts = {arm.name: log_counts(OUT / arm.folder) for arm in arms}
    lines = report(rows, counts, args.seed, args.unlabeled)
    text = "\n".join(lines)
    print(text)
    print(f"\n{time.perf_counter() - started:.0f} s")
    out = OUT / "recipes" / f"results{tail}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    write_performance("recipe-results" + tail.replace("_", "-"), lines)


if __name__ == "__main__":
    main()
