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

Then, for every finished store of ``--stores`` (default: the demo stores, where they exist),
what ``bevkd store info`` records for it: each field's codec, KB/frame on disk, ratio vs fp32
and measured error, on the real teachers' outputs. Prints markdown tables and writes them, with
the command line, date and machine, into the ``store-io`` block of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_report import table, write_performance

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
DEMO_STORES = ("work/demo/teacher_lidar.zarr", "work/demo/teacher.zarr")


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


def codec_rows(name: str, size: dict, n: int, workdir: Path) -> tuple[list[dict[str, Any]], str]:
    """Write one store per codec; return one row per (codec, field), with a ``TOTAL`` row per
    codec (KB/frame, ratio vs fp32, write MB/s of fp32 input and frames/s), and the default
    store's URL."""
    contract = _contract(size, "default")
    frames = [synthetic_frame(contract, i) for i in range(n)]
    fp32_bytes = sum(int(np.prod(s.shape)) * 4 for s in contract.fields if s.kind != "boxes")
    rows: list[dict[str, Any]] = []
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
            rows.append({"codec": codec, "field": spec.name, "kb": got["bytes_per_frame"] / 1024,
                         "ratio": got["ratio_vs_fp32"], "max_abs": err["max_abs"],
                         "rel_rms": err["rel_rms"], "max_rel": err["max_rel"]})  # fmt: skip
        rows.append({"codec": codec, "field": "TOTAL", "kb": total / 1024,
                     "ratio": fp32_bytes / total, "fp32_mb": fp32_bytes / 1e6, "frames": n,
                     "write_mb_s": fp32_bytes * n / 1e6 / seconds, "frames_s": n / seconds})  # fmt: skip
        if codec == "default":
            default_url = url
    return rows, default_url


