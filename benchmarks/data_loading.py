"""Dataset throughput: frames/s of FrameDataset through a DataLoader with 0 and 2 workers.

Runs on the synthetic ``demo`` preset (generated into ``work/bench_data`` if absent), train
split with augmentation on, batch size 1, at the config's image size and LiDAR sweeps. The
first batch (worker start-up, page cache) is timed separately from the steady rate.

    .venv/bin/python benchmarks/data_loading.py [--frames 60] [--sweeps 1] [--workers 0 2]

Prints a markdown table and writes it, with the command line, date and machine, into the
``data-loading`` block of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

from bevkd.datasets.dataset import build_dataset
from bevkd.datasets.frame import collate
from bevkd.pipeline.config import Config, DataConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_report import table, write_performance


def ensure_data(root: Path, preset: str) -> Path:
    if not (root / "v1.0-trainval").is_dir():
        from bevkd.datasets.synthetic import generate

        print(f"generating the '{preset}' preset into {root} ...", flush=True)
        start = time.perf_counter()
        generate(root, preset=preset, seed=0, fmt="nuscenes")
        print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return root


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the DataLoader workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(dataset: torch.utils.data.Dataset, workers: int) -> tuple[float, float, float]:
    """(seconds to the first batch, steady frames/s after it, CPU ms per frame overall).

    CPU time does not depend on what else the machine runs; wall-clock frames/s does.
    """
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, num_workers=workers, collate_fn=collate
    )
    cpu = _cpu_seconds()
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - start
    count = 0
    steady = time.perf_counter()
    for _ in iterator:
        count += 1
    rate = count / (time.perf_counter() - steady)
    del iterator  # joins the workers, so their CPU time is counted
    cpu_ms = (_cpu_seconds() - cpu) * 1000 / (count + 1)
    return first, rate, cpu_ms


def report(setting: str, load: float, rows: list[tuple[int, float, float, float]]) -> list[str]:
    """Markdown: what was loaded (``setting``), the load average before, and per DataLoader
    worker count (seconds to the first batch, steady frames/s, CPU ms per frame)."""
    lines = [f"{setting}; load average before: {load:.1f}.", ""]
    return lines + table(
        ["DataLoader workers", "first batch s", "frames/s", "CPU ms/frame"],
        [[w, f"{first:.2f}", f"{rate:.1f}", f"{cpu:.1f}"] for w, first, rate, cpu in rows],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="work/bench_data")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--sweeps", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()

    root = ensure_data(Path(args.data), args.preset)
    data = DataConfig(root=str(root), lidar_sweeps=args.sweeps)
    dataset = build_dataset(Config(data=data), "train")
    subset = torch.utils.data.Subset(dataset, range(min(args.frames, len(dataset))))
    frame = dataset.frames[0]
    sample = dataset[0]
    setting = (
        f"{len(dataset)} train frames of `{root}`, measuring {len(subset)} (train augmentation, "
        f"depth maps, batch 1): {len(data.cameras)} cameras "
        f"{frame.cameras[0].width}x{frame.cameras[0].height} -> {data.image_size[1]}x{data.image_size[0]}, "
        f"{len(sample.points)} points x {args.sweeps} sweep(s), torch threads {torch.get_num_threads()}"
    )  # fmt: skip
    load = os.getloadavg()[0]
    print(setting, flush=True)
    rows = []
    for workers in args.workers:
        first, rate, cpu_ms = measure(subset, workers)
        rows.append((workers, first, rate, cpu_ms))
        print(f"{workers} workers: first batch {first:.2f} s, {rate:.1f} frames/s, "
              f"{cpu_ms:.1f} CPU ms/frame", flush=True)  # fmt: skip
    lines = report(setting, load, rows)
    print("\n".join(lines))
    write_performance("data-loading", lines)


if __name__ == "__main__":
    main()
