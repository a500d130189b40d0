"""``bevkd evaluate``: score detections (nuScenes devkit, KITTI AP|R40, or Waymo AP/APH and
LET-3D-AP) from a results file,
a checkpoint run over the split, or a teacher store's cached boxes."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

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
    help="nuScenes results JSON, a KITTI results directory, or a bevkd waymo_results.json.",
)
@click.option(
    "--checkpoint",
    "checkpoint",
    default=None,
    type=click.Path(dir_okay=False),
    help="A trained teacher or student: run it over the val split (with its own config, "
    "--set applied last) and evaluate.",
)
@click.option(
    "--store",
    "store_url",
    default=None,
    help="A teacher store: score its cached boxes as detections (the pseudo-labels' quality) "
    "with the dataset config it was cached with (--config replaces it, --set applied last).",
)
@click.option("--boxes-field", default="boxes", show_default=True,
              help="With --store: the boxes field to score (boxes, fusion_boxes).")  # fmt: skip
@click.option("--score-threshold", "score_thresholds", multiple=True, metavar="T[,T...]",
              help="With --store: keep boxes with score >= T (default 0: all). Several (repeat "
              "the option or give 0.1,0.3,0.5) score each into <out>/score_<T>/ plus sweep.json.")  # fmt: skip
@click.option("--draw", default=4, show_default=True,
              help="With --checkpoint: PNGs of this many frames (BEV predictions vs GT and the "
              "teacher's cached boxes; boxes on the camera images).")  # fmt: skip
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where metrics.json and summary.md go (default: beside the results, eval_<name>/; "
    "for --store, <store>.eval/<split>_<field>/).",
)
@click.option(
    "--format",
    "fmt",
    default=None,
    type=click.Choice(["nuscenes", "kitti", "waymo"]),
    help="Dataset format (default: data.format); it picks the metric: the nuScenes devkit, "
    "KITTI AP|R40, or Waymo's AP/APH L1/L2 and LET-3D-AP/APH/APL.",
)
@click.option("--render-curves", is_flag=True, help="Also draw the devkit's PR/TP curves (slow).")
@click.option("--kitti-sampling", type=click.Choice(["exact", "devkit"]), default=None,
              help="KITTI AP|R40 (eval.kitti_sampling): 'exact' evaluates the definition at every "
              "score threshold (default); 'devkit' samples 41 thresholds as the official devkit "
              "and OpenPCDet do, bit for bit: use it to compare with published tables.")  # fmt: skip
def command(
    config_path: str | None,
    overrides: tuple[str, ...],
    data_root: str | None,
    results_path: str | None,
    checkpoint: str | None,
    store_url: str | None,
    boxes_field: str,
    score_thresholds: tuple[str, ...],
    out_dir: str | None,
    fmt: str | None,
    render_curves: bool,
    draw: int,
    kitti_sampling: str | None,
) -> None:
    """Evaluate detections against the dataset's GT and write metrics.json + summary.md.

    Give one of --results (a results file made elsewhere), --checkpoint (a trained teacher
    or student, run here over the val split with the config saved in the checkpoint, --set
    applied last) or --store (a teacher store's cached boxes, scored as detections on
    eval.eval_set: the pseudo-labels' own quality). A student trained on one dataset scores on
    another with the same rig: --set data.root=OTHER (and eval.eval_set / data.val_split for
    another split).

    \b
    Examples:
      bevkd evaluate --checkpoint work/demo/student_cmkd/best.pt
      bevkd evaluate --checkpoint work/demo/student_cmkd/best.pt --set data.root=/data/other
      bevkd evaluate --data work/demo/data --results results_nusc.json
      bevkd evaluate --store work/demo/teacher.zarr --set eval.eval_set=train
      bevkd evaluate --store work/demo/teacher.zarr --score-threshold 0.1,0.3,0.5
      bevkd evaluate --checkpoint work/demo/kitti/student_cmkd/best.pt --kitti-sampling devkit
      bevkd evaluate --checkpoint work/demo/waymo/student_cmkd/best.pt
    """
    if kitti_sampling:
        overrides = (*overrides, f"eval.kitti_sampling={kitti_sampling}")
    if sum(x is not None for x in (results_path, checkpoint, store_url)) != 1:
        raise click.UsageError("give exactly one of --results, --checkpoint and --store")
    if store_url is None and (score_thresholds or boxes_field != "boxes"):
        raise click.UsageError("--score-threshold and --boxes-field go with --store")
    if store_url:
        thresholds = _thresholds(score_thresholds)
        cfg_args = (config_path, overrides, data_root, fmt, render_curves)
        _evaluate_store(store_url, boxes_field, thresholds, cfg_args, out_dir)
        return
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
        kitti_ap = importlib.import_module("bevkd.eval.kitti_ap")
        _print(kitti_ap.run(cfg, results, out))
        click.echo(f"saved to {out}")
        return
    if cfg.data.format == "waymo":
        _print(_evaluate_waymo_results(cfg, results, out))
        click.echo(f"saved metrics.json and summary.md to {out}")
        return
    from bevkd.eval.nuscenes import run

    summary = run(cfg, results, out)
    _print(summary)
    click.echo(f"saved metrics.json and summary.md to {out}")


def _evaluate_waymo_results(cfg: Any, results: Path, out: Path) -> dict:
    from bevkd.eval import waymo
    from bevkd.eval.store_boxes import eval_frames

    frames = eval_frames(cfg, labelled_only=False)  # a file may cover the split's every frame
    detections, classes = waymo.read_results(results, frames)
    return waymo.evaluate(cfg, frames, detections, out, classes)


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


def _thresholds(values: tuple[str, ...]) -> list[float]:
    """``--score-threshold`` values, each one number or a comma-separated list."""
    out = []
    for text in (v for value in values for v in value.split(",") if v.strip()):
        try:
            out.append(float(text))
        except ValueError:
            raise click.BadParameter(
                f"{text!r} is not a number", param_hint="--score-threshold"
            ) from None
    return sorted(set(out)) or [0.0]


def _evaluate_store(
    url: str,
    field: str,
    thresholds: list[float],
    cfg_args: tuple[str | None, tuple[str, ...], str | None, str | None, bool],
    out_dir: str | None,
) -> None:
    from bevkd.eval import store_boxes
    from bevkd.storage.reader import open_store

    config_path, overrides, data_root, fmt, render_curves = cfg_args
    store = open_store(url)
    cfg = with_data_root(store_boxes.store_config(store, config_path, overrides), data_root, fmt)
    if render_curves:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, render_curves=True))
    out = (
        Path(out_dir)
        if out_dir
        else store_boxes.default_out_dir(url, cfg.eval.eval_set, field, thresholds)
    )
    if len(thresholds) == 1:
        summary = store_boxes.evaluate_store(cfg, store, field, out, thresholds[0])
        click.echo(f"detections: {summary['source']}")
        _skipped(summary["store"]["skipped_frames"])
        _print(summary)
        click.echo(f"saved to {out}")
        return
    results = store_boxes.sweep(cfg, store, field, thresholds, out)
    first = next(iter(results.values()))
    click.echo(
        f"store {url}, field {field}, '{cfg.eval.eval_set}' ({first['store']['num_frames']} frames)"
    )
    _skipped(first["store"]["skipped_frames"])
    click.echo(store_boxes.sweep_table(results))
    click.echo(f"saved sweep.json and score_<T>/ to {out}")


def _skipped(skipped: dict[str, str]) -> None:
    for token, reason in list(skipped.items())[:5]:
        click.echo(f"  skipped by the teacher, scored without boxes: {token} ({reason})")
    if len(skipped) > 5:
        click.echo(f"  ... and {len(skipped) - 5} more skipped frames (metrics.json lists them)")


def _print(summary: dict) -> None:
    if summary.get("metric") == "waymo":
        from bevkd.eval.waymo import summary_text

        click.echo(summary_text(summary))
        return
    if "mAP" not in summary:  # KITTI AP|R40
        from bevkd.eval.kitti_ap import format_table

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
