"""Stage-two step time: targets read from the store vs the same targets already in RAM.

    .venv/bin/python benchmarks/student_step.py [--steps 20] [--warmup 3] [--rounds 3] [--workers 2]

One student training step, as :func:`bevkd.stages.loop.fit` runs it, split in three: **data
wait** (blocked on ``next()`` of the batch iterator), **forward** (``batch.to(device)``, the
student and its recipe's loss under AMP autocast on CUDA) and **backward** (backward, gradient
clipping, optimizer step), each a median (min-max) over ``--steps`` steps after ``--warmup``
steps, with CUDA synchronised before every clock read. Two paths share one objective and
optimizer: **store**, the training path (``CachedTargets`` over ``FrameDataset``, read through a
DataLoader with ``--workers`` processes and ``collate_student``; each run starts its own
workers, whose start-up the warm-up absorbs), and **in RAM**, the same
batches (same keys, samples and targets) collated into a list beforehand, so the data wait is
~0: the physical limit. Shared machines drift by tens of percent, so the two run interleaved in
rounds, the order flipping every round (A B, B A, ...), and each round gives one ratio. Read the
summary lines: store/in-RAM step time (goal: within 1.05x) and the store path's data-wait
fraction of the step (goal: under 5%); a high wait fraction means the workers cannot keep up
(more ``--workers``), a ratio above 1 with little wait means the workers slow the step itself
(on a CPU-only machine they take cores from torch). Peak memory is per measured run: on CUDA
``torch.cuda.max_memory_allocated`` (reset before the measured steps); on CPU this process's
peak RSS above its RSS when the measured steps start (Linux VmHWM, reset through
``/proc/self/clear_refs``; elsewhere the lifetime ``ru_maxrss``, which shows growth only past
an earlier peak). DataLoader workers' memory is not in it. Prints markdown tables and writes
them, with the command line, date and machine, into the ``student-step`` block of
``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from bevkd.datasets.cached import worker_context
from bevkd.datasets.sampler import EpochBatches
from bevkd.datasets.student_batch import StudentBatch
from bevkd.pipeline.config import Config, load_config
from bevkd.pipeline.distributed import setup_distributed
from bevkd.stages.train_student import StudentObjective, build

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_report import table, write_performance

DEMO_DEFAULTS = ["model.kind=camera", "student.recipe=cmkd"]
PHASES = ("wait", "forward", "backward")
Run = tuple[dict[str, list[float]], float]  # seconds per phase of each step; peak MiB


class PeakMemory:
    """Peak memory of a stretch of steps: CUDA allocations, or this process's resident set."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.hwm = Path("/proc/self/clear_refs").exists() and self._vm("VmHWM") is not None
        if device.type == "cuda":
            self.what = "CUDA max_memory_allocated"
        elif self.hwm:
            self.what = "CPU peak RSS growth (VmHWM reset per run; workers not counted)"
        else:
            self.what = "CPU peak RSS growth (lifetime ru_maxrss; workers not counted)"

    @staticmethod
    def _vm(key: str) -> int | None:
        """``key`` of /proc/self/status in bytes (None off Linux)."""
        try:
            found = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
        except OSError:
            return None
        return int(found.group(1)) * 1024 if found else None

    def _rss_peak(self) -> int:
        if self.hwm:
            return self._vm("VmHWM") or 0
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, else kB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        if self.hwm:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current
        self.base = self._vm("VmRSS") or self._rss_peak()

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return max(self._rss_peak() - self.base, 0) / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(objective: StudentObjective, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, batches: Iterator[StudentBatch], cfg: Config,
               device: torch.device, warmup: int, steps: int, memory: PeakMemory,
               ) -> Run:  # fmt: skip
    """Seconds per phase of each of ``steps`` steps after ``warmup``, and the peak memory (MiB)."""
    use_amp = cfg.train.amp and device.type == "cuda"
    params = [p for p in objective.parameters() if p.requires_grad]
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    objective.train()
    for i in range(warmup + steps):
        if i == warmup:
            memory.start()
        sync(device)
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            loss = sum(objective(batch).values())
        sync(device)
        t2 = time.perf_counter()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        t3 = time.perf_counter()
        if i >= warmup:
            for name, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                times[name].append(seconds)
    return times, memory.peak_mib()


def batch_keys(n: int, batch_size: int, seed: int, count: int) -> list[list[tuple[int, int]]]:
    """The first ``count`` batches of training's frame order, epoch after epoch."""
    sampler = EpochBatches(n, batch_size, seed, True)
    keys: list[list[tuple[int, int]]] = []
    while len(keys) < count:
        keys += list(sampler)
        sampler.set_epoch(sampler.epoch + 1)
    return keys[:count]