def codec_lines(name: str, rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: per codec the totals (size, ratio, the BEV feature's error, write speed), then
    every field."""
    totals = [r for r in rows if r["field"] == "TOTAL"]
    fields = [r for r in rows if r["field"] != "TOTAL"]
    bev = {r["codec"]: r for r in fields if r["field"] == "lidar_bev"}
    first = totals[0]
    lines = [f"### {name}: {first['fp32_mb']:.2f} MB/frame of fp32 teacher fields, "
             f"{first['frames']} frames", ""]  # fmt: skip
    lines += table(
        ["codec", "KB/frame", "vs fp32", "lidar_bev rel. RMS error", "write MB/s (fp32 input)",
         "write frames/s"],
        [[t["codec"], f"{t['kb']:.1f}", f"{t['ratio']:.1f}x",
          f"{bev[t['codec']]['rel_rms']:.1e}" if t["codec"] in bev else "-",
          f"{t['write_mb_s']:.0f}", f"{t['frames_s']:.1f}"] for t in totals],
    )  # fmt: skip
    if (default := next((t for t in totals if t["codec"] == "default"), None)) is not None:
        met = "met" if default["ratio"] >= 8 else "NOT met"
        lines += ["", f"Default codecs: {default['ratio']:.1f}x smaller than fp32 (goal >= 8x: {met})."]  # fmt: skip
    lines += ["", "Per field:", ""]
    lines += table(
        ["codec", "field", "KB/frame", "vs fp32", "max abs error", "rel. RMS error", "max error / largest value"],
        [[r["codec"], r["field"], f"{r['kb']:.1f}", f"{r['ratio']:.1f}x", f"{r['max_abs']:.2e}",
          f"{r['rel_rms']:.1e}", f"{r['max_rel']:.1e}"] for r in fields],
    )  # fmt: skip
    return lines


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


def read_rates(
    url: str, n: int, workdir: Path, epochs: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """Random-order reads of the store at ``url`` and of the same decoded bytes as .npy files:
    the fields read, and one row per (workers, page cache) with both rates in frames/s."""
    store = open_store(url)
    names = [s.name for s in store.contract.fields if s.kind != "boxes"]
    raw = workdir / "raw_npy"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir()
    for i in range(n):
        for k, v in store.read_frame(i, names).items():
            np.save(raw / f"{i:05d}_{k}.npy", v)
    rows = []
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
            rows.append({"workers": workers, "cache": cache, "store": rates[0], "raw": rates[1]})
    return names, rows


def read_lines(n: int, names: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: the read rates, store against raw .npy (goal: >= 50% of raw)."""
    lines = [f"Random-order reads of {n} frames of the default store ({', '.join(names)}), "
             "frames/s, against the same decoded bytes as one .npy per field per frame "
             "(cold: the files' pages evicted first; goal: store >= 50% of raw):", ""]  # fmt: skip
    return lines + table(
        ["DataLoader workers", "page cache", "store", "raw .npy", "store / raw"],
        [[r["workers"], r["cache"], f"{r['store']:.1f}", f"{r['raw']:.1f}",
          f"{r['store'] / r['raw']:.0%}"] for r in rows],
    )  # fmt: skip


def store_lines(url: str) -> list[str]:
    """Markdown: what ``bevkd store info`` records for the finished store at ``url``: per field
    its codec, KB/frame on disk, ratio vs fp32 and measured error, and the totals."""
    from bevkd.storage.info import field_sizes

    store = open_store(url)
    sizes, errors = field_sizes(store), store.attrs.get("codec_error", {})
    rows, stored, raw = [], 0.0, 0.0
    for spec in store.contract.fields:
        size, err = sizes.get(spec.name, {}), errors.get(spec.name) or {}
        per_frame, ratio = size.get("bytes_per_frame", 0.0), size.get("ratio_vs_fp32")
        stored += per_frame
        raw += per_frame * ratio if ratio else 0.0
        rows.append([f"`{spec.name}`", spec.codec, "x".join(map(str, spec.shape)),
                     f"{per_frame / 1024:.1f}", f"{ratio:.1f}x" if ratio else "-",
                     f"{err['max_abs']:.3g}" if err else "-",
                     f"{err['rel_rms']:.2g}" if err else "-"])  # fmt: skip
    total = sum(s.get("bytes", 0) for s in sizes.values())
    lines = [f"`{url}` ({store.num_frames} frames; `bevkd store info {url}`):", ""]
    lines += table(["field", "codec", "shape", "KB/frame", "vs fp32", "max abs error", "rel. RMS error"], rows)  # fmt: skip
    ratio_text = f", {raw / stored:.1f}x smaller than fp32" if stored and raw else ""
    lines += ["", f"All fields: {stored / 1024:.0f} KB/frame{ratio_text}; {total / 1e6:.1f} MB "
              "of field data on disk."]  # fmt: skip
    return lines


def real_stores(urls: list[str]) -> list[str]:
    """:func:`store_lines` of every finished store of ``urls``; the others are named."""
    from bevkd.storage.schema import StoreError

    lines: list[str] = []
    for url in urls:
        try:
            finished = open_store(url).finalized
        except (StoreError, OSError, FileNotFoundError):
            finished = False
        lines += ["", *(store_lines(url) if finished else [f"`{url}`: no finished store here."])]
    if lines:
        lines = ["", "### Stores of trained teachers", *lines]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="demo size only, fewer frames")
    parser.add_argument(
        "--frames", type=int, default=0, help="frames per store (default 32, --quick 16)"
    )
    parser.add_argument(
        "--workdir", default="", help="where to write the stores (default: a temp dir)"
    )
    parser.add_argument("--stores", nargs="*", default=list(DEMO_STORES),
                        help="finished stores whose recorded sizes and errors to report")  # fmt: skip
    args = parser.parse_args()
    n = args.frames or (16 if args.quick else 32)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bevkd_store_io_"))
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    lines: list[str] = [
        "Synthetic teacher-like fields (`bevkd.storage.testing`), one store per codec."
    ]
    try:
        for name, size in list(SIZES.items())[: 1 if args.quick else None]:
            frames = n if name.startswith("demo") else max(n // 2, SHARD)
            rows, url = codec_rows(name, size, frames, workdir)
            part = ["", *codec_lines(name, rows), ""]
            names, rates = read_rates(url, frames, workdir, epochs=2 if args.quick else 3)
            part += read_lines(frames, names, rates)
            print("\n".join(part), flush=True)
            lines += part
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    stores = real_stores(args.stores)
    print("\n".join(stores))
    write_performance("store-io", [*lines, *stores])


if __name__ == "__main__":
    main()
