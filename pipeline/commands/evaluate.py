"""``bevkd evaluate``: score a detection results file (nuScenes devkit, or KITTI AP|R40)."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import click

from bevkd.pipeline.commands.index import with_data_root
from bevkd.pipeline.options import config_options, resolve


@click.command("evaluate")
@config_options
@click.option("--data", "data_root", default=None, help="Dataset root (overrides data.root).")
@click.option(
    "--results",
    "results_path",
    default=None,
    type=click.Path(),
    help="nuScenes results JSON, or a KITTI results directory.",
)
@click.option(
    "--checkpoint",
    "checkpoint",
    default=None,
    type=click.Path(dir_okay=False),
    help="A trained teacher or student: run it over the val split (with its own config, "
    "--set applied last) and evaluate.",
)
@click.option("--draw", default=4, show_default=True,
              help="With --checkpoint: PNGs of this many frames (BEV predictions vs GT and the "
              "teacher's cached boxes; boxes on the camera images).")  # fmt: skip
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where metrics.json and summary.md go (default: beside the results, eval_<name>/).",
)
@click.option(
    "--format",
    "fmt",
    default=None,
    type=click.Choice(["nuscenes", "kitti"]),
    help="Dataset format (default: data.format).",
)
@click.option("--render-curves", is_flag=True, help="Also draw the devkit's PR/TP curves (slow).")
def command(
    config_path: str | None,
    overrides: tuple[str, ...],
    data_root: str | None,
    results_path: str | None,
    checkpoint: str | None,
    out_dir: str | None,
    fmt: str | None,
    render_curves: bool,
    draw: int,
) -> None:
    """Evaluate detections against the dataset's GT and write metrics.json + summary.md.

    Give either --results (a results file made elsewhere) or --checkpoint (a trained teacher
    or student, run here over the val split with the config saved in the checkpoint, --set
    applied last). A student trained on one dataset scores on another with the same rig:
    --set data.root=OTHER (and eval.eval_set / data.val_split for another split).

    \b
    Examples:
      bevkd evaluate --checkpoint work/demo/student_cmkd/best.pt
      bevkd evaluate --checkpoint work/demo/student_cmkd/best.pt --set data.root=/data/other
      bevkd evaluate --data work/demo/data --results results_nusc.json
    """
    if (results_path is None) == (checkpoint is None):
        raise click.UsageError("give exactly one of --results and --checkpoint")
    if checkpoint:
        summary = _evaluate_checkpoint(Path(checkpoint), overrides, data_root, out_dir, draw)
        _print(summary)
        return
    assert results_path is not None
    cfg = with_data_root(resolve(config_path, overrides), data_root, fmt)
    if render_curves:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, render_curves=True))
    results = Path(results_path)
    out = Path(out_dir) if out_dir else results.parent / f"eval_{results.stem}"
    if cfg.data.format == "kitti":
        kitti_ap = importlib.import_module("bevkd.stages.kitti_ap")
        _print(kitti_ap.run(cfg, results, out))
        click.echo(f"saved to {out}")
        return
    from bevkd.stages.evaluate import run

    summary = run(cfg, results, out)
    _print(summary)
    click.echo(f"saved metrics.json and summary.md to {out}")


def _evaluate_checkpoint(
    path: Path, overrides: tuple[str, ...], data_root: str | None, out_dir: str | None, draw: int
) -> dict:
    from bevkd.models.checkpoint import load_model
    from bevkd.pipeline.config import with_overrides
    from bevkd.stages.predict import evaluate_model

    model, cfg, _ = load_model(path)
    cfg = with_overrides(cfg, [*overrides, *([f"data.root={data_root}"] if data_root else [])])
    out = Path(out_dir) if out_dir else path.parent / f"eval_{path.stem}"
    summary: dict = evaluate_model(model, cfg, out, draw=draw)
    click.echo(f"saved to {out}")
    return summary


def _print(summary: dict) -> None:
    if "mAP" not in summary:  # KITTI AP|R40
        from bevkd.stages.kitti_ap import format_table

        click.echo(format_table(summary))
        return
    click.echo(
        f"nuScenes {summary['eval_set']} ({summary['num_samples']} samples): mAP {summary['mAP']:.4f}  NDS {summary['NDS']:.4f}"
    )
    errors = "  ".join(
        f"{k} {v:.3f}" for k, v in summary["tp_errors"].items() if v is not None and v == v
    )
    click.echo(f"mean TP errors: {errors}")
    for name, ap in summary["class_ap"].items():
        marker = "" if name in summary["gt_classes"] else "  (no GT in range)"
        click.echo(f"  {name:<22} AP {ap:.4f}{marker}")
