"""The demo's stage two: the baseline and CMKD students trained against the demo store, side
by side, and one table that says whether distillation paid.

Each arm is a real ``bevkd train-student`` process (its own log in ``<out_dir>/train.out``), at
most ``parallel`` at once (all three by default) with one torch thread each: on a small CPU
machine single-thread runs side by side finish sooner than runs taking turns on every core. An
arm whose final evaluation exists, in its folder or in the run ledger that git keeps
(:mod:`bevkd.stages.run_ledger`), is not run again; an interrupted arm resumes from its
``last.pt``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from bevkd.distill.recipes import build_recipe, with_recipe_defaults
from bevkd.pipeline.config import config_sha256, config_sha256_variants, load_config
from bevkd.pipeline.errors import BevkdError
from bevkd.pipeline.provenance import code_version
from bevkd.stages import run_ledger


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


def arm_config_sha256(arm: Arm, out: Path, store: str, data_root: str,
                      extra: tuple[str, ...] = ()) -> set[str]:  # fmt: skip
    """The sha256s a record of the resolved config :func:`train_arm` trains ``arm`` with may
    carry: today's, and the same config's from before keys were added to the config
    (:func:`bevkd.pipeline.config.config_sha256_variants`)."""
    return config_sha256_variants(with_recipe_defaults(load_config(arm.config, arm_sets(arm, out, store, data_root, extra))))  # fmt: skip


def arm_sets(arm: Arm, out: Path, store: str, data_root: str, extra: tuple[str, ...]) -> list[str]:
    return [f"data.root={data_root}", f"student.store={store}",
            f"train.out_dir={out / arm.folder}", *extra]  # fmt: skip


def arm_metrics(
    folder: Path, store: str | None = None, config_sha256: str | set[str] | None = None
) -> dict[str, Any] | None:
    """A finished arm's final validation (``eval/metrics.json``, nuScenes, or
    ``eval/kitti_ap.json``, KITTI AP|R40), from its run folder or else from the run ledger
    (:mod:`bevkd.stages.run_ledger`: a fresh clone has no work/); None while neither has it.
    A result not made by this commit's clean tree (another commit, or uncommitted changes: a
    run just trained in a dirty tree too) carries ``"reused": {"commit", "dirty"}``, for the
    report's † (:func:`bevkd.stages.run_ledger.dagger`). ``config_sha256``: the resolved
    config the arm trains with (:func:`arm_config_sha256`: its sha256s before and after keys
    were added to the config); a result of another is not this arm's. ``store``: the store the arm reads teacher fields from (None for an arm that reads
    none); a result recorded against a store of other teachers, labels, frames or codecs is
    not this arm's either."""
    found = run_ledger.find(folder)
    if found is None:
        return None
    entry, where = found
    if config_sha256 is not None and "config_sha256" in entry:
        wanted = {config_sha256} if isinstance(config_sha256, str) else config_sha256
        if entry["config_sha256"] not in wanted:
            return None
    if store is not None:
        identity = run_ledger.store_identity(store)
        if where == "work" and entry.get("store") is None and "config_sha256" in entry:
            if not run_ledger.store_read_by(folder, store):
                return None
            entry = {**entry, "store": identity}  # it can only have read this store
            run_ledger.write(folder, entry)
        if not run_ledger.store_matches(entry, identity):
            return None
    metrics = dict(found[0]["metrics"])
    if (mark := run_ledger.code_mark(found[0].get("code", run_ledger.UNKNOWN))) is not None:
        metrics["reused"] = mark
    return metrics


