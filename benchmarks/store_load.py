"""Many readers at once: how many reader processes one GPU student (about 10 frames/s) needs,
from local disk and from S3, with and without injected faults.

    .venv/bin/python benchmarks/store_load.py [--quick] [--seconds S] [--frames N] [--workdir DIR]
                                              [--report-only]

Two stores of real-scale synthetic teacher fields (:mod:`bevkd.storage.testing`, BEV grid
128x128): ``lidar_bev`` 256x128x128 at ``uint8`` and at ``pca-8``, ``heatmap`` and
``regression`` 10x128x128 at their default codecs, and demo_contract's ``label_bev`` and
``boxes``; written once under ``--workdir`` (reused while finalized with the same contract),
then copied to a ``moto_server`` started here (:func:`bevkd.storage.copy.copy_store`).

Each configuration starts N reader processes (spawn), each iterating a DataLoader with W
workers (0: in the reader; remote stores: forkserver, as :func:`loader_kwargs` picks) over
seeded random frame indices, batch 1, reading what a CMKD student reads (``lidar_bev``,
``heatmap``, ``regression``, ``boxes``) with the real reader (``read_frame``). Each frame's
read is timed where it is read and returned with it. The readers start together after one
frame each (worker start-up and store opening are not measured) and read for ``--seconds``.
Sources: local disk (page cache warm: every file read once first), S3 (moto, direct), and S3
through :class:`bevkd.storage.faults.FaultProxy` at 5% mixed faults, under bevkd's default
retry policy. Every reading process sends back its retry counters (``STATS``).

Prints markdown tables and writes them, with the command line, date and machine, into the
``store-load`` block of ``docs/reliability.md``; the raw numbers go to
``benchmarks/runs/store_load.json`` (``--report-only`` rewrites the block from it). Exits
non-zero if any frame failed to read.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from queue import Empty
from typing import Any

import torch

from bevkd.datasets.cached import StoreFrames, loader_kwargs
from bevkd.pipeline.geometry import BEVGrid
from bevkd.storage.retry import STATS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_blocks import write_block
from load_report import answer_lines, summarize, table_lines
from perf_report import REPO, cores, stamp

READ_FIELDS = ("lidar_bev", "heatmap", "regression", "boxes")
CODECS = ("uint8", "pca-8")
FAULT_RATE = 0.05
BUCKET = "bevkd-bench"
SIZES = {  # demo_contract keywords
    "full": dict(grid=BEVGrid(-51.2, -51.2, 51.2, 51.2, 0.8), bev_channels=256, embedding_channels=256),
    "quick": dict(),  # the demo size: 128x64x64
}  # fmt: skip
START_TIMEOUT_S = 300.0  # readers that do not start within this are reported, not waited for
# A reader still reading this long after its span has hung (bevkd's default retry deadline
# is 300 s per request, so a request that keeps failing ends well before).
HANG_S = 420.0


def matrix(quick: bool) -> list[dict[str, Any]]:
    """The configurations: source, lidar_bev codec, reader processes N, workers W each."""
    if quick:
        cells = [("local", "uint8", 1, 0), ("local", "pca-8", 2, 0), ("s3", "uint8", 1, 2),
                 ("s3+faults", "uint8", 2, 2)]  # fmt: skip
    else:
        cells = [("local", "uint8", n, w) for w in (0, 2) for n in (1, 2, 4)]
        cells += [("local", "pca-8", 1, 2)]
        for source in ("s3", "s3+faults"):
            cells += [(source, "uint8", n, 2) for n in (1, 2, 4)]
            cells += [(source, "uint8", 1, 4), (source, "pca-8", 1, 2)]
    return [dict(zip(("source", "codec", "readers", "workers"), c, strict=True)) for c in cells]


# --- the stores ---------------------------------------------------------------------------


def ensure_store(path: Path, codec: str, size: dict, frames: int) -> str:
    """A finalized local store of ``frames`` synthetic frames with ``lidar_bev`` at ``codec``
    at ``path``: the one there if it matches, else written anew."""
    from bevkd.storage.reader import open_store
    from bevkd.storage.schema import StoreError
    from bevkd.storage.testing import demo_contract, write_store

    contract = demo_contract(**size, codecs={"bev_feature": codec})
    try:
        found = open_store(str(path))
        if found.finalized and found.num_frames == frames and found.contract == contract:
            return str(path)
    except (StoreError, OSError):
        pass
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    write_store(str(path), contract, n_frames=frames, shard_size=8)
    print(f"  wrote {path} ({frames} frames) in {time.perf_counter() - start:.0f} s", flush=True)
    return str(path)


def warm_page_cache(path: str) -> int:
    """Read every file of a local store once; return the bytes read."""
    return sum(len(p.read_bytes()) for p in Path(path).rglob("*") if p.is_file())


# --- the readers (run in spawned processes and their DataLoader workers) -------------------


class TimedFrames(torch.utils.data.Dataset):
    """Frames of a store, each with its read time (s) measured in the process that read it,
    that process's id and retry counters, and the error, if the read failed (then no frame)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None):
        self.frames = StoreFrames(url, READ_FIELDS, storage_options)
        self.url = url

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            frame, error = self.frames[index], ""
        except Exception as exc:  # counted and reported by the benchmark, which then fails
            frame, error = {}, f"frame {index} of {self.url}: {type(exc).__name__}: {exc}"
        return {"frame": frame, "latency_s": time.perf_counter() - start, "pid": os.getpid(),
                "stats": STATS.snapshot(), "error": error}  # fmt: skip


