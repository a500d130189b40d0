"""The demo's recipe table: every recipe's demo student trained against the demo store, one
seed, and evaluated with the nuScenes devkit on val.

    .venv/bin/python benchmarks/recipe_results.py [--recipes baseline cmkd ...] [--unlabeled]
                                                  [--parallel 2] [--seed 0]

Each arm is a real ``bevkd train-student`` run of ``configs/demo/student_<recipe>.yaml`` under
``work/demo/recipes/<recipe>[_unlabeled][_seed<n>]`` (the demo's arms, see
:mod:`bevkd.stages.demo_students`): resumable, and an arm whose evaluation exists is not run
again. ``--unlabeled`` adds the unlabelled sweeps (``student.unlabeled=true``). Needs the full
demo store (``make cache-teacher``: LiDAR, fusion and label-encoder teachers). Prints a markdown
table and writes it to ``work/demo/recipes/results[_unlabeled].md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bevkd.stages.demo_students import Arm, train_students

RECIPES = ("baseline", "cmkd", "labeldistill", "simdistill", "focal")
OUT = Path("work/demo")


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
    lines = [
        f"Demo students, one seed ({args.seed}){', with the unlabelled sweeps' if args.unlabeled else ''}; "
        "nuScenes devkit on val",
        "",
        "| recipe | mAP | NDS | car AP |",
        "|---|---|---|---|",
    ]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['mAP']:.3f} | {m['NDS']:.3f} | {m['class_ap']['car']:.3f} |")
    table = "\n".join(lines)
    print(table)
    print(f"\n{time.perf_counter() - started:.0f} s")
    out = OUT / "recipes" / f"results{tail}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")


if __name__ == "__main__":
    main()