def train_arm(
    arm: Arm, out: Path, store: str, data_root: str, extra: tuple[str, ...] = (),
    *, fresh: bool = False, weights: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Run one arm to completion, or reuse its finished result (run folder or ledger: see
    :func:`arm_metrics`); returns its metrics. ``fresh``: a result marked as made by other code
    is trained again (its run folder moved to ``<folder>.replaced``). ``weights``: the arm's
    checkpoint must be on disk (a later phase starts from it), so a result found only in the
    ledger is trained again. A finished run is recorded in its folder and the ledger."""
    folder = out / arm.folder
    sets = arm_sets(arm, out, store, data_root, extra)
    cfg = with_recipe_defaults(load_config(arm.config, sets))
    wanted = config_sha256(cfg)
    # a record of this config made before keys were added to the config carries its old sha256
    known = config_sha256_variants(cfg)
    # the store's identity, for an arm that reads teacher fields (a baseline reads none)
    reads = build_recipe(cfg).expects
    identity = run_ledger.store_identity(cfg.student.store) if reads else None
    saved = folder / "config.sha256"
    if saved.is_file() and saved.read_text().strip() not in known:
        raise BevkdError(
            f"{folder} holds a run of another config than {arm.config} with the demo's settings "
            "(the config changed since): remove that folder to train it again"
        )
    found = run_ledger.find(folder)
    if (
        found is not None
        and found[1] == "work"
        and identity is not None
        and found[0].get("store") is None
        and "config_sha256" in found[0]
        and run_ledger.store_read_by(folder, cfg.student.store)
    ):  # recorded before runs recorded their store, after this store was finalized
        found = ({**found[0], "store": identity}, "work")
        run_ledger.write(folder, found[0])
    if (
        found is not None
        and found[1] == "ledger"
        and (found[0].get("config_sha256") not in known or weights)
    ):
        found = None  # a ledger entry of another config, or one without the weights needed
    if found is not None and not run_ledger.store_matches(found[0], identity):
        click.echo(f"[students] {arm.name}: its result was trained on another store than "
                   f"{cfg.student.store} (other teachers, labels, frames or codecs), or on one "
                   "it did not record: training it again")  # fmt: skip
        if found[1] == "ledger":
            found = None
    if found is not None:
        entry, where = found
        mark = run_ledger.code_mark(entry.get("code", run_ledger.UNKNOWN))
        stale = not run_ledger.store_matches(entry, identity)
        if not ((fresh and mark) or stale):
            made = (
                f"; made by {mark['commit'][:10]}{' (dirty)' if mark['dirty'] else ''}"
                if mark
                else ""
            )
            click.echo(f"[students] {arm.name}: already trained ({where}: {folder}{made})")
            if where == "work" and "config_sha256" not in entry:  # a run older than the ledger
                late = run_ledger.record(folder, arm.name, arm.config, wanted, entry["code"],
                                         None, False, entry["metrics"], identity)  # fmt: skip
                run_ledger.write(folder, late)
            return arm_metrics(folder)  # type: ignore[return-value]
        if folder.exists():  # --fresh: train again, keep the old run beside it
            aside = folder.with_name(folder.name + ".replaced")
            shutil.rmtree(aside, ignore_errors=True)
            folder.rename(aside)
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bevkd.pipeline.cli", "train-student", "--config", arm.config]
    for item in sets:
        command += ["--set", item]
    click.echo(f"[students] {arm.name}: training ({arm.config}; log {folder / 'train.out'})")
    resumed, code = (folder / "last.pt").is_file(), code_version()  # the code it starts from
    started = time.perf_counter()
    with (folder / "train.out").open("a") as log:
        exit_code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    if exit_code != 0 or (metrics := run_ledger.eval_metrics(folder)) is None:
        tail = (folder / "train.out").read_text()[-2000:]
        raise BevkdError(
            f"student '{arm.name}' failed (exit {exit_code}); the end of its log:\n{tail}"
        )
    entry = run_ledger.record(
        folder, arm.name, arm.config, wanted, code, wall, resumed, metrics, identity
    )
    run_ledger.write(folder, entry)
    click.echo(f"[students] {arm.name}: {wall:.0f} s, {headline(metrics)}")
    return arm_metrics(folder)  # type: ignore[return-value]


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
