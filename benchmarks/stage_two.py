"""Stage two, cached vs online: the same student, recipe and batch size, its teacher targets read
from the store or computed by the teachers inside every step (``train.targets=online``).

    .venv/bin/python benchmarks/stage_two.py [--cases cmkd simdistill cmkd-centerpoint]
                                             [--rounds 3] [--steps 6] [--warmup 2] [--fresh]

Cases:

- ``cmkd``: the demo CMKD student against the demo LiDAR teacher (0.2 m voxels, 1 sweep).
- ``simdistill``: the demo SimDistill student against the demo fusion teacher (which loads its
  own six camera images and points every step).
- ``cmkd-centerpoint``: the same CMKD student against a LiDAR teacher of CenterPoint's size in
  voxels: 0.1 m x 0.1 m x 0.2 m voxels, 10 sweeps (about 300k points and 90k voxels a frame
  on the demo world, nuScenes-like), SECOND channels 16-32-64-128, two SubMConv3d layers a
  stage, down to the same 0.8 m BEV grid. Its weights are seeded random (a forward costs the
  same trained or not); its store (the demo's train frames) is cached here on first use.
- ``cmkd-imported``: the same CMKD student against an imported CenterPoint
  (``model.kind: centerpoint``, what ``bevkd teacher import`` writes) of mmdet3d's nuScenes
  voxel-0.1 architecture at full size: 0.1 m voxels over ±51.2 m, sparse shape 41 x 1024 x
  1024, the basic-block SparseEncoder to 256 channels, SECOND 128/256 x 5 layers, SECONDFPN,
  six task heads, circle NMS; 10 sweeps. Seeded random weights; the student runs on the same
  0.8 m grid over ±51.2 m (128 x 128 cells).

Each (case, path, round) runs in its own process, so its memory is that process's and its
DataLoader workers' alone. **Peak, measured steps**: the peak over the measured steps, after a
reset at the first of them (on CUDA ``torch.cuda.max_memory_allocated``, on CPU the resident
set's high-water mark, Linux VmHWM reset through ``/proc/self/clear_refs``; where that reset is
not available, the lifetime ``ru_maxrss``): teachers, store reader and all that is resident
then. **Lifetime peak**: the process's peak from its start, the build included (the larger of
the peak before that reset and the one after). **Workers**: the DataLoader worker processes
(where the online path loads its teachers' inputs), summed at the end of the measured steps:
their private memory (pages no other process shares: what they add to the main process, a lower
bound) and their peak RSS (VmHWM, which counts the pages a forked worker shares with the main
process once per worker: an upper bound). On CPU a process holds ~0.9 GiB before its first step
(torch, the student, its optimizer, the teachers' weights), so the table also gives the peak the
measured steps add above the process's resident set when they start
(``student_step.PeakMemory``): the activations, the part a GPU's memory is sized by. The
cached/online memory ratio compares the measured-steps peak plus the workers' private memory on
CPU, and CUDA allocations on CUDA (the workers' host memory given beside). A step is what
:func:`bevkd.stages.loop.fit` does: the next batch from a DataLoader with the config's workers
(the wait for it), the forward with the recipe's loss (online: the teachers first), backward,
clipping, the optimizer step; median (min-max) over ``--steps`` after ``--warmup``. Paths
alternate within each round (the order flipping every round) so drift on a shared machine hits
both alike. Results are kept in ``work/bench/stage_two/runs.json``: a rerun measures only what
is missing (``--fresh`` starts over). Prints per case the two step times, samples/s, peak
memory, the ratios against the goals (cached >= 1.5x faster, <= 0.6x the peak memory of online)
and the teachers' share of the online step; writes the same table into ``docs/performance.md``.
Then, with the trained demo teachers, how far the two paths' targets are apart on the same
frames (:func:`agreement`): with no augmentation, the codec's error; with the configs'
augmentation, also the teacher's own lack of equivariance.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

OUT = Path("work/bench/stage_two")
CP = OUT / "centerpoint"
# A CenterPoint-sized voxel teacher on the demo's 0.8 m BEV grid (0.1 m x 8).
CENTERPOINT_GRID = ["grid.voxel_size=[0.1, 0.1, 0.2]", "grid.bev_stride=8"]
CENTERPOINT_TEACHER = [
    *CENTERPOINT_GRID,
    "data.lidar_sweeps=10",
    "model.kind=lidar",
    "model.sparse_channels=[16, 32, 64, 128, 128]",
    "model.sparse_layers=2",
    "model.max_voxels=240000",
]
IMPORTED = OUT / "imported"
# mmdet3d's nuScenes voxel-0.1 CenterPoint grid (the student shares it: 128 x 128 cells)
IMPORTED_GRID = [
    "grid.point_cloud_range=[-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]",
    "grid.voxel_size=[0.1, 0.1, 0.2]",
    "grid.bev_stride=8",
]
CASES: dict[str, dict[str, Any]] = {
    "cmkd": {
        "config": "configs/demo/student_cmkd.yaml",
        "set": [],
        "teacher": "demo LiDAR teacher (0.2 m voxels, 1 sweep)",
    },
    "simdistill": {
        "config": "configs/demo/student_simdistill.yaml",
        "set": [],
        "teacher": "demo fusion teacher (6 cameras + LiDAR)",
    },
    "cmkd-centerpoint": {
        "config": "configs/demo/student_cmkd.yaml",
        "set": [*CENTERPOINT_GRID, f"student.store={CP / 'store.zarr'}"],
        "teacher": "CenterPoint-sized LiDAR teacher (0.1 m voxels, 10 sweeps)",
    },
    "cmkd-imported": {
        "config": "configs/demo/student_cmkd.yaml",
        "set": [
            *IMPORTED_GRID,
            f"student.store={IMPORTED / 'store.zarr'}",
            "student.bev_channels=128",
        ],
        "teacher": "imported CenterPoint, mmdet3d nuScenes voxel-0.1 architecture, 10 sweeps",
    },
}


# ------------------------------------------------------------------------------------------
# One measured run (a child process)
# ------------------------------------------------------------------------------------------


class LifetimePeak:
    """``student_step.PeakMemory`` (which ``time_steps`` resets at the first measured step and
    reads at the end), keeping the peak from before that reset: the process's lifetime peak."""

    def __init__(self, memory: Any) -> None:
        self.memory, self.before = memory, 0
        self.what = memory.what

    def peak_bytes(self) -> int:
        """The peak since the last reset (CUDA allocations, or the resident set)."""
        if self.memory.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.memory.device))
        return int(self.memory._rss_peak())

    def start(self) -> None:
        self.before = self.peak_bytes()
        self.memory.start()

    def peak_mib(self) -> float:
        return float(self.memory.peak_mib())

    def lifetime_mib(self) -> float:
        return max(self.before, self.peak_bytes()) / 2**20

    def label(self) -> str:
        if self.memory.device.type == "cuda":
            return "CUDA max_memory_allocated"
        if self.memory.hwm:
            return "process peak RSS (VmHWM)"
        return "process peak RSS (lifetime ru_maxrss: no VmHWM reset here)"


