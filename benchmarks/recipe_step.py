"""Training step time of every recipe against the baseline's, side by side in one run.

    .venv/bin/python benchmarks/recipe_step.py [--recipes baseline cmkd labeldistill simdistill focal]
                                               [--steps 8] [--warmup 2] [--rounds 3]

Each recipe's demo config (``configs/demo/student_<recipe>.yaml``) builds its objective
(student + recipe, as ``train-student`` does) and reads the same frames' batches from the store
into RAM first, so the step is the student's and the recipe's compute alone: forward, loss,
backward, clipping and the optimizer step (:func:`student_step.time_steps`). Recipes run
interleaved in rounds, the order rotating every round, so drift on a shared machine hits them
alike; each round gives every recipe a median step time and a ratio to the baseline's. Prints
the median over rounds of each, and the peak memory of a measured run (CUDA
``max_memory_allocated``, or this process's RSS growth on CPU). Prints a markdown table and
writes it, with the command line, date and machine, into the ``recipe-step`` block of
``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_report import table, write_performance
from student_step import PeakMemory, batch_keys, time_steps

from bevkd.pipeline.config import load_config
from bevkd.pipeline.distributed import setup_distributed
from bevkd.stages.train_student import build

RECIPES = ("baseline", "cmkd", "labeldistill", "simdistill", "focal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=8, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = setup_distributed(prefer_cuda=True)
    device = info.device
    runs = {}
    for name in args.recipes:
        cfg = load_config(f"configs/demo/student_{name}.yaml", args.set)
        objective, dataset = build(cfg, info)
        objective.to(device)
        params = [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp and device.type == "cuda")
        keys = batch_keys(
            len(dataset), cfg.train.batch_size, cfg.train.seed, args.warmup + args.steps
        )
        batches = [dataset.collate([dataset[k] for k in batch]) for batch in keys]
        runs[name] = (cfg, objective, optimizer, scaler, batches)
        fields = ", ".join(sorted(objective.recipe.expects)) or "none"
        print(f"{name:13s} {cfg.model.kind:10s} fields: {fields}")
    setting = (
        f"device {device}; torch threads {torch.get_num_threads()}; batch {cfg.train.batch_size}; "
        f"{args.steps} steps after {args.warmup}, {args.rounds} rounds; the demo configs "
        f"`configs/demo/student_<recipe>.yaml`{' with ' + ' '.join(args.set) if args.set else ''}."
    )
    print(setting)
    memory = PeakMemory(device)
    step: dict[str, list[float]] = {n: [] for n in runs}
    peak: dict[str, float] = {}
    order = list(runs)
    for round_ in range(args.rounds):
        started = time.perf_counter()
        for name in order[round_ % len(order) :] + order[: round_ % len(order)]:
            cfg, objective, optimizer, scaler, batches = runs[name]
            times, peak[name] = time_steps(objective, optimizer, scaler, iter(batches), cfg, device,
                                           args.warmup, args.steps, memory)  # fmt: skip
            total = [f + b for f, b in zip(times["forward"], times["backward"], strict=True)]
            step[name].append(statistics.median(total))
        print(f"round {round_ + 1}: {time.perf_counter() - started:.0f} s")
    read = {name: ", ".join(f"`{f}`" for f in sorted(runs[name][1].recipe.expects)) or "none"
            for name in runs}  # fmt: skip
    lines = [setting, "", *report(step, peak, read, memory.what)]
    print("\n".join(lines))
    write_performance("recipe-step", lines)


def report(step: dict[str, list[float]], peak: dict[str, float], fields: dict[str, str],
           what: str) -> list[str]:  # fmt: skip
    """Markdown: per recipe the store fields it reads, its step (median over rounds of each
    round's median, in ms), the median over rounds of its ratio to the baseline's step in the
    same round, and the peak memory of a measured run."""
    base = step.get("baseline")
    rows = []
    for name, values in step.items():
        ratio = (
            statistics.median(v / b for v, b in zip(values, base, strict=True))
            if base
            else float("nan")
        )
        rows.append([f"`{name}`", fields.get(name, "-"), f"{1000 * statistics.median(values):.0f}",
                     f"{ratio:.2f}", f"{peak[name]:.0f}"])  # fmt: skip
    return table(["recipe", "store fields read", "step ms (median of rounds)", "x baseline",
                  f"peak MiB ({what})"], rows)  # fmt: skip


if __name__ == "__main__":
    main()
