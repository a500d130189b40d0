"""Teacher store I/O: size and error per codec, write speed, random reads vs plain .npy.

    .venv/bin/python benchmarks/store_io.py [--quick] [--frames N] [--workdir DIR]

Realistic synthetic teacher fields (:mod:`bevkd.storage.testing`: ReLU features ~75% exact
zeros, embeddings ~5% non-zero, heatmap logits ~-9 with Gaussian peaks, dense regression)
at the demo size (BEV 128x64x64, label embedding 128x64x64, heatmap and regression
10x64x64) and, unless --quick, a nuScenes-like size (256x128x128). For each codec: stored
bytes per frame, ratio vs fp32, measured error, write MB/s (fp32-equivalent input). For the
default codecs: random-order reads (frames/s) with 0 and 2 DataLoader workers, warm (page
cache) and cold (files evicted with posix_fadvise), against the same decoded bytes stored
as one .npy per field per frame, read in the same run. Targets: defaults >= 8x smaller
than fp32; random reads >= 50% of the raw .npy rate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bevkd.datasets.cached import StoreFrames
from bevkd.pipeline.geometry import BEVGrid
from bevkd.storage.reader import open_store
from bevkd.storage.testing import (
    demo_contract,
    synthetic_frame,
    synthetic_frame_list,
    synthetic_provenance,
)
from bevkd.storage.writer import StoreWriter

CODECS = ("fp32", "fp16", "bf16", "bitround-10", "uint8", "default")
SIZES = {
    "demo 64x64 (BEV 128ch)": dict(
        grid=BEVGrid(-25.6, -25.6, 25.6, 25.6, 0.8), bev_channels=128, embedding_channels=128
    ),
    "nuScenes-like 128x128 (BEV 256ch)": dict(
        grid=BEVGrid(-51.2, -51.2, 51.2, 51.2, 0.8), bev_channels=256, embedding_channels=256
    ),
}
SHARD = 8


def _contract(size: dict, codec: str):
    kinds = ("bev_feature", "embedding", "heatmap", "box_regression")
    return demo_contract(**size, codecs=None if codec == "default" else dict.fromkeys(kinds, codec))


def write(url: str, contract, frames: list) -> float:
    """Write ``frames`` (labeled: every field); return seconds spent in write_shard."""
    shutil.rmtree(url, ignore_errors=True)
    n = len(frames)
    meta = synthetic_frame_list(n, labeled_every=1)
    writer = StoreWriter.create(url, contract, meta["tokens"], meta["scenes"], meta["splits"], meta["has_label"],
                                synthetic_provenance(meta["tokens"]), shard_size=SHARD)  # fmt: skip
    spent = 0.0
    for shard in range(writer.num_shards):
        rows = list(writer.shard_frames(shard))
        arrays = {
            s.name: np.stack([frames[i][0][s.name] for i in rows])
            for s in contract.fields
            if s.kind != "boxes"
        }
        boxes = {
            s.name: [frames[i][1][s.name] for i in rows]
            for s in contract.fields
            if s.kind == "boxes"
        }
        start = time.perf_counter()
        writer.write_shard(shard, arrays, boxes)
        spent += time.perf_counter() - start
    writer.finalize()
    return spent


def codec_table(name: str, size: dict, n: int, workdir: Path) -> str:
    """Write one store per codec; print sizes and errors; return the default store's URL."""
    contract = _contract(size, "default")
    frames = [synthetic_frame(contract, i) for i in range(n)]
    fp32_bytes = sum(int(np.prod(s.shape)) * 4 for s in contract.fields if s.kind != "boxes")
    print(f"\n== {name}: {fp32_bytes / 1e6:.2f} MB/frame of fp32 teacher fields, {n} frames ==")
    print(
        f"{'codec':<12} {'field':<11} {'KB/frame':>9} {'vs fp32':>8} {'max err':>9} {'rel rms':>8} {'max/|max|':>9}"
    )
    default_url = ""
    for codec in CODECS:
        url = str(workdir / f"{name.split()[0]}_{codec}.zarr")
        seconds = write(url, _contract(size, codec), frames)
        store = open_store(url)
        total = 0.0
        for spec in store.contract.fields:
            if spec.kind == "boxes":
                continue
            got, err = store.attrs["stored"][spec.name], store.attrs["codec_error"][spec.name]
            total += got["bytes_per_frame"]
            print(f"{codec:<12} {spec.name:<11} {got['bytes_per_frame'] / 1024:>9.1f} {got['ratio_vs_fp32']:>7.1f}x "
                  f"{err['max_abs']:>9.2e} {err['rel_rms']:>8.1e} {err['max_rel']:>9.1e}")  # fmt: skip
        print(f"{codec:<12} {'TOTAL':<11} {total / 1024:>9.1f} {fp32_bytes / total:>7.1f}x   "
              f"write {fp32_bytes * n / 1e6 / seconds:.0f} MB/s ({n / seconds:.1f} frames/s)")  # fmt: skip
        if codec == "default":
            default_url = url
    return default_url


class NpyFrames(torch.utils.data.Dataset):
    """The same decoded float32 fields as one .npy per field per frame."""

    def __init__(self, root: Path, n: int, names: list[str]):
        self.root, self.n, self.names = root, n, names

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.load(self.root / f"{i:05d}_{k}.npy")) for k in self.names}


def _evict(root: Path) -> None:
    """Drop the files' pages from the page cache (clean pages only, hence the sync)."""
    os.sync()
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _rate(dataset: torch.utils.data.Dataset, workers: int, epochs: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for item in loader:
            count += 1
            assert item
    return count / (time.perf_counter() - start)


def read_table(url: str, n: int, workdir: Path, epochs: int) -> None:
    store = open_store(url)
    names = [s.name for s in store.contract.fields if s.kind != "boxes"]
    raw = workdir / "raw_npy"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir()
    for i in range(n):
        for k, v in store.read_frame(i, names).items():
            np.save(raw / f"{i:05d}_{k}.npy", v)
    print(f"random-order reads of {n} frames ({', '.join(names)}), frames/s:")
    print(f"{'workers':>7} {'cache':<5} {'store':>8} {'raw .npy':>9} {'store/raw':>9}")
    for workers in (0, 2):
        for cache in ("warm", "cold"):
            rates = []
            for dataset, root in (
                (StoreFrames(url, names), Path(url)),
                (NpyFrames(raw, n, names), raw),
            ):
                if cache == "cold":
                    _evict(root)
                else:
                    _rate(dataset, 0, 1)  # fill the page cache
                rates.append(_rate(dataset, workers, 1 if cache == "cold" else epochs))
            print(
                f"{workers:>7} {cache:<5} {rates[0]:>8.1f} {rates[1]:>9.1f} {rates[0] / rates[1]:>8.0%}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="demo size only, fewer frames")
    parser.add_argument(
        "--frames", type=int, default=0, help="frames per store (default 32, --quick 16)"
    )
    parser.add_argument(
        "--workdir", default="", help="where to write the stores (default: a temp dir)"
    )
    args = parser.parse_args()
    n = args.frames or (16 if args.quick else 32)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bevkd_store_io_"))
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    try:
        for name, size in list(SIZES.items())[: 1 if args.quick else None]:
            frames = n if name.startswith("demo") else max(n // 2, SHARD)
            url = codec_table(name, size, frames, workdir)
            read_table(url, frames, workdir, epochs=2 if args.quick else 3)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