def process_memory(pid: int, proc: Path = Path("/proc")) -> dict[str, int]:
    """Bytes of process ``pid``: ``VmHWM`` (peak resident set) and ``VmRSS`` from its
    ``status``; ``Pss`` and ``Private`` (Private_Clean + Private_Dirty) from its
    ``smaps_rollup``. A field the kernel does not give is 0."""
    out = dict.fromkeys(("VmHWM", "VmRSS", "Pss", "Private"), 0)
    status = (proc / str(pid) / "status").read_text()
    for key in ("VmHWM", "VmRSS"):
        if found := re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE):
            out[key] = int(found.group(1)) * 1024
    rollup = proc / str(pid) / "smaps_rollup"
    if rollup.is_file():
        text = rollup.read_text()
        for key in ("Pss", "Private_Clean", "Private_Dirty"):
            if found := re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE):
                out["Private" if key.startswith("Private") else key] += int(found.group(1)) * 1024
    return out


def workers_memory(pids: Iterable[int], proc: Path = Path("/proc")) -> dict[str, float]:
    """The DataLoader workers' memory in MiB, summed over ``pids``: ``count`` (those read; a
    worker that has exited is skipped), ``private`` (what they add to the main process: a lower
    bound), ``pss``, ``rss`` and ``peak_rss`` (VmHWM: counts pages shared with the main process
    once per worker, an upper bound)."""
    total = {"count": 0.0, "private": 0.0, "pss": 0.0, "rss": 0.0, "peak_rss": 0.0}
    for pid in pids:
        try:
            got = process_memory(pid, proc)
        except FileNotFoundError:
            continue
        total["count"] += 1
        for key, field in (("private", "Private"), ("pss", "Pss"), ("rss", "VmRSS"),
                           ("peak_rss", "VmHWM")):  # fmt: skip
            total[key] += got[field] / 2**20
    return total