def reader(rank: int, url: str, options: dict[str, Any] | None, workers: int, seconds: float,
           seed: int, start: Any, results: Any) -> None:  # fmt: skip
    """One reader process: read one frame (start-up), wait for the others at ``start`` (a
    Barrier), read random frames for ``seconds``, put what it measured on ``results``."""
    torch.set_num_threads(1)
    out: dict[str, Any] = {"rank": rank, "frames": 0, "wall_s": 0.0, "latencies_s": [],
                           "stats": [], "errors": []}  # fmt: skip
    stats: dict[int, dict[str, int]] = {}
    items = None
    try:
        began = time.perf_counter()
        dataset = TimedFrames(url, options)
        generator = torch.Generator().manual_seed(seed * 1000 + rank)
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10**8,
                                                 generator=generator)  # fmt: skip
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=sampler,
                                             **loader_kwargs(url, workers))  # fmt: skip
        items = iter(loader)
        first = next(items)
        out["startup_s"] = time.perf_counter() - began
        stats[int(first["pid"])] = {k: int(v) for k, v in first["stats"].items()}
        if first["error"][0]:
            out["errors"].append(first["error"][0])
        start.wait(timeout=START_TIMEOUT_S)
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            item = next(items)
            stats[int(item["pid"])] = {k: int(v) for k, v in item["stats"].items()}
            if item["error"][0]:
                out["errors"].append(item["error"][0])
                continue
            out["frames"] += 1
            out["latencies_s"].append(round(float(item["latency_s"]), 5))  # 10 us
        out["wall_s"] = time.perf_counter() - began
    except Exception as exc:  # a reader that cannot start or stops: reported, never hidden
        start.abort()
        out["errors"].append(f"reader {rank}: {type(exc).__name__}: {exc}")
    finally:
        del items  # shuts the workers down before the process reports
        stats[os.getpid()] = STATS.snapshot()  # the reader's own requests (it opens the store too)
        out["stats"] = list(stats.values())
        results.put(out)


