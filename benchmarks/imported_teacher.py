"""An imported teacher, end to end on the demo world: ``bevkd teacher import`` of a CenterPoint
saved by mmdet3d 1.4.0 itself, ``cache-teacher`` over the demo's train and val frames, and a
CMKD student trained from the store and evaluated with the nuScenes devkit.

    .venv/bin/python benchmarks/imported_teacher.py [--checkpoint PTH --from mmdet3d|openpcdet]
                                                    [--config YAML] [--epochs 2]

The default checkpoint is the committed mmdet3d fixture
(``tests/data/foreign/mmdet3d_centerpoint_voxel01.pth``): mmdet3d's nuScenes voxel-0.1
CenterPoint (basic-block SparseEncoder, SECOND/SECONDFPN, six task heads, circle NMS) at
reduced channels over ±12.8 m, with **random weights**. This run shows the chain working on
real on-disk formats (the demo world's LIDAR_TOP is turned -90° from the ego frame, as
nuScenes', so the frame conversion runs too); its AP says nothing about distillation, since
the teacher knows nothing. With a trained checkpoint and its config, the same command caches a
real teacher.

Resumable: the import is redone only when its output is missing, the cache resumes, the
student resumes from its ``last.pt``. Prints what each step made: the import summary, boxes per
frame in the store, the store's size, the student's steps and devkit metrics.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

OUT = Path("work/demo/imported")
FIXTURE = Path("tests/data/foreign/mmdet3d_centerpoint_voxel01.pth")


def bevkd(*args: str) -> str:
    """Run ``bevkd`` and return what it printed (echoed as it goes)."""
    cmd = [sys.executable, "-m", "bevkd.pipeline.cli", *args]
    print("$ bevkd " + " ".join(args), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        sys.exit(f"bevkd {args[0]} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=FIXTURE)
    parser.add_argument(
        "--from", dest="source", default="mmdet3d", choices=["mmdet3d", "openpcdet"]
    )
    parser.add_argument("--config", default="configs/demo/cache.yaml",
                        help="the dataset (and, for OpenPCDet, the architecture)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    from bevkd.models.checkpoint import checkpoint_config, load_checkpoint
    from bevkd.storage.reader import open_store

    OUT.mkdir(parents=True, exist_ok=True)
    teacher = OUT / "teacher.pt"
    if not teacher.is_file():
        bevkd("teacher", "import", str(args.checkpoint), "--from", args.source,
              "--config", args.config, "--out", str(teacher))  # fmt: skip
    cfg = checkpoint_config(load_checkpoint(teacher))
    g = cfg.grid
    grid = [
        "--set", f"grid.point_cloud_range={list(g.point_cloud_range)}",
        "--set", f"grid.voxel_size={list(g.voxel_size)}",
        "--set", f"grid.bev_stride={g.bev_stride}",
    ]  # fmt: skip
    store = OUT / "teacher.zarr"
    bevkd("cache-teacher", "--config", "configs/demo/cache.yaml", "--build-missing", *grid,
          "--set", "cache.teachers=[lidar]", "--set", f"cache.lidar_checkpoint={teacher}",
          "--set", "cache.splits=[train, val]", "--set", f"store.url={store}")  # fmt: skip
    opened = open_store(str(store))
    counts = [len(opened.read_frame(i, ["boxes"])["boxes"]) for i in range(len(opened))]
    print(f"store {store}: {len(opened)} frames, boxes per frame median "
          f"{int(np.median(counts))} (min {min(counts)}, max {max(counts)})")  # fmt: skip
    channels = next(f.shape[0] for f in opened.contract.fields if f.name == "lidar_bev")
    bevkd("train-student", "--config", "configs/demo/student_cmkd.yaml", *grid,
          "--set", f"student.store={store}", "--set", f"train.epochs={args.epochs}",
          "--set", f"student.bev_channels={channels}",
          "--set", f"train.out_dir={OUT / 'student_cmkd'}")  # fmt: skip


if __name__ == "__main__":
    main()
