"""Stage-one throughput: teacher forward alone vs the whole cache-teacher path, in one run.

    .venv/bin/python benchmarks/cache_throughput.py [--frames 48] [--config configs/demo/cache.yaml]

1. forward only: the frames are loaded into memory first, then the teachers run over them in
   batches of ``train.batch_size`` (one process, torch using every core);
2. cache-teacher, one process: load, forward, encode, write, shard after shard;
3. cache-teacher on a 2-worker dask LocalCluster (one torch thread per worker), the default.

Prints frames/s of each and the ratios (2)/(1) and (3)/(1). Teachers come from the config's
checkpoints (``make cache-teacher`` trains the demo ones); throughput does not depend on
whether they are trained, so missing ones are built with random weights in a temp folder.
"""

from __future__ import annotations

import argparse
import shutil
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
    dataset = FrameDataset(frames, cfg.data, train=False)
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


def cache_rate(cfg: Config, url: Path, workers: int) -> float:
    shutil.rmtree(url, ignore_errors=True)
    run_cfg = with_overrides(cfg, [f"store.url={url}", f"cache.n_workers={workers}"])
    start = time.perf_counter()
    result = cache_teacher.run(run_cfg)
    return result.frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo/cache.yaml")
    parser.add_argument(
        "--frames", type=int, default=48, help="frames per split role (train, val, unlabeled)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        base = load_config(args.config, [f"cache.max_frames={args.frames // 3}"])
        cfg = with_overrides(base, ensure_teachers(base, tmp))
        frames = cache_teacher.select_frames(cfg)
        print(
            f"teachers: {', '.join(cfg.cache.teachers)}; {len(frames)} frames; torch threads {torch.get_num_threads()}"
        )
        fwd = forward_only(cfg, frames)
        single = cache_rate(cfg, tmp / "single.zarr", 0)
        dask = cache_rate(cfg, tmp / "dask.zarr", 2)
    print(f"{'path':<44}{'frames/s':>10}{'vs forward':>12}")
    print(f"{'teacher forward only (frames in memory)':<44}{fwd:>10.2f}{1.0:>12.2f}")
    print(f"{'cache-teacher, one process':<44}{single:>10.2f}{single / fwd:>12.2f}")
    print(f"{'cache-teacher, dask LocalCluster (2 workers)':<44}{dask:>10.2f}{dask / fwd:>12.2f}")


if __name__ == "__main__":
    main()