def worker_pids() -> list[int]:
    """This process's children: in a measuring process, its DataLoader workers alone."""
    import psutil

    return [child.pid for child in psutil.Process().children(recursive=True)]


def measure(case: str, path: str, steps: int, warmup: int, threads: int) -> dict[str, Any]:
    """Build the case's objective and loader as ``train-student`` does, with ``train.targets``
    set to ``path``, and time ``warmup + steps`` steps."""
    from student_step import PeakMemory, batch_keys, time_steps

    from bevkd.datasets.cached import worker_context
    from bevkd.pipeline.config import load_config
    from bevkd.pipeline.distributed import setup_distributed
    from bevkd.stages import online_teacher
    from bevkd.stages.train_student import build

    spec = CASES[case]
    cfg = load_config(spec["config"], [*spec["set"], f"train.targets={path}",
                                       f"train.out_dir={OUT / 'scratch'}"])  # fmt: skip
    if threads or cfg.train.torch_threads:
        torch.set_num_threads(threads or cfg.train.torch_threads)
    info = setup_distributed(prefer_cuda=True)
    device = info.device
    objective, dataset = build(cfg, info)
    objective.to(device)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp and device.type == "cuda")
    keys = batch_keys(len(dataset), cfg.train.batch_size, cfg.train.seed, warmup + steps)

    teacher_seconds: list[float] = []
    if objective.online is not None:  # time the teachers inside the step
        run_teachers = objective.online

        def timed(batch: Any) -> Any:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            targets = run_teachers(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            teacher_seconds.append(time.perf_counter() - start)
            return targets

        objective.online = timed
    workers = {"num_workers": cfg.train.num_workers, **worker_context(cfg.student.store)}
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=keys, collate_fn=dataset.collate,
                                         pin_memory=device.type == "cuda", **workers)  # fmt: skip
    memory = LifetimePeak(PeakMemory(device))  # reset at the first measured step
    batches = iter(loader)  # held until the workers are measured
    times, growth = time_steps(objective, optimizer, scaler, batches, cfg, device, warmup,
                               steps, memory)  # fmt: skip
    workers_mib = workers_memory(worker_pids())
    del batches
    step = [w + f + b for w, f, b in zip(times["wait"], times["forward"], times["backward"], strict=True)]  # fmt: skip
    peak = memory.peak_bytes() / 2**20
    teachers = ""
    if objective.online is not None and isinstance(dataset, online_teacher.TeacherViews):
        teachers = online_teacher.describe(run_teachers, dataset)  # type: ignore[possibly-undefined]
    return {
        "case": case, "path": path, "device": str(device), "threads": torch.get_num_threads(),
        "batch_size": cfg.train.batch_size, "workers": cfg.train.num_workers,
        "step": step, "wait": times["wait"], "teacher": teacher_seconds[warmup:],
        "peak_mib": peak, "memory": memory.label(), "lifetime_peak_mib": memory.lifetime_mib(),
        "workers_mib": workers_mib, "growth_mib": growth, "growth": memory.what,
        "teachers": teachers,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------
# How far apart the two paths' targets are with a learned teacher
# ------------------------------------------------------------------------------------------


def agreement(case: str, frames: int, seed: int = 0) -> dict[str, Any]:
    """The cached targets (warped by each sample's ``bev_aug``) against the online teacher's on
    the moved input, for ``frames`` training frames, with the config's augmentation and with
    none: per field the relative RMS difference ``|a - b| / |b|`` and the codec's own
    (the store's recorded ``rel_rms``); for boxes, the share of online boxes scoring >= 0.3
    with a cached box of the same class within 0.5 m."""
    from bevkd.datasets.cached import CachedTargets
    from bevkd.datasets.dataset import FrameDataset
    from bevkd.distill.recipes import build_recipe
    from bevkd.pipeline.config import load_config
    from bevkd.stages import online_teacher
    from bevkd.stages.train_student import open_for, training_frames
    from bevkd.storage.fields import TEACHER_FIELDS

    spec = CASES[case]
    cfg = load_config(spec["config"], spec["set"])
    recipe = build_recipe(cfg)
    store = open_for(cfg, recipe)
    teachers = online_teacher.teachers_for(recipe.expects)
    boxes = [TEACHER_FIELDS[t].boxes for t in teachers if TEACHER_FIELDS[t].boxes]
    fields = [*recipe.expects, *boxes]
    chosen = training_frames(cfg, store, lambda _: None)[:frames]
    out: dict[str, Any] = {}
    for label, train in (("augmented", True), ("no augmentation", False)):
        samples = FrameDataset(chosen, cfg.data, train=train, seed=seed)
        cached = CachedTargets(samples, cfg.student.store, fields=fields)
        online, views = online_teacher.prepare(cfg, store, fields, samples, torch.device("cpu"))
        sums: dict[str, list[float]] = {}
        matched = total = 0
        for start in range(0, len(samples), 4):
            keys = list(range(start, min(start + 4, len(samples))))
            a = cached.collate([cached[k] for k in keys])
            b = views.collate([views[k] for k in keys])
            b.targets = online(b)
            for name, value in a.targets.fields.items():
                got = b.targets.fields[name]
                both = a.targets.present[name] & b.targets.present[name]
                if bool(both.any()):
                    d = (value[both] - got[both]).double()
                    acc = sums.setdefault(name, [0.0, 0.0])
                    acc[0] += float((d * d).sum())
                    acc[1] += float((got[both].double() ** 2).sum())
            for name in a.targets.boxes:
                for x, y in zip(a.targets.boxes[name], b.targets.boxes[name], strict=True):
                    y = y[y[:, 9] >= 0.3]
                    total += len(y)
                    if len(y) and len(x):
                        d = torch.cdist(y[:, :2], x[:, :2]) + 1e3 * (y[:, 10:11] != x[None, :, 10])
                        matched += int((d.min(1).values < 0.5).sum())
        codec = store.attrs.get("codec_error", {})
        out[label] = {
            "fields": {n: (v[0] / max(v[1], 1e-30)) ** 0.5 for n, v in sums.items()},
            "codec": {n: codec.get(n, {}).get("rel_rms") for n in sums},
            "boxes": (matched, total),
        }
    return out


# ------------------------------------------------------------------------------------------
# The CenterPoint-sized teacher and its store
# ------------------------------------------------------------------------------------------


def centerpoint_store() -> None:
    """A seeded random CenterPoint-sized LiDAR teacher and its store of the demo's train frames
    (made once; the cache resumes if interrupted)."""
    from bevkd.models.builders import build_teacher
    from bevkd.models.checkpoint import save_checkpoint
    from bevkd.pipeline.config import load_config
    from bevkd.stages import cache_teacher

    checkpoint = CP / "teacher_lidar.pt"
    if not checkpoint.is_file():
        cfg = load_config("configs/demo/lidar_teacher.yaml",
                          [*CENTERPOINT_TEACHER, f"train.out_dir={CP}"])  # fmt: skip
        torch.manual_seed(0)
        CP.mkdir(parents=True, exist_ok=True)
        save_checkpoint(checkpoint, build_teacher(cfg), cfg)
    cache = load_config("configs/demo/cache.yaml", [
        *CENTERPOINT_GRID, "data.lidar_sweeps=10", "cache.teachers=[lidar]",
        f"cache.lidar_checkpoint={checkpoint}", "cache.lidar_bev_scales=[1]",
        "cache.splits=[train]", f"store.url={CP / 'store.zarr'}", "cache.n_workers=0",
    ])  # fmt: skip
    cache_teacher.run(cache)


def imported_store() -> None:
    """A seeded random CenterPoint of mmdet3d's nuScenes voxel-0.1 architecture, as ``bevkd
    teacher import`` writes it (``model.kind: centerpoint``), and its store of the demo's train
    frames (made once; the cache resumes if interrupted)."""
    from bevkd.models.builders import build_teacher
    from bevkd.models.checkpoint import save_checkpoint
    from bevkd.pipeline.config import load_config
    from bevkd.stages import cache_teacher

    checkpoint = IMPORTED / "centerpoint_voxel01.pt"
    if not checkpoint.is_file():
        cfg = load_config(
            "configs/demo/cache.yaml",
            [*IMPORTED_GRID, "data.lidar_sweeps=10", "model.kind=centerpoint"],
        )
        torch.manual_seed(0)
        IMPORTED.mkdir(parents=True, exist_ok=True)
        save_checkpoint(checkpoint, build_teacher(cfg).eval(), cfg)
    cache = load_config("configs/demo/cache.yaml", [
        *IMPORTED_GRID, "data.lidar_sweeps=10", "cache.teachers=[lidar]",
        f"cache.lidar_checkpoint={checkpoint}", "cache.lidar_bev_scales=[1]",
        "cache.splits=[train]", f"store.url={IMPORTED / 'store.zarr'}", "cache.n_workers=0",
    ])  # fmt: skip
    cache_teacher.run(cache)


# ------------------------------------------------------------------------------------------
# The driver
# ------------------------------------------------------------------------------------------


def median_range(values: list[float], scale: float = 1000.0) -> str:
    v = [scale * x for x in values]
    return f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})"