def run_config(this: Any, config: dict[str, Any], url: str, options: dict[str, Any] | None,
               seconds: float, seed: int) -> list[dict[str, Any]]:  # fmt: skip
    """Run ``config``'s readers (``this``: this module, imported by name so the spawned
    processes find :func:`reader`); return each reader's results."""
    ctx = mp.get_context("spawn")
    n = config["readers"]
    start, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=this.reader, args=(rank, url, options, config["workers"],
                                                   seconds, seed, start, results))
             for rank in range(n)]  # fmt: skip
    for proc in procs:
        proc.start()
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + START_TIMEOUT_S + seconds + HANG_S
    quiet = 0.0  # seconds the queue has stayed empty since a reader exited without reporting
    while len(got) < n:
        try:
            got.append(results.get(timeout=1.0))
            continue
        except Empty:
            pass
        done = {r["rank"] for r in got}
        dead = [r for r, p in enumerate(procs) if r not in done and p.exitcode is not None]
        quiet = quiet + 1.0 if dead else 0.0
        if time.monotonic() > deadline or quiet > 10:
            for r in sorted(set(range(n)) - done):
                why = (f"exited with code {procs[r].exitcode} without a result" if r in dead else
                       f"no result {START_TIMEOUT_S + seconds + HANG_S:.0f} s after it started; hung")  # fmt: skip
                got.append({"rank": r, "frames": 0, "wall_s": 0.0, "latencies_s": [], "stats": [],
                            "errors": [f"reader {r}: {why}"]})  # fmt: skip
    for proc in procs:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    return sorted(got, key=lambda r: r["rank"])


# --- the run ------------------------------------------------------------------------------


def measure(this: Any, configs: list[dict[str, Any]], local: dict[str, str],
            seconds: float, seed: int) -> list[dict[str, Any]]:  # fmt: skip
    """Every configuration against its source; one summarized row each."""
    from bevkd.storage.copy import copy_store
    from bevkd.storage.faults import FaultPlan, FaultProxy, moto_s3

    rows: list[dict[str, Any]] = []
    for path in local.values():
        warm_page_cache(path)
    remote = any(c["source"] != "local" for c in configs)
    with moto_s3(BUCKET) if remote else nullcontext({}) as s3:
        s3_urls = {}
        for codec, path in local.items():
            if remote:
                s3_urls[codec] = f"s3://{BUCKET}/store_load/{Path(path).name}"
                began = time.perf_counter()
                copy_store(path, s3_urls[codec], None, s3)
                print(f"  copied {path} to {s3_urls[codec]} in {time.perf_counter() - began:.0f} s", flush=True)  # fmt: skip
        faulty = any(c["source"] == "s3+faults" for c in configs)
        with FaultProxy(s3["endpoint_url"], FaultPlan(rate=FAULT_RATE, seed=seed)) if faulty else nullcontext() as proxy:  # fmt: skip
            for config in configs:
                source, codec = config["source"], config["codec"]
                url = local[codec] if source == "local" else s3_urls[codec]
                options = None if source == "local" else s3
                if source == "s3+faults":
                    options = {**s3, "endpoint_url": proxy.endpoint}
                    before = (proxy.counts["requests"], proxy.injected())
                began = time.perf_counter()
                readers = run_config(this, config, url, options, seconds, seed)
                counts = None
                if source == "s3+faults":
                    counts = {"requests": proxy.counts["requests"] - before[0],
                              "injected": proxy.injected() - before[1]}  # fmt: skip
                row = summarize(config, readers, counts)
                row["config_s"] = time.perf_counter() - began
                row["readers_raw"] = readers
                rows.append(row)
                print(f"  {source} {codec} N={config['readers']} W={config['workers']}: "
                      f"{row['fps_total']:.1f} frames/s ({row['fps_per_reader']:.1f} per reader), "
                      f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, "
                      f"{row['errors']} errors [{row['config_s']:.0f} s]", flush=True)  # fmt: skip
                for message in row["error_messages"]:
                    print(f"    error: {message}", flush=True)
    return rows


