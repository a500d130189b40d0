"""``bevkd teacher``: bring a teacher trained elsewhere (``import``: an mmdet3d 1.x or
OpenPCDet CenterPoint) into a bevkd teacher checkpoint that ``cache-teacher`` reads like its own
(``cache.lidar_checkpoint``)."""

from __future__ import annotations

import click

from bevkd.pipeline.options import config_options, resolve


@click.group("teacher")
def command() -> None:
    """Import teachers trained in other frameworks."""


@command.command("import")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--from",
    "source",
    type=click.Choice(["mmdet3d", "openpcdet"]),
    required=True,
    help="The framework that trained CHECKPOINT. Decides the key names, box conventions and "
    "post-processing; nothing is guessed from the file.",
)
@click.option(
    "--kernel-layout",
    type=click.Choice(["auto", "spconv1", "spconv2"]),
    default="auto",
    show_default=True,
    help="Layout of the sparse-conv kernels: spconv1 (spconv 1.x / mmcv, the mmdet3d model zoo's "
    "published CenterPoints: kD,kH,kW,Cin,Cout) or spconv2 (Cout,kD,kH,kW,Cin: checkpoints "
    "saved with spconv 2). auto reads each kernel in the one layout its shape fits, and stops "
    "when a kernel fits both.",
)
@click.option(
    "--assume-mmdet3d-1x",
    is_flag=True,
    help="Import an mmdet3d checkpoint that records no meta.mmdet3d_version as 1.x (mmdet3d 0.x "
    "checkpoints, from before the coordinate refactor, are refused).",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="The bevkd checkpoint to write."
)
@config_options
def import_(
    checkpoint: str,
    source: str,
    kernel_layout: str,
    assume_mmdet3d_1x: bool,
    out: str,
    config_path: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Convert CHECKPOINT (mmdet3d 1.x or OpenPCDet CenterPoint) into a bevkd teacher.

    The architecture comes from the checkpoint's meta.cfg (mmdet3d), or from --config's grid
    and centerpoint sections (OpenPCDet; configs/foreign/ has the published nuScenes models).
    --config also names the dataset the teacher will run on: its classes must include the
    teacher's. Every incompatibility (missing, unexpected or misshapen weights, a grid that
    does not divide, unknown classes) is listed at once.

    \b
    Example:
      bevkd teacher import centerpoint_voxel01.pth --from mmdet3d --kernel-layout spconv1 \\
          --config configs/nuscenes/cache.yaml --out work/teachers/centerpoint01.pt
      bevkd cache-teacher --config configs/nuscenes/cache.yaml \\
          --set cache.lidar_checkpoint=work/teachers/centerpoint01.pt
    """
    from bevkd.stages.import_teacher import run

    cfg = resolve(config_path, overrides)
    result = run(checkpoint, source, cfg, out, kernel_layout, assume_mmdet3d_1x)
    for line in result.summary():
        click.echo(line)
