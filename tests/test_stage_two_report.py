"""benchmarks/stage_two.py's report and memory accounting: the table and goal lines from
synthetic runs, the header that says what the memory columns count, the DataLoader workers'
memory summed from /proc (a fake one with hand-worked sums, and a real child process), and
the lifetime peak kept across the reset at the first measured step."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stage_helpers import benchmark_module

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def stage_two() -> Iterator[Any]:
    yield from benchmark_module("stage_two")


def _fake_proc(root: Path, pid: int, hwm_kb: int, rss_kb: int, pss_kb: int,
               clean_kb: int, dirty_kb: int) -> None:  # fmt: skip
    """A /proc/<pid> with the lines the kernel writes (other lines around them)."""
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "status").write_text(
        f"Name:\tpt_data_worker\nVmPeak:\t 9999999 kB\nVmHWM:\t {hwm_kb} kB\nVmRSS:\t {rss_kb} kB\n"
        "RssAnon:\t 1 kB\n"
    )
    (root / str(pid) / "smaps_rollup").write_text(
        f"00400000-7fff [rollup]\nRss:            {rss_kb} kB\nPss:            {pss_kb} kB\n"
        f"Pss_Anon:       1 kB\nShared_Clean:   5 kB\nPrivate_Clean:  {clean_kb} kB\n"
        f"Private_Dirty:  {dirty_kb} kB\n"
    )


def test_workers_memory_sums_proc_fields(stage_two: Any, tmp_path: Path) -> None:
    _fake_proc(
        tmp_path, 11, hwm_kb=409600, rss_kb=307200, pss_kb=153600, clean_kb=1024, dirty_kb=50176
    )
    _fake_proc(tmp_path, 12, hwm_kb=204800, rss_kb=102400, pss_kb=51200, clean_kb=0, dirty_kb=10240)
    one = stage_two.process_memory(11, tmp_path)
    assert one == {"VmHWM": 409600 * 1024, "VmRSS": 307200 * 1024, "Pss": 153600 * 1024,
                   "Private": (1024 + 50176) * 1024}  # fmt: skip
    got = stage_two.workers_memory([11, 12, 13], tmp_path)  # 13 has exited: skipped
    # by hand, MiB: peak RSS 400 + 200; RSS 300 + 100; PSS 150 + 50; private 50 + 10
    assert got == {"count": 2, "peak_rss": 600, "rss": 400, "pss": 200, "private": 60}
    (tmp_path / "14").mkdir()
    (tmp_path / "14" / "status").write_text("Name:\tkernel thread\n")  # no Vm lines, no rollup
    assert stage_two.process_memory(14, tmp_path) == dict.fromkeys(("VmHWM", "VmRSS", "Pss", "Private"), 0)  # fmt: skip
    assert stage_two.workers_memory([], tmp_path)["count"] == 0


def test_workers_memory_of_a_real_child_process(stage_two: Any) -> None:
    """A child that holds 64 MiB of written memory: it is found among this process's
    children, and its peak RSS and private memory count those 64 MiB."""
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nblock = bytes(range(256)) * (64 * 4096)\n"
         "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        assert child.pid in stage_two.worker_pids()
        got = stage_two.workers_memory([child.pid])
        assert got["count"] == 1 and got["peak_rss"] >= 64 and got["rss"] >= 64
        assert got["private"] >= 64 and got["private"] <= got["rss"] <= got["peak_rss"]
    finally:
        child.kill()
        child.wait()


class _Memory:
    """What time_steps is handed: a PeakMemory-like reading from a script of RSS peaks."""

    def __init__(self, peaks: list[int]) -> None:
        import torch

        self.device, self.hwm, self.what, self.peaks = torch.device("cpu"), True, "growth", peaks
        self.started = False

    def _rss_peak(self) -> int:
        return self.peaks[0] if not self.started else self.peaks[1]

    def start(self) -> None:
        self.started = True

    def peak_mib(self) -> float:
        return 7.0


def test_the_lifetime_peak_survives_the_reset(stage_two: Any) -> None:
    memory = stage_two.LifetimePeak(_Memory([900 * 2**20, 600 * 2**20]))
    memory.start()  # the build peaked at 900 MiB; the reset drops the high-water mark to 600
    assert memory.peak_bytes() == 600 * 2**20 and memory.lifetime_mib() == 900
    assert memory.peak_mib() == 7.0 and memory.what == "growth"
    assert memory.label() == "process peak RSS (VmHWM)"
    memory = stage_two.LifetimePeak(_Memory([300 * 2**20, 600 * 2**20]))
    memory.start()
    assert memory.lifetime_mib() == 600  # the measured steps set the lifetime peak


def test_the_real_peak_memory_resets_and_the_lifetime_does_not(stage_two: Any) -> None:
    """With student_step's PeakMemory on Linux: 256 MiB written and freed before the reset
    stay in the lifetime peak and out of the measured-steps peak."""
    sys.path.insert(0, str(BENCHMARKS))
    import torch
    from student_step import PeakMemory

    inner = PeakMemory(torch.device("cpu"))
    if not inner.hwm:
        pytest.skip("no VmHWM reset here (/proc/self/clear_refs): the lifetime is all there is")
    block = bytearray(b"x" * (256 * 2**20))
    del block
    memory = stage_two.LifetimePeak(inner)
    memory.start()
    assert memory.lifetime_mib() - memory.peak_bytes() / 2**20 >= 200


def _run(device: str, peak: float, lifetime: float | None, workers: dict | None,
         step: float = 0.1, teacher: tuple[float, ...] = ()) -> dict[str, Any]:  # fmt: skip
    run = {"device": device, "threads": 1, "batch_size": 4, "workers": 2,
           "step": [step, step, step], "wait": [0.01] * 3, "teacher": list(teacher),
           "peak_mib": peak, "memory": "process peak RSS (VmHWM)", "growth_mib": peak / 10}  # fmt: skip
    if lifetime is not None:
        run["lifetime_peak_mib"] = lifetime
    if workers is not None:
        run["workers_mib"] = workers
    return run


def _workers(private: float, peak: float) -> dict[str, float]:
    return {"count": 2, "private": private, "pss": private, "rss": peak, "peak_rss": peak}


def test_report_counts_the_workers_in_the_memory_ratio(stage_two: Any) -> None:
    runs = {
        "cmkd/cached/0": _run("cpu", 1000, 1200, _workers(100, 900), step=0.1),
        "cmkd/online/0": _run("cpu", 1500, 1600, _workers(700, 1900), step=0.3,
                              teacher=(0.15, 0.15, 0.15)),
    }  # fmt: skip
    lines = stage_two.report(runs, ["cmkd"], 1)
    assert lines[0].split(" | ")[6:9] == [
        "peak MiB, measured steps", "lifetime peak MiB", "workers MiB, private / peak RSS (n)"
    ]  # fmt: skip
    # 4 samples / 0.1 s; 0.01 / 0.1 of the step waiting; 1000 MiB steps, 1200 lifetime
    assert lines[2] == ("| cmkd (demo LiDAR teacher (0.2 m voxels, 1 sweep)) | cached | 100 (100-100) "
                        "| 40.00 | 10% | - | 1000 | 1200 | 100 / 900 (2) | 100 |")  # fmt: skip
    assert lines[3].endswith("| 150 (150-150) | 1500 | 1600 | 700 / 1900 (2) | 150 |")
    summary = lines[-1]
    # (1000 + 100) / (1500 + 700) = 0.50: met; the processes alone (1000 / 1500 = 0.67) would not
    assert "cached is **3.00x** faster a step" in summary
    assert "uses **0.50x** the peak memory of online (process over the measured steps + " \
           "workers' private memory; per round 0.50; goal <= 0.6x: met)" in summary  # fmt: skip
    assert "the teachers are 50% of the online step" in summary


def test_report_on_cuda_and_of_runs_measured_before_the_workers(stage_two: Any) -> None:
    runs = {"cmkd/cached/0": _run("cuda:0", 500, 800, _workers(100, 900)),
            "cmkd/online/0": _run("cuda:0", 1000, 1100, _workers(700, 1900))}  # fmt: skip
    summary = stage_two.report(runs, ["cmkd"], 1)[-1]
    assert "uses **0.50x** the peak memory of online (CUDA allocations;" in summary
    old = {"cmkd/cached/0": _run("cpu", 1000, None, None),
           "cmkd/online/0": _run("cpu", 2000, None, None)}  # fmt: skip
    lines = stage_two.report(old, ["cmkd"], 1)
    assert lines[2].endswith("| 1000 | - | - | 100 |") and "**0.50x** the peak memory" in lines[-1]
    assert stage_two.report({"cmkd/cached/0": old["cmkd/cached/0"]}, ["cmkd"], 1)[2:] == [
        "",
    ]


def test_the_header_says_what_the_memory_columns_count(stage_two: Any) -> None:
    first = _run("cpu", 1000, 1200, _workers(100, 900))
    head = stage_two.header(first, steps=6, warmup=2, rounds=3)
    assert head.startswith("Device cpu, torch threads 1, DataLoader workers per the configs (2), "
                           "6 measured steps after 2 in each of 3 rounds per path.")  # fmt: skip
    assert "the peak over the measured steps after a reset at the first of them" in head
    assert "lifetime peak, its build included" in head and "process peak RSS (VmHWM)" in head
    assert "their private memory (what they add; a lower bound) and their peak RSS" in head
    text = stage_two.block(head, ["| a |"])
    assert (
        text
        == f"## Cached vs online teacher (generated by benchmarks/stage_two.py)\n\n{head}\n\n| a |\n"
    )
    doc = " ".join(stage_two.__doc__.split())
    assert "the peak over the measured steps, after a reset at the first of them" in doc
    assert "**Lifetime peak**: the process's peak from its start" in doc
