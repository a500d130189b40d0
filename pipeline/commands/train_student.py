"""``bevkd train-student``: train a camera student against a teacher store."""

from __future__ import annotations

import click

from bevkd.pipeline.options import config_options, resolve


@click.command("train-student")
@config_options
def command(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Train a camera BEV student (model.kind camera) with the recipe student.recipe names
    (baseline | cmkd) against the store student.store, then evaluate it on val (nuScenes
    devkit mAP/NDS, or KITTI AP|R40).

    Start-up checks the store against the recipe (grid, classes, the fields it reads and
    their shapes) and leaves out frames the teacher skipped. student.unlabeled=true adds the
    unlabeled frames, which meet the teacher terms only. No teacher runs: every target comes
    from the store.

    Writes into train.out_dir: config.yaml + config.sha256, last.pt (resumable: rerun the
    same command after a crash), best.pt (the best validation by train.best_metric),
    train_log.csv / .jsonl, tensorboard/, loss.png and eval/ (metrics.json, summary.md).
    Under torchrun it trains with DDP (train.batch_size is per process).

    \b
    Examples:
      bevkd train-student --config configs/demo/student_cmkd.yaml
      bevkd train-student --config configs/demo/student_cmkd.yaml \\
          --set student.unlabeled=true --set train.out_dir=work/demo/student_cmkd_unlab
      torchrun --nproc_per_node 8 -m bevkd.pipeline.cli train-student --config F
    """
    from bevkd.pipeline.commands.train_teacher import print_metrics
    from bevkd.stages.train_student import run

    result = run(resolve(config_path, overrides))
    click.echo(
        f"best checkpoint: {result.checkpoint} (epoch {result.best['epoch']}, "
        f"{result.best['metric']} {result.best['value']:.4f})"
    )
    if result.metrics:
        print_metrics(result.metrics)