def memory_mib(item: dict[str, Any]) -> float:
    """What the cached/online memory ratio compares for one run: on CPU the peak over the
    measured steps plus the workers' private memory; on CUDA the CUDA peak (host memory apart)."""
    workers = item.get("workers_mib") or {}
    if item["device"].startswith("cuda"):
        return float(item["peak_mib"])
    return float(item["peak_mib"]) + float(workers.get("private", 0.0))


def workers_cell(items: list[dict[str, Any]]) -> str:
    """The workers' private / peak-RSS MiB (largest over the rounds), their count; "-" for runs
    measured before workers were."""
    got = [item["workers_mib"] for item in items if item.get("workers_mib")]
    if not got:
        return "-"
    count = max(int(w["count"]) for w in got)
    private, peak = max(w["private"] for w in got), max(w["peak_rss"] for w in got)
    return f"{private:.0f} / {peak:.0f} ({count})"


def report(runs: dict[str, Any], cases: list[str], rounds: int) -> list[str]:
    lines = [
        "| case (teacher) | path | step ms, median (min-max) | samples/s | data wait | teachers ms/step "
        "| peak MiB, measured steps | lifetime peak MiB | workers MiB, private / peak RSS (n) "
        "| step peak growth MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for case in cases:
        got = {p: [runs[f"{case}/{p}/{r}"] for r in range(rounds) if f"{case}/{p}/{r}" in runs]
               for p in ("cached", "online")}  # fmt: skip
        if not got["cached"] or not got["online"]:
            continue
        stats = {}
        for path, items in got.items():
            steps = [s for item in items for s in item["step"]]
            waits = [w for item in items for w in item["wait"]]
            teacher = [t for item in items for t in item["teacher"]]
            peak = max(item["peak_mib"] for item in items)
            lifetime = [item["lifetime_peak_mib"] for item in items if "lifetime_peak_mib" in item]
            growth = max(item.get("growth_mib", float("nan")) for item in items)
            batch = items[0]["batch_size"]
            median = statistics.median(steps)
            stats[path] = {
                "median": median,
                "peak": peak,
                "teacher": statistics.median(teacher) if teacher else 0.0,
            }
            lines.append(
                f"| {case} ({CASES[case]['teacher']}) | {path} | {median_range(steps)} | "
                f"{batch / median:.2f} | {100 * sum(waits) / sum(steps):.0f}% | "
                f"{median_range(teacher) if teacher else '-'} | {peak:.0f} | "
                f"{f'{max(lifetime):.0f}' if lifetime else '-'} | {workers_cell(items)} | {growth:.0f} |"
            )  # fmt: skip
        # per-round ratios: each round ran both paths back to back
        pairs = list(zip(got["cached"], got["online"], strict=False))
        speed = [statistics.median(o["step"]) / statistics.median(c["step"]) for c, o in pairs]
        memory = [memory_mib(c) / memory_mib(o) for c, o in pairs]
        grown = [c.get("growth_mib", 0) / max(o.get("growth_mib", 0), 1e-9) for c, o in pairs]
        share = stats["online"]["teacher"] / stats["online"]["median"]
        s, m = statistics.median(speed), statistics.median(memory)
        counted = ("CUDA allocations" if got["cached"][0]["device"].startswith("cuda")
                   else "process over the measured steps + workers' private memory")  # fmt: skip
        summary.append(
            f"- **{case}**: cached is **{s:.2f}x** faster a step (per round "
            f"{', '.join(f'{x:.2f}' for x in speed)}; goal >= 1.5x: {'met' if s >= 1.5 else 'not met'}) "
            f"and uses **{m:.2f}x** the peak memory of online ({counted}; per round "
            f"{', '.join(f'{x:.2f}' for x in memory)}; goal <= 0.6x: {'met' if m <= 0.6 else 'not met'}); "
            f"the memory the steps add on top of the built process: **{statistics.median(grown):.2f}x** "
            f"of online's; the teachers are {100 * share:.0f}% of the online step."
        )  # fmt: skip
    return [*lines, "", *summary]


def header(first: dict[str, Any], steps: int, warmup: int, rounds: int) -> str:
    """The block's first paragraph: the machine, the protocol, and what the memory columns
    count."""
    return (
        f"Device {first['device']}, torch threads {first['threads']}, DataLoader workers per the "
        f"configs ({first['workers']}), {steps} measured steps after {warmup} in each of "
        f"{rounds} rounds per path. Memory, each run's own process: {first['memory']}, the peak "
        'over the measured steps after a reset at the first of them ("measured steps"), and '
        "the process's lifetime peak, its build included; the DataLoader workers (separate "
        "processes, where the online path loads its teachers' inputs), summed at the end of the "
        "measured steps: their private memory (what they add; a lower bound) and their peak RSS "
        "(pages shared with the main process counted once per worker; an upper bound)."
    )


def agreement_lines(agree: dict[str, Any], frames: int) -> list[str]:
    if not agree:
        return []
    lines = [
        "",
        f"Cached (warped) against online targets with the trained demo teachers, {frames} "
        "training frames: relative RMS difference per field (the codec's own rel. RMS error in "
        "brackets), and the online boxes scoring >= 0.3 that have a cached box of their class "
        "within 0.5 m. With no augmentation the two differ by the codec alone; with the "
        "configs' augmentation (flips, +-22.5 deg, scale 0.95-1.05) they differ by the "
        "teacher's own lack of equivariance as well.",
        "",
        "| case | input | "
        + " | ".join(["fields: rel. RMS difference (codec)", "boxes matched"])
        + " |",
        "|---|---|---|---|",
    ]
    for case, by in agree.items():
        for label, item in by.items():
            fields = ", ".join(
                f"{n} {v:.3f} ({item['codec'][n]:.3f})"
                if item["codec"].get(n) is not None
                else f"{n} {v:.3f}"
                for n, v in item["fields"].items()
            )
            m, t = item["boxes"]
            lines.append(f"| {case} | {label} | {fields} | {m}/{t} |")
    return lines


def block(head: str, lines: list[str]) -> str:
    """The ``stage-two`` block of docs/performance.md."""
    title = "## Cached vs online teacher (generated by benchmarks/stage_two.py)"
    return "\n".join([title, "", head, "", *lines]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: the config's")
    parser.add_argument("--fresh", action="store_true", help="forget earlier runs")
    parser.add_argument("--agreement-frames", type=int, default=16,
                        help="training frames whose cached and online targets are compared")  # fmt: skip
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--worker", nargs=3, metavar=("CASE", "PATH", "ROUND"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        case, path, _ = args.worker
        print(json.dumps(measure(case, path, args.steps, args.warmup, args.threads)))
        return

    OUT.mkdir(parents=True, exist_ok=True)
    saved = OUT / "runs.json"
    runs: dict[str, Any] = (
        {} if args.fresh or not saved.is_file() else json.loads(saved.read_text())
    )
    if not args.report_only:
        if "cmkd-centerpoint" in args.cases:
            centerpoint_store()
        if "cmkd-imported" in args.cases:
            imported_store()
        for r in range(args.rounds):
            order = ("cached", "online") if r % 2 == 0 else ("online", "cached")
            for case in args.cases:
                for path in order:
                    key = f"{case}/{path}/{r}"
                    if key in runs:
                        continue
                    started = time.perf_counter()
                    done = subprocess.run(
                        [sys.executable, __file__, "--worker", case, path, str(r), "--steps",
                         str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)],
                        capture_output=True, text=True,
                    )  # fmt: skip
                    if done.returncode != 0:
                        sys.exit(f"{key} failed:\n{done.stderr[-3000:]}")
                    runs[key] = json.loads(done.stdout.strip().splitlines()[-1])
                    saved.write_text(json.dumps(runs, indent=1))
                    item = runs[key]
                    print(f"{key}: step {median_range(item['step'])} ms, peak {item['peak_mib']:.0f} MiB "
                          f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    agree_file = OUT / "agreement.json"
    agree = {} if args.fresh or not agree_file.is_file() else json.loads(agree_file.read_text())
    if not args.report_only:
        for case in args.cases:
            # a random teacher says nothing
            if case not in ("cmkd-centerpoint", "cmkd-imported") and case not in agree:
                agree[case] = agreement(case, args.agreement_frames)
                agree_file.write_text(json.dumps(agree, indent=1))
    first = next(iter(runs.values()), None)
    if first is None:
        sys.exit("no runs yet")
    lines = report(runs, args.cases, args.rounds) + agreement_lines(agree, args.agreement_frames)
    text = block(header(first, args.steps, args.warmup, args.rounds), lines)
    print(text)
    from doc_blocks import write_block

    write_block(Path("docs/performance.md"), "stage-two", text)


if __name__ == "__main__":
    main()