def report(rows: list[dict[str, Any]], frames: int, seconds: float, quick: bool,
           ncores: int) -> list[str]:  # fmt: skip
    """The block's markdown: what was read, the table, the answer."""
    size = "demo-size (BEV 128x64x64)" if quick else "real-scale (BEV 256x128x128)"
    lines = [f"{size} synthetic teacher fields, {frames} frames per store; each reader reads "
             f"`{'`, `'.join(READ_FIELDS)}` of random frames (batch 1) for {seconds:g} s after "
             "all readers started. Latency: one frame's `read_frame`, timed in the process that "
             "read it. Local: page cache warm. S3: moto on loopback; with faults, through "
             f"`FaultProxy` at {FAULT_RATE:.0%} mixed faults, bevkd's default retry policy. "
             "Retries: bevkd's retries and re-reads (`STATS`, summed over every reading process) "
             "per 1,000 objects asked for.", ""]  # fmt: skip
    lines += table_lines(rows)
    faulty = [r for r in rows if "proxy" in r]
    if wire := sum(r["proxy"]["requests"] for r in faulty):
        asked = sum(r["stats"]["requests"] for r in faulty)
        lines += ["", f"On the wire (proxy), {wire / asked:.2f} requests per bevkd request: s3fs "
                  "(`max_concurrency` 10 by default) sends a HEAD for the size before every "
                  "whole-object GET, and botocore retries some faults itself."]  # fmt: skip
    return [*lines, "", *answer_lines(rows, ncores)]


def no_nan(value: Any) -> Any:
    """``value`` with every NaN float as None (JSON has no NaN)."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="demo-size stores of 8 frames, N in {1, 2}, a few seconds each")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="measured seconds per configuration (default 12, --quick 3)")  # fmt: skip
    parser.add_argument("--frames", type=int, default=0, help="frames per store (default 40, --quick 8)")  # fmt: skip
    parser.add_argument("--workdir", default=str(REPO / "work" / "bench" / "store_load"), help="where the local stores are kept")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--doc", default=str(REPO / "docs" / "reliability.md"))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "runs" / "store_load.json"))
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the block from --json (what a run measured); read nothing")  # fmt: skip
    args = parser.parse_args()
    began = time.perf_counter()
    if args.report_only:
        raw = json.loads(Path(args.json).read_text())
    else:
        raw = run(args)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(no_nan(raw), indent=1) + "\n")
    rows = raw["rows"]
    lines = report(rows, raw["frames"], raw["seconds"], raw.get("quick", False), raw["cores"])
    print("\n".join(["", *lines]), flush=True)
    # The stamp of the run that measured (a --report-only rewrite keeps it).
    write_block(Path(args.doc), "store-load", "\n".join([raw["command"], "", *lines]) + "\n",
                marks=("begin", "end"), title="# What a store promises, and the tests that hold it to it")  # fmt: skip
    where = args.doc if args.report_only else f"{args.doc} and {args.json}"
    print(f"[store-load] written to {where} in {time.perf_counter() - began:.0f} s")
    if errors := sum(r["errors"] for r in rows):
        sys.exit(f"store-load: {errors} frame reads failed (messages above and in {args.json})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Write (or find) the stores, measure every configuration; what the JSON keeps."""
    frames = args.frames or (8 if args.quick else 40)
    seconds = args.seconds or (3.0 if args.quick else 12.0)
    workdir = Path(args.workdir) / ("quick" if args.quick else "full")
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    import store_load as this  # by name, so spawned readers and their workers can import it

    size = SIZES["quick" if args.quick else "full"]
    local = {c: ensure_store(workdir / f"lidar_bev_{c}.zarr", c, size, frames) for c in CODECS}
    rows = measure(this, matrix(args.quick), local, seconds, args.seed)
    return {"command": stamp(), "quick": args.quick, "frames": frames, "seconds": seconds,
            "cores": cores(), "wall_s": time.perf_counter() - began, "rows": rows}  # fmt: skip


if __name__ == "__main__":
    main()
