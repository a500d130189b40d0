"""``bevkd make-demo-data``: write the synthetic driving world as a dataset."""

from __future__ import annotations

import time

import click


@click.command("make-demo-data")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to write the dataset into.",
)
@click.option(
    "--preset",
    type=click.Choice(["tiny", "demo", "bench"]),
    default="demo",
    show_default=True,
    help="Size: tiny (2 scenes, for tests), demo (8 scenes, <= 1 min on 2 cores), bench (30 scenes).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="World seed; the same seed gives the same bytes.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["nuscenes", "kitti", "waymo"]),
    default="nuscenes",
    show_default=True,
    help="nuScenes v1.0-trainval dataroot, KITTI object/ + raw/ layouts, or a Waymo Open "
    "Dataset v2 root ({training,validation}/<component>/<segment>.parquet).",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace a different synthetic dataset already in --out."
)
def command(out: str, preset: str, seed: int, fmt: str, overwrite: bool) -> None:
    """Write the synthetic driving world in the real nuScenes, KITTI or Waymo v2 on-disk format.

    Scenes of a flat town (roads with lanes, parked and moving vehicles, pedestrians,
    cyclists, construction zones, buildings) seen by a nuScenes-like car (LIDAR_TOP + six
    cameras; keyframes at 2 Hz annotated, sweeps between them unannotated), a KITTI-like
    car (left colour camera + HDL-64E) or a Waymo-like car (TOP laser range images + FRONT
    camera, v2 parquet components). nuscenes-devkit and the bevkd readers load the
    result as the real dataset. See datasets/synthetic/README.md.

    \b
    Examples:
      bevkd make-demo-data --out work/demo/data
      bevkd make-demo-data --out work/kitti --format kitti --preset tiny
      bevkd make-demo-data --out work/demo/waymo --format waymo
    """
    from bevkd.datasets.synthetic.summary import summarize
    from bevkd.stages.make_demo_data import run

    start = time.perf_counter()
    root = run(out, preset=preset, seed=seed, fmt=fmt, overwrite=overwrite, progress=True)
    click.echo(f"{fmt} {preset} (seed {seed}) in {root} [{time.perf_counter() - start:.1f} s]")
    for line in summarize(root, fmt).lines():
        click.echo(f"  {line}")
