"""benchmarks/store_load.py's arithmetic and report: latency percentiles, frames/s, retries per
1,000 objects and the readers a 10 frames/s student needs, from hand-made reader results with
the expected values worked here by hand; the block written between its markers; and the
``--quick`` run end to end (real readers, moto, the fault proxy)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stage_helpers import benchmark_module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report() -> Iterator[Any]:
    yield from benchmark_module("load_report")


@pytest.fixture(scope="module")
def doc_blocks() -> Iterator[Any]:
    yield from benchmark_module("doc_blocks")


def _reader(frames: int, wall_s: float, latencies_ms: list[float],
            stats: list[dict[str, int]], errors: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    return {"frames": frames, "wall_s": wall_s, "latencies_s": [x / 1e3 for x in latencies_ms],
            "stats": stats, "errors": errors or []}  # fmt: skip


def _stats(requests: int, retries: int, rereads: int) -> dict[str, int]:
    return {"requests": requests, "retries": retries, "rereads": rereads, "failures": 0}


def test_percentiles_interpolate_between_ranks(report: Any) -> None:
    ms = [float(x) for x in range(1, 101)]  # 1..100 ms
    seconds = [x / 1e3 for x in reversed(ms)]  # order does not matter
    # p50: rank 0.5 * 99 = 49.5 -> halfway between the 50th and 51st values (50 and 51 ms)
    assert report.percentile_ms(seconds, 50) == pytest.approx(50.5)
    # p99: rank 0.99 * 99 = 98.01 -> 99 + 0.01 * (100 - 99)
    assert report.percentile_ms(seconds, 99) == pytest.approx(99.01)
    assert report.percentile_ms([0.004], 99) == pytest.approx(4.0)
    assert math.isnan(report.percentile_ms([], 50))


def test_a_configuration_row_from_two_readers(report: Any) -> None:
    config = {"source": "s3+faults", "codec": "uint8", "readers": 2, "workers": 2}
    readers = [
        # a reader and its two workers: 30 frames in 3.0 s
        _reader(30, 3.0, [100, 200, 300], [_stats(10, 0, 0), _stats(120, 3, 1), _stats(110, 2, 0)]),
        # 15 frames in 2.5 s
        _reader(15, 2.5, [400], [_stats(10, 0, 0), _stats(60, 1, 0), _stats(50, 0, 2)]),
    ]  # fmt: skip
    row = report.summarize(config, readers, {"requests": 2000, "injected": 96})
    assert row["frames"] == 45
    assert row["fps_total"] == pytest.approx(45 / 3.0)  # 15: the longest span
    assert row["fps_per_reader"] == pytest.approx((30 / 3.0 + 15 / 2.5) / 2)  # (10 + 6) / 2 = 8
    # latencies 100, 200, 300, 400 ms: p50 at rank 1.5 = 250; p99 at rank 2.97 = 300 + 0.97 * 100
    assert row["mean_ms"] == pytest.approx(250.0)  # (100 + 200 + 300 + 400) / 4
    assert row["p50_ms"] == pytest.approx(250.0)
    assert row["p99_ms"] == pytest.approx(397.0)
    # requests 10+120+110+10+60+50 = 360, retries 3+2+1 = 6, rereads 1+2 = 3: objects 351
    assert row["stats"] == {"requests": 360, "retries": 6, "rereads": 3, "failures": 0}
    assert row["objects"] == 351
    assert row["retries_per_1000"] == pytest.approx(9 / 351 * 1000)  # 25.64
    assert row["faults_per_1000"] == pytest.approx(48.0)  # 96 of 2000
    assert row["errors"] == 0


def test_a_local_row_has_no_retry_figures_and_counts_errors(report: Any) -> None:
    config = {"source": "local", "codec": "pca-8", "readers": 1, "workers": 0}
    row = report.summarize(config, [_reader(8, 2.0, [5, 7], [_stats(0, 0, 0)], ["frame 3: boom"])])
    assert row["fps_total"] == pytest.approx(4.0)
    assert math.isnan(row["retries_per_1000"]) and "faults_per_1000" not in row
    assert row["errors"] == 1 and row["error_messages"] == ["frame 3: boom"]
    line = report.table_lines([row])[2]
    assert line == "| local | pca-8 | 1 | 0 | 8 | 4.0 | 4.0 | 6 | 6 | 7 | - | - | 1 |"


def test_readers_needed_is_the_ceiling_of_target_over_rate(report: Any) -> None:
    assert report.readers_needed(4.9) == 3  # 10 / 4.9 = 2.04
    assert report.readers_needed(10.3) == 1  # 0.97
    assert report.readers_needed(2.5) == 4  # exactly 4
    assert report.readers_needed(3.0, target=20) == 7  # 6.67
    assert report.readers_needed(0.0) is None


def _row(source: str, codec: str, n: int, w: int, per_reader: float) -> dict[str, Any]:
    return {"source": source, "codec": codec, "readers": n, "workers": w,
            "fps_per_reader": per_reader, "fps_total": per_reader * n}  # fmt: skip


def test_the_answer_takes_each_sources_best_reader(report: Any) -> None:
    rows = [_row("local", "uint8", 1, 0, 30.0), _row("local", "uint8", 2, 2, 24.0),
            _row("s3", "uint8", 1, 2, 4.0), _row("s3", "uint8", 4, 2, 1.5),
            _row("s3+faults", "uint8", 2, 2, 0.0)]  # fmt: skip
    got = report.answer(rows)
    assert [(a["source"], a["readers"], a["at"]) for a in got] == [
        ("local", 1, "N=1, W=0"), ("s3", 3, "N=1, W=2"), ("s3+faults", None, "N=2, W=2")
    ]  # fmt: skip
    assert got[0]["best_total"] == pytest.approx(48.0)  # 2 x 24 beats 1 x 30
    assert got[1]["best_total"] == pytest.approx(6.0)  # 4 x 1.5
    text = "\n".join(report.answer_lines(rows, cores=2))
    assert "| s3 | uint8 | 4.0 (N=1, W=2) | 3 | 6.0 |" in text
    assert "cannot scale past 2 cores" in text and "lower bound" in text
    assert "at every N measured: s3 (uint8, N=1/4), s3+faults (uint8, N=2)." in text


def test_the_block_between_begin_and_end_is_replaced_and_nothing_else(
    doc_blocks: Any, tmp_path: Path
) -> None:
    page = tmp_path / "reliability.md"
    page.write_text(
        "# Title\n\nbefore\n\n<!-- store-load:begin -->\nold\n<!-- store-load:end -->\nafter\n"
    )
    doc_blocks.write_block(page, "store-load", "new\n", marks=("begin", "end"))
    assert page.read_text() == (
        "# Title\n\nbefore\n\n<!-- store-load:begin -->\nnew\n<!-- store-load:end -->\nafter\n"
    )
    fresh = tmp_path / "fresh.md"
    doc_blocks.write_block(fresh, "store-load", "new\n", marks=("begin", "end"), title="# T")
    assert fresh.read_text() == "# T\n\n<!-- store-load:begin -->\nnew\n<!-- store-load:end -->\n"


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    """Local, S3 and S3 at 5% faults through real reader processes: every row read frames with
    no error, and the block and the JSON are written where asked."""
    page, raw = tmp_path / "reliability.md", tmp_path / "store_load.json"
    page.write_text("# R\n\nkept\n<!-- store-load:begin -->\n<!-- store-load:end -->\n")
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "store_load.py"), "--quick", "--seconds", "2",
         "--workdir", str(tmp_path / "stores"), "--doc", str(page), "--json", str(raw)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.monotonic() - start < 120  # about 35 s on 2 idle cores, 55 s on busy ones
    rows = json.loads(raw.read_text())["rows"]
    assert [(r["source"], r["readers"]) for r in rows] == [
        ("local", 1), ("local", 2), ("s3", 1), ("s3+faults", 2)
    ]  # fmt: skip
    assert all(r["frames"] > 0 and r["errors"] == 0 for r in rows)
    assert rows[2]["objects"] > 0 and rows[3]["proxy"]["requests"] > 0
    text = page.read_text()
    assert text.startswith("# R\n\nkept\n<!-- store-load:begin -->\nGenerated by `")
    assert "| s3+faults | uint8 | 2 | 2 |" in text and text.endswith("<!-- store-load:end -->\n")
    # --report-only writes the same block again from the JSON, under the measuring run's stamp
    page.write_text("# R\n<!-- store-load:begin -->\n<!-- store-load:end -->\n")
    again = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "store_load.py"), "--report-only",
         "--doc", str(page), "--json", str(raw)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert page.read_text() == "# R\n" + text[len("# R\n\nkept\n") :]
