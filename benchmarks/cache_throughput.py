"""Stage-one throughput: teacher forward alone vs the whole cache-teacher path, in one run.

    .venv/bin/python benchmarks/cache_throughput.py [--frames 999] [--config configs/demo/cache.yaml]

1. forward only: the frames are loaded into memory first, then the teachers run over them in
   batches of ``train.batch_size`` (one process, torch using every core);
2. cache-teacher in one process (``cache.n_workers=0``): load, forward, encode, write, with
   ``cache.threads_per_worker`` shard tasks in flight whose forwards take turns;
3. cache-teacher on a dask LocalCluster, the default (``cache.n_workers`` worker processes).

For (2) and (3) it prints frames/s end to end (planning the store, creating it, the shards,
finalizing: what a user waits for), over the shard phase, and of the teachers' forwards inside
that same run (timed by the shard tasks), with the ratios. Shared machines drift by tens of
percent within minutes, so (1) runs once per round next to (2) and (3), and "shards / in-run"
pairs the caching rate with a forward rate measured over the very same seconds.
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
    args = parser.parse_args()
    forward: list[float] = []
    runs: dict[str, list[dict[str, float]]] = {"single": [], "dask": []}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        base = load_config(args.config, [f"cache.max_frames={args.frames}"])
        cfg = with_overrides(base, ensure_teachers(base, tmp))
        frames = cache_teacher.select_frames(cfg)
        print(
            f"teachers: {', '.join(cfg.cache.teachers)}; {len(frames)} frames; "
            f"torch threads {torch.get_num_threads()}; {args.rounds} interleaved rounds"
        )
        for _ in range(args.rounds):
            forward.append(forward_only(cfg, frames))
            runs["single"].append(cache_rates(cfg, tmp / "single.zarr", ["cache.n_workers=0"]))
            runs["dask"].append(cache_rates(cfg, tmp / "dask.zarr", []))
    labels = {"single": "one process", "dask": "dask LocalCluster"}
    print(
        f"{'run':<24}{'forward only':>13}{'end to end':>12}{'shards':>9}{'in-run fwd':>12}"
        f"{'shards/in-run':>15}{'shards/fwd only':>17}{'start-up s':>12}"
    )
    for key, label in labels.items():
        for i, r in enumerate(runs[key]):
            print(
                f"{label + f' [{i + 1}]':<24}{forward[i]:>13.2f}{r['total']:>12.2f}"
                f"{r['shards']:>9.2f}{r['forward']:>12.2f}{r['shards'] / r['forward']:>15.2f}"
                f"{r['shards'] / forward[i]:>17.2f}{r['startup']:>12.1f}"
            )
    for key, label in labels.items():
        paired = statistics.median(r["shards"] / r["forward"] for r in runs[key])
        alone = statistics.median(r["shards"] / f for r, f in zip(runs[key], forward, strict=True))
        total = statistics.median(r["total"] / f for r, f in zip(runs[key], forward, strict=True))
        print(
            f"cache-teacher, {label}: shard phase {paired:.2f}x its own teachers' forward rate, "
            f"{alone:.2f}x forward-only; end to end {total:.2f}x forward-only "
            f"(medians of {len(forward)} rounds)"
        )


if __name__ == "__main__":
    main()
