"""``bevkd demo``: the whole pipeline on the embedded synthetic default."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--out", default="work/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for everything the demo writes.")  # fmt: skip
def command(out: str) -> None:
    """Write the synthetic world (nuScenes format), train the demo teachers (LiDAR, fusion,
    label encoder), cache them into OUT/teacher.zarr, verify the store and draw one frame
    (OUT/frame0.png). Steps whose outputs exist are skipped, so a rerun resumes."""
    from bevkd.stages.demo import run_demo

    url = run_demo(Path(out))
    click.echo(f"[demo] done: {url}")
