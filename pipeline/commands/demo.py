"""``bevkd demo``: the whole pipeline on the embedded synthetic default."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--out", default="work/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for everything the demo writes.")  # fmt: skip
@click.option("--skip-students", is_flag=True, help="Stop after stage one (the verified store).")
@click.option("--all-teachers", is_flag=True,
              help="Also train and cache the fusion teacher and the label encoder, into "
              "OUT/teacher.zarr (the store of `make cache-teacher`; about 6 more minutes).")  # fmt: skip
def command(out: str, skip_students: bool, all_teachers: bool) -> None:
    """Write the synthetic world (nuScenes format), train the demo LiDAR teacher, cache it into
    OUT/teacher_lidar.zarr, verify the store and draw one frame (OUT/frame0.png); then train the
    camera students against the store (baseline, CMKD, CMKD + unlabeled frames, side by side)
    and print one table of teacher and students (mAP, NDS, car AP on val; OUT/results.md).
    Steps whose outputs exist are skipped, so a rerun resumes."""
    from bevkd.stages.demo import run_demo

    url = run_demo(Path(out), students=not skip_students, all_teachers=all_teachers)
    click.echo(f"[demo] done: {url}")
