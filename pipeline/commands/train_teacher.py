"""``bevkd train-teacher``: train a LiDAR, fusion or label-encoder teacher."""

from __future__ import annotations

import click

from bevkd.pipeline.options import config_options, resolve


@click.command("train-teacher")
@config_options
def command(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Train the teacher that model.kind names (lidar | fusion | label_encoder) on the train
    split, then evaluate it on val (nuScenes devkit mAP/NDS, or KITTI AP|R40).

    Writes into train.out_dir: config.yaml + config.sha256, last.pt (resumable: rerun the
    same command after a crash), best.pt (the final weights with provenance), train_log.jsonl,
    loss.png and eval/ (metrics.json, summary.md). The label encoder needs
    model.checkpoint = a trained LiDAR teacher. Under torchrun it trains with DDP.

    \b
    Example:
      bevkd train-teacher --config configs/demo/lidar_teacher.yaml --set train.epochs=2
    """
    cfg = resolve(config_path, overrides)  # a bad config fails here, before torch is imported
    from bevkd.stages.train_teacher import run

    result = run(cfg)
    click.echo(f"checkpoint: {result.checkpoint}")
    if result.metrics:
        print_metrics(result.metrics)


def print_metrics(metrics: dict) -> None:
    if metrics.get("metric") == "waymo":
        from bevkd.eval.waymo import summary_text

        click.echo(summary_text(metrics))
        return
    if "mAP" in metrics:
        click.echo(f"mAP {metrics['mAP']:.4f}  NDS {metrics['NDS']:.4f}")
        for name, ap in metrics.get("class_ap", {}).items():
            click.echo(f"  {name:<22} AP {ap:.4f}")
    else:
        click.echo(str(metrics))
