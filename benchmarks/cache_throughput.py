"""Stage-one throughput: teacher forward alone vs the whole cache-teacher path, in one run.

    .venv/bin/python benchmarks/cache_throughput.py [--frames 999] [--config configs/demo/cache.yaml]

1. forward only: the frames are loaded into memory first, then the teachers run over them in
   batches of ``train.batch_size`` (one process, torch using every core);
2. cache-teacher in one process (``cache.n_workers=0``): load, forward, encode, write, with
   ``cache.threads_per_worker`` shard tasks in flight whose forwards take turns;
3. cache-teacher on a dask LocalCluster, the default (``cache.n_workers`` worker processes).

For (2) and (3) it prints frames/s end to end (planning the store, creating it, the shards,
finalizing: what a user waits for) and over the shard phase alone, and each against (1).
Teachers come from the config's checkpoints (``make cache-teacher`` trains the demo ones);
throughput does not depend on whether they are trained, so missing ones are built with random
weights in a temp folder.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bevkd.datasets.dataset import FrameDataset
from bevkd.models.builders import build_teacher
from bevkd.models.checkpoint import save_checkpoint
from bevkd.pipeline.config import Config, load_config, with_overrides
from bevkd.stages import cache_teacher, teacher_runner

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


def forward_only(cfg: Config, frames: list) -> float:
    """Frames/s of the teachers alone over frames already in memory."""
    dataset = FrameDataset(frames, cfg.data, train=False, with_depth=False)
    samples = [dataset[i] for i in range(len(frames))]
    device = torch.device("cpu")
    models = {
        n: teacher_runner.load_teacher_once(teacher_runner.checkpoint_of(cfg, n), device)[0]
        for n in cfg.cache.teachers
    }
    batch = cfg.train.batch_size
    with torch.no_grad():
        teacher_runner.forward_frozen(next(iter(models.values())), samples[:1], device)  # warm-up
        start = time.perf_counter()
        for name, model in models.items():
            chosen = (
                [s for s in samples if s.has_label]
                if teacher_runner.TEACHER_FIELDS[name].labeled_only
                else samples
            )
            for i in range(0, len(chosen), batch):
                teacher_runner.forward_frozen(model, chosen[i : i + batch], device)
        return len(samples) / (time.perf_counter() - start)


def cache_rates(cfg: Config, url: Path, overrides: list[str]) -> tuple[float, float]:
    """(end-to-end, shard-phase) frames/s of one cache-teacher run into a fresh store."""
    shutil.rmtree(url, ignore_errors=True)
    result = cache_teacher.run(with_overrides(cfg, [f"store.url={url}", *overrides]))
    return result.frames / result.seconds, result.frames / result.phases["shards"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo/cache.yaml")
    parser.add_argument(
        "--frames", type=int, default=999, help="at most this many frames per split role"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of all three measurements, interleaved"
    )
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {"forward": [], "single": [], "dask": []}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        base = load_config(args.config, [f"cache.max_frames={args.frames}"])
        cfg = with_overrides(base, ensure_teachers(base, tmp))
        frames = cache_teacher.select_frames(cfg)
        print(
            f"teachers: {', '.join(cfg.cache.teachers)}; {len(frames)} frames; "
            f"torch threads {torch.get_num_threads()}; {args.rounds} interleaved rounds"
        )
        # Shared machines drift: each round measures all three, and ratios pair them per round.
        for _ in range(args.rounds):
            fwd = forward_only(cfg, frames)
            runs["forward"].append((fwd, fwd))
            runs["single"].append(cache_rates(cfg, tmp / "single.zarr", ["cache.n_workers=0"]))
            runs["dask"].append(cache_rates(cfg, tmp / "dask.zarr", []))
    print(f"{'path':<36}{'frames/s':>10}{'vs forward':>12}{'shards only':>13}{'vs forward':>12}")
    labels = {
        "forward": "teacher forward only (in memory)",
        "single": "cache-teacher, one process",
        "dask": "cache-teacher, dask LocalCluster",
    }
    for key, label in labels.items():
        for i, (total, shards) in enumerate(runs[key]):
            fwd = runs["forward"][i][0]
            tail = "" if key == "forward" else f"{shards:>13.2f}{shards / fwd:>12.2f}"
            print(f"{label + f' [{i + 1}]':<36}{total:>10.2f}{total / fwd:>12.2f}{tail}")
    for key in ("single", "dask"):
        ratios = [r[1] / f[0] for r, f in zip(runs[key], runs["forward"], strict=True)]
        totals = [r[0] / f[0] for r, f in zip(runs[key], runs["forward"], strict=True)]
        print(
            f"{labels[key]}: end to end {statistics.median(totals):.2f}x forward, "
            f"shard phase {statistics.median(ratios):.2f}x (median of {len(ratios)} rounds)"
        )


if __name__ == "__main__":
    main()