def summary(values: list[float]) -> str:
    ms = [1000 * v for v in values]
    return f"{statistics.median(ms):8.1f} ({min(ms):.1f}-{max(ms):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo/student_cmkd.yaml")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=3, help="store / in-RAM pairs")
    parser.add_argument("--workers", type=int, default=None, help="default: train.num_workers")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: the config's")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args()

    if Path(args.config).is_file():
        cfg = load_config(args.config, args.set)
    else:
        print(f"{args.config} not found: built-in defaults with {' '.join(DEMO_DEFAULTS)}")
        cfg = load_config(None, [*DEMO_DEFAULTS, *args.set])
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    threads = args.threads or cfg.train.torch_threads
    if threads:
        torch.set_num_threads(threads)
    info = setup_distributed(prefer_cuda=args.device != "cpu")
    device = info.device
    workers = cfg.train.num_workers if args.workers is None else args.workers
    batch_size = args.batch_size or cfg.train.batch_size

    objective, dataset = build(cfg, info)
    objective.to(device)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp and device.type == "cuda")
    keys = batch_keys(len(dataset), batch_size, cfg.train.seed, args.warmup + args.steps)
    start = time.perf_counter()
    in_ram = [dataset.collate([dataset[k] for k in batch]) for batch in keys]
    size = sum(
        t.numel() * t.element_size()
        for b in in_ram
        for t in [b.images, b.depth, *b.targets.fields.values()]
    )
    cams = f"{len(cfg.data.cameras)} cameras {cfg.data.image_size[1]}x{cfg.data.image_size[0]}"
    setting = (
        f"`{args.config}`: recipe {cfg.student.recipe}, store `{cfg.student.store}` (fields "
        f"{', '.join(sorted(objective.recipe.expects)) or 'none'}); {len(dataset)} frames, "
        f"{cams}; batch {batch_size}; device {device}, AMP {cfg.train.amp and device.type == 'cuda'}; "
        f"torch threads {torch.get_num_threads()}; {workers} loader workers."
    )  # fmt: skip
    print(setting)
    print(
        f"in-RAM batches: {len(in_ram)} preloaded in {time.perf_counter() - start:.1f} s "
        f"({size / 2**20:.0f} MiB of images, depth and target fields)"
    )
    memory = PeakMemory(device)
    extra = {"num_workers": workers, **worker_context(cfg.student.store)}

    def store_run() -> Run:
        # as fit builds it, but with workers started per run (their start-up is in the warm-up)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=keys, collate_fn=dataset.collate,
                                             pin_memory=device.type == "cuda", **extra)  # fmt: skip
        iterator = iter(loader)
        try:
            return time_steps(objective, optimizer, scaler, iterator, cfg, device,
                              args.warmup, args.steps, memory)  # fmt: skip
        finally:
            del iterator  # shuts the workers down outside the timed steps

    def ram_run() -> Run:
        return time_steps(objective, optimizer, scaler, iter(in_ram), cfg, device,
                          args.warmup, args.steps, memory)  # fmt: skip

    runs: dict[str, list[Run]] = {"store": [], "in RAM": []}
    for r in range(args.rounds):
        order = ("store", "in RAM") if r % 2 == 0 else ("in RAM", "store")
        for path in order:
            runs[path].append(store_run() if path == "store" else ram_run())

    lines = [setting, "", *report(runs, args.steps, args.warmup, memory.what)]
    print("\n".join(lines))
    write_performance("student-step", lines)


def report(runs: dict[str, list[Run]], steps: int, warmup: int, what: str) -> list[str]:
    """Markdown: per round and path the phases' median (min-max) ms, the data wait's share of
    the step and the peak memory; then the store/in-RAM step ratio and the store path's wait
    fraction against their goals (medians over the rounds)."""
    rows, ratios, fractions = [], [], []
    for r in range(len(runs["store"])):
        medians = {}
        for path in ("store", "in RAM"):
            times, peak = runs[path][r]
            step = [sum(t) for t in zip(*(times[p] for p in PHASES), strict=True)]
            wait = sum(times["wait"]) / sum(step)
            medians[path] = statistics.median(step)
            if path == "store":
                fractions.append(wait)
            rows.append([r + 1, path, *(summary(times[p]).strip() for p in PHASES),
                         summary(step).strip(), f"{100 * wait:.1f}", f"{peak:.0f}"])  # fmt: skip
        ratios.append(medians["store"] / medians["in RAM"])
    ratio, fraction = statistics.median(ratios), statistics.median(fractions)
    lines = [f"ms per step, median (min-max) of {steps} steps after {warmup} warm-up; "
             f"memory: {what}.", ""]  # fmt: skip
    lines += table(["round", "path", "data wait", "forward", "backward", "step", "wait %",
                    "peak MiB"], rows)  # fmt: skip
    return [
        *lines,
        "",
        f"- store / in-RAM step time: **{ratio:.3f}x** (per round: "
        f"{', '.join(f'{x:.3f}' for x in ratios)}); goal <= 1.05x: "
        f"{'met' if ratio <= 1.05 else 'NOT met'}",
        f"- store data wait: **{100 * fraction:.1f}%** of the step (per round: "
        f"{', '.join(f'{100 * x:.1f}%' for x in fractions)}); goal < 5%: "
        f"{'met' if fraction < 0.05 else 'NOT met'}",
    ]


if __name__ == "__main__":
    main()
