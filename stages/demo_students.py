"""The demo's stage two: the baseline and CMKD students trained against the demo store, side
by side, and one table that says whether distillation paid.

Each arm is a real ``bevkd train-student`` process (its own log in ``<out_dir>/train.out``), at
most ``parallel`` at once (all three by default) with one torch thread each: on a small CPU
machine single-thread runs side by side finish sooner than runs taking turns on every core. An arm whose final evaluation
exists is not run again; an interrupted arm resumes from its ``last.pt``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bevkd.pipeline.config import config_sha256, load_config
from bevkd.pipeline.errors import BevkdError


@dataclass(frozen=True)
class Arm:
    name: str  # the table's row
    config: str  # configs/demo/student_*.yaml
    # under the demo's out folder: not the config's own train.out_dir, which `make
    # train-student` uses with the full store
    folder: str


DEMO_ARMS: tuple[Arm, ...] = (
    Arm("baseline", "configs/demo/student_baseline.yaml", "students/baseline"),
    Arm("cmkd", "configs/demo/student_cmkd.yaml", "students/cmkd"),
    Arm("cmkd + unlabeled", "configs/demo/student_cmkd_unlabeled.yaml", "students/cmkd_unlabeled"),
)


def arm_metrics(folder: Path) -> dict[str, Any] | None:
    """A finished arm's final validation: ``eval/metrics.json`` (nuScenes) or
    ``eval/kitti_ap.json`` (KITTI AP|R40); None while it has none."""
    for name in ("metrics.json", "kitti_ap.json"):
        path = folder / "eval" / name
        if path.is_file():
            return json.loads(path.read_text())  # type: ignore[no-any-return]
    return None


def train_arm(
    arm: Arm, out: Path, store: str, data_root: str, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run one arm to completion (or reuse its finished evaluation); returns its metrics."""
    folder = out / arm.folder
    sets = [f"data.root={data_root}", f"student.store={store}", f"train.out_dir={folder}", *extra]
    wanted = config_sha256(load_config(arm.config, sets))
    saved = folder / "config.sha256"
    if saved.is_file() and saved.read_text().strip() != wanted:
        raise BevkdError(
            f"{folder} holds a run of another config than {arm.config} with the demo's settings "
            "(the config changed since): remove that folder to train it again"
        )
    if (done := arm_metrics(folder)) is not None:
        click.echo(f"[students] {arm.name}: already trained ({folder})")
        return done
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bevkd.pipeline.cli", "train-student", "--config", arm.config]
    for item in sets:
        command += ["--set", item]
    click.echo(f"[students] {arm.name}: training ({arm.config}; log {folder / 'train.out'})")
    started = time.perf_counter()
    with (folder / "train.out").open("a") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0 or (metrics := arm_metrics(folder)) is None:
        tail = (folder / "train.out").read_text()[-2000:]
        raise BevkdError(f"student '{arm.name}' failed (exit {code}); the end of its log:\n{tail}")
    click.echo(f"[students] {arm.name}: {time.perf_counter() - started:.0f} s, {headline(metrics)}")
    return metrics


def headline(metrics: dict[str, Any]) -> str:
    """One line of an evaluation: nuScenes mAP, NDS and car AP, or KITTI Car AP|R40 Moderate."""
    if "mAP" in metrics:
        car = metrics["class_ap"].get("car")
        return f"mAP {metrics['mAP']:.3f}, NDS {metrics['NDS']:.3f}, car AP {car:.3f}"
    car = metrics["ap"]["Car"]
    return f"Car AP|R40 moderate: 3D {car['3d']['moderate']:.2f}, BEV {car['bev']['moderate']:.2f}"


def train_students(out: Path, store: str, data_root: str, parallel: int = 3,
                   arms: tuple[Arm, ...] = DEMO_ARMS, extra: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every arm, ``parallel`` at a time; returns ``{arm name: metrics}`` in arm order."""
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {
            arm.name: pool.submit(train_arm, arm, out, store, data_root, extra) for arm in arms
        }
        return {name: future.result() for name, future in futures.items()}


def results_table(rows: dict[str, dict[str, Any]]) -> str:
    """A markdown table: one row per model, mAP, NDS and car AP on the val split."""
    lines = ["| model | mAP | NDS | car AP |", "|---|---|---|---|"]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['mAP']:.3f} | {m['NDS']:.3f} | {m['class_ap']['car']:.3f} |")
    return "\n".join(lines)
