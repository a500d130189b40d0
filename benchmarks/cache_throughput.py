"""Stage-one throughput: teacher forward alone vs the whole cache-teacher path, in one run.

    .venv/bin/python benchmarks/cache_throughput.py [--frames 999] [--rounds 2]

Shared machines drift by tens of percent within minutes, so it measures two ways:

1. **Shard by shard, paired** (the steady-state figure). One process, torch on every core.
   For each shard of the store, back to back: the teachers' forward alone over the shard's
   frames, already in memory (batches of ``train.batch_size``), and the very shard task a
   cache-teacher worker runs (:func:`bevkd.stages.cache_teacher.shard_task`: load, forward,
   encode, write, mark). The order flips every shard, so drift within a pair cancels.
2. **CPU cost per frame** of the shard task's three phases (load; forward; encode and write),
   over a few shards with torch on one thread, so the forward's CPU time is its work, not its
   threads' spin-waits. Where every core is busy all the time (as on a CPU-only machine), the
   caching work adds to the forward instead of hiding under it, and forward / (load + forward +
   write) is the ratio such a layout can reach at best.
3. **Whole runs**, interleaved in rounds: forward alone over all frames; ``cache-teacher`` in
   one process (``cache.n_workers=0``); on a dask LocalCluster (the default). For the runs it
   prints frames/s end to end (planning and creating the store, the shards, finalizing: what a
   user waits for), over the shard phase, and of the teachers' forwards inside that run (timed
   by the shard tasks), with the ratios.

Teachers come from the config's checkpoints (``make cache-teacher`` trains the demo ones);
throughput does not depend on whether they are trained, so missing ones are built with random
weights in a temp folder.

Prints markdown tables and writes them, with the command line, date and machine, into the
``cache-throughput`` block of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bevkd.datasets.dataset import FrameDataset
from bevkd.models.builders import build_teacher
from bevkd.models.checkpoint import save_checkpoint
from bevkd.pipeline.config import Config, load_config, to_dict, with_overrides
from bevkd.stages import cache_teacher, teacher_runner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_report import table, write_performance

CHECKPOINT_KEYS = {
    "lidar": "lidar_checkpoint",
    "fusion": "fusion_checkpoint",
    "label_encoder": "label_encoder_checkpoint",
}


def ensure_teachers(cfg: Config, tmp: Path) -> list[str]:
    """Overrides that point missing teacher checkpoints at random-weight ones."""
    overrides: list[str] = []
    lidar = cfg.cache.lidar_checkpoint
    if not Path(lidar).is_file():
        lidar = str(
            save_checkpoint(
                tmp / "lidar.pt", build_teacher(load_config(None, ["model.kind=lidar"])), cfg
            )
        )
        overrides.append(f"cache.lidar_checkpoint={lidar}")
    for name in cfg.cache.teachers:
        path = getattr(cfg.cache, CHECKPOINT_KEYS[name])
        if name == "lidar" or (path and Path(path).is_file()):
            continue
        extra = [f"model.kind={name}"] + (
            [f"model.checkpoint={lidar}"] if name == "label_encoder" else []
        )
        tcfg = load_config(None, extra)
        saved = save_checkpoint(tmp / f"{name}.pt", build_teacher(tcfg), tcfg)
        overrides.append(f"cache.{CHECKPOINT_KEYS[name]}={saved}")
    return overrides


def load_models(cfg: Config) -> dict[str, torch.nn.Module]:
    device = torch.device("cpu")
    return {
        n: teacher_runner.load_teacher_once(teacher_runner.checkpoint_of(cfg, n), device)[0]
        for n in cfg.cache.teachers
    }


def forward_alone(cfg: Config, models: dict[str, torch.nn.Module], samples: list) -> float:
    """Seconds the teachers take over ``samples`` (each teacher over the frames it reads)."""
    device, batch = torch.device("cpu"), cfg.train.batch_size
    with torch.no_grad():
        start = time.perf_counter()
        for name, model in models.items():
            chosen = teacher_runner.samples_read_by(name, samples)
            for i in range(0, len(chosen), batch):
                teacher_runner.forward_frozen(model, chosen[i : i + batch], device)
        return time.perf_counter() - start


def forward_only(cfg: Config, frames: list) -> float:
    """Frames/s of the teachers alone over frames already in memory."""
    dataset = FrameDataset(frames, cfg.data, train=False, with_depth=False)
    samples = [dataset[i] for i in range(len(frames))]
    models = load_models(cfg)
    forward_alone(cfg, {k: models[k] for k in list(models)[:1]}, samples[:1])  # warm-up
    return len(samples) / forward_alone(cfg, models, samples)


def timed_shard_task(args: tuple) -> float:
    start = time.perf_counter()
    cache_teacher.shard_task(*args)
    return time.perf_counter() - start


def paired_shards(cfg: Config, frames: list, url: Path) -> list[tuple[int, float, float]]:
    """``(frames, forward-alone seconds, shard-task seconds)`` per shard, measured back to back
    in alternating order, the task writing a fresh store."""
    shutil.rmtree(url, ignore_errors=True)
    cfg = with_overrides(cfg, [f"store.url={url}"])
    writer, tasks = cache_teacher.prepare_store(cfg, frames, resume=False)
    models = load_models(cfg)
    cfg_dict = to_dict(cfg)
    pairs = []
    for k, (shard_id, shard_frames, first) in enumerate(tasks):
        samples, _ = teacher_runner.load_shard(cfg, shard_frames, first)
        if k == 0:  # warm-up: the first forward sets up torch's caches
            forward_alone(cfg, models, samples)
        task = (cfg_dict, str(url), shard_id, shard_frames, first, None)
        if k % 2:
            alone = forward_alone(cfg, models, samples)
            cached = timed_shard_task(task)
        else:
            cached = timed_shard_task(task)
            alone = forward_alone(cfg, models, samples)
        pairs.append((len(shard_frames), alone, cached))
    writer.finalize()
    return pairs


def cpu_per_frame(cfg: Config, frames: list, url: Path, shards: int) -> dict[str, float]:
    """CPU milliseconds per frame (all of this process's threads) of a shard task's phases,
    over the first ``shards`` shards after one warm-up shard, with torch on one thread."""
    from bevkd.storage.writer import StoreWriter

    shutil.rmtree(url, ignore_errors=True)
    cfg = with_overrides(cfg, [f"store.url={url}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, tasks = cache_teacher.prepare_store(cfg, frames, resume=False)
        spent = {"load": 0.0, "forward": 0.0, "write": 0.0}
        counted = 0
        for k, (shard_id, shard_frames, first) in enumerate(tasks[: shards + 1]):
            # shard_task's three phases, each on the process's CPU clock
            t0 = time.process_time()
            samples, skipped = teacher_runner.load_shard(cfg, shard_frames, first)
            t1 = time.process_time()
            arrays, boxes, _ = teacher_runner.forward_shard(
                cfg, samples, cfg.cache.teachers, torch.device("cpu"), cfg.train.batch_size
            )
            t2 = time.process_time()
            StoreWriter.reopen(str(url)).write_shard(shard_id, arrays, boxes, skipped)
            t3 = time.process_time()
            if k:  # the first shard warms torch's and the writer's caches
                spent["load"] += t1 - t0
                spent["forward"] += t2 - t1
                spent["write"] += t3 - t2
                counted += len(shard_frames)
    finally:
        torch.set_num_threads(threads)
    return {phase: 1000 * seconds / max(counted, 1) for phase, seconds in spent.items()}


def cache_rates(cfg: Config, url: Path, overrides: list[str]) -> dict[str, float]:
    """Frames/s of one cache-teacher run into a fresh store: end to end, over the shard phase,
    and of the teachers' forwards inside that run (timed by the shard tasks themselves)."""
    shutil.rmtree(url, ignore_errors=True)
    result = cache_teacher.run(with_overrides(cfg, [f"store.url={url}", *overrides]))
    shards = result.phases["shards"]
    return {
        "total": result.frames / result.seconds,
        "shards": result.frames / shards,
        "forward": result.frames * result.processes / result.phases["forward"],
        "startup": result.phases["prepare"] + result.phases["finalize"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo/cache.yaml")
    parser.add_argument(
        "--frames", type=int, default=999, help="at most this many frames per split role"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of all three measurements, interleaved"
    )
    parser.add_argument(
        "--cpu-shards", type=int, default=6, help="shards timed for the CPU cost per frame"
    )
    args = parser.parse_args()
    forward: list[float] = []
    runs: dict[str, list[dict[str, Any]]] = {"single": [], "dask": []}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        base = load_config(args.config, [f"cache.max_frames={args.frames}"])
        cfg = with_overrides(base, ensure_teachers(base, tmp))
        frames = cache_teacher.select_frames(cfg)
        setting = (
            f"`{args.config}`: teachers {', '.join(cfg.cache.teachers)}; {len(frames)} frames; "
            f"torch threads {torch.get_num_threads()}; {args.rounds} interleaved rounds."
        )
        print(setting, flush=True)
        pairs = paired_shards(cfg, frames, tmp / "paired.zarr")
        cpu = cpu_per_frame(cfg, frames, tmp / "cpu.zarr", args.cpu_shards)
        for _ in range(args.rounds):
            forward.append(forward_only(cfg, frames))
            runs["single"].append(cache_rates(cfg, tmp / "single.zarr", ["cache.n_workers=0"]))
            runs["dask"].append(cache_rates(cfg, tmp / "dask.zarr", []))
    lines = [setting, "", *report(pairs, cpu, args.cpu_shards, forward, runs)]
    print("\n".join(lines))
    write_performance("cache-throughput", lines)


LABELS = {"single": "one process", "dask": "dask LocalCluster"}


def report(pairs: list[tuple[int, float, float]], cpu: dict[str, float], cpu_shards: int,
           forward: list[float], runs: dict[str, list[dict[str, Any]]]) -> list[str]:  # fmt: skip
    """Markdown: the paired shards (forward alone against the shard task), the CPU cost per
    frame and the bound it sets, and the whole runs per round with their medians."""
    n = sum(p[0] for p in pairs)
    alone, cached = sum(p[1] for p in pairs), sum(p[2] for p in pairs)
    per_shard = sorted(p[1] / p[2] for p in pairs)
    work = cpu["load"] + cpu["write"]
    lines = [
        f"- **Shard by shard, paired** ({len(pairs)} shards, {n} frames): forward alone "
        f"{n / alone:.2f} frames/s, cache-teacher shard tasks {n / cached:.2f} frames/s: "
        f"**{alone / cached:.3f}x** (per shard: median {statistics.median(per_shard):.3f}, "
        f"{per_shard[0]:.3f} to {per_shard[-1]:.3f}).",
        f"- **CPU per frame**, torch on one thread ({cpu_shards} shards): load "
        f"{cpu['load']:.1f} ms, forward {cpu['forward']:.1f} ms, encode and write "
        f"{cpu['write']:.1f} ms; with every core busy, caching reaches at most "
        f"**{cpu['forward'] / (cpu['forward'] + work):.3f}x** the forward alone.",
        "",
        "Whole runs, frames/s (round in brackets):",
        "",
    ]
    rows = []
    for key, label in LABELS.items():
        for i, r in enumerate(runs[key]):
            rows.append([f"{label} [{i + 1}]", f"{forward[i]:.2f}", f"{r['total']:.2f}",
                         f"{r['shards']:.2f}", f"{r['forward']:.2f}",
                         f"{r['shards'] / r['forward']:.2f}", f"{r['shards'] / forward[i]:.2f}",
                         f"{r['startup']:.1f}"])  # fmt: skip
    lines += table(["run", "forward only", "end to end", "shard phase", "in-run forward",
                    "shards / in-run", "shards / forward only", "start-up + finalize s"], rows)  # fmt: skip
    lines.append("")
    for key, label in LABELS.items():
        if not runs[key]:
            continue
        paired = statistics.median(r["shards"] / r["forward"] for r in runs[key])
        only = statistics.median(r["shards"] / f for r, f in zip(runs[key], forward, strict=True))
        total = statistics.median(r["total"] / f for r, f in zip(runs[key], forward, strict=True))
        lines.append(
            f"- cache-teacher, {label}: shard phase {paired:.2f}x its own teachers' forward rate, "
            f"{only:.2f}x forward-only; end to end {total:.2f}x forward-only "
            f"(medians of {len(runs[key])} rounds)."
        )
    return lines


if __name__ == "__main__":
    main()
