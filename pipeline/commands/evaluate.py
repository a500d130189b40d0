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
    required=True,
    type=click.Path(),
    help="nuScenes results JSON, or a KITTI results directory.",
)
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
    results_path: str,
    out_dir: str | None,
    fmt: str | None,
    render_curves: bool,
) -> None:
    """Evaluate detections against the dataset's GT and write metrics.json + summary.md."""
    cfg = with_data_root(resolve(config_path, overrides), data_root, fmt)
    if render_curves:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, render_curves=True))
    results = Path(results_path)
    out = Path(out_dir) if out_dir else results.parent / f"eval_{results.stem}"
    if cfg.data.format == "kitti":
        kitti_ap = importlib.import_module("bevkd.stages.kitti_ap")
        summary = kitti_ap.run(cfg, results, out)
        for key, value in summary.items():
            click.echo(f"{key}: {value}")
        click.echo(f"saved to {out}")
        return
    from bevkd.stages.evaluate import run

    summary = run(cfg, results, out)
    click.echo(
        f"nuScenes {summary['eval_set']} ({summary['num_samples']} samples): mAP {summary['mAP']:.4f}  NDS {summary['NDS']:.4f}"
    )
    errors = "  ".join(f"{k} {v:.3f}" for k, v in summary["tp_errors"].items())
    click.echo(f"mean TP errors: {errors}")
    for name, ap in summary["class_ap"].items():
        marker = "" if name in summary["gt_classes"] else "  (no GT in range)"
        click.echo(f"  {name:<22} AP {ap:.4f}{marker}")
    click.echo(f"saved metrics.json and summary.md to {out}")
