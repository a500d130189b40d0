"""``bevkd train-student``: train a camera student against a teacher store."""

from __future__ import annotations

from pathlib import Path

import click

from bevkd.pipeline.config import Config
from bevkd.pipeline.options import config_options, resolve


@click.command("train-student")
@config_options
@click.option("--build-missing", is_flag=True,
              help="If student.store does not exist, build it first: the synthetic world, the "
              "teachers and the cache, as --cache-config says (its data.root and store.url are "
              "taken from this config).")  # fmt: skip
@click.option("--cache-config", default="configs/demo/cache.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The stage-one config --build-missing runs.")  # fmt: skip
@click.option("--targets", type=click.Choice(["cached", "online"]), default=None,
              help="Where the teacher targets come from (train.targets): 'cached' reads them from "
              "student.store; 'online' runs the teachers that made the store inside every step, "
              "their checkpoints checked against the store's sha256 (to check a new store "
              "against its teachers, or to measure what the store saves).")  # fmt: skip
def command(
    config_path: str | None,
    overrides: tuple[str, ...],
    build_missing: bool,
    cache_config: str,
    targets: str | None,
) -> None:
    """Train a camera BEV student (model.kind camera, or camera_sim: SimDistill's simulated
    multi-modal student) with the recipe student.recipe names (baseline | cmkd | labeldistill |
    simdistill | focal | pseudo_label, or several joined by '+', e.g. cmkd+pseudo_label)
    against the store student.store, then evaluate it on val (nuScenes devkit mAP/NDS, or
    KITTI AP|R40). student.labeled_fraction keeps the GT of a seeded subset of the labelled
    frames only (an annotation budget; the rest become unlabelled frames).

    Start-up checks the store against the recipe (grid, classes, the fields it reads and
    their shapes) and leaves out frames the teacher skipped. student.unlabeled=true adds the
    unlabeled frames, which meet the teacher terms only. No teacher runs: every target comes
    from the store. With --targets online (train.targets=online) the teachers that made the
    store run inside every step instead, as the seed methods run them: the same recipe, the
    same frames, the reference the store is measured against.

    Writes into train.out_dir: config.yaml + config.sha256, last.pt (resumable: rerun the
    same command after a crash), best.pt (the best validation by train.best_metric),
    train_log.csv / .jsonl, tensorboard/, loss.png and eval/ (metrics.json, summary.md).
    Under torchrun it trains with DDP (train.batch_size is per process).

    \b
    Examples:
      bevkd train-student --config configs/demo/student_cmkd.yaml
      bevkd train-student --config configs/demo/student_simdistill.yaml --build-missing
      bevkd train-student --config configs/demo/student_pseudo_label.yaml   # 25% of the labels
      bevkd train-student --config configs/demo/student_cmkd.yaml --targets online \\
          --set train.out_dir=work/demo/student_cmkd_online
      bevkd train-student --config configs/demo/student_cmkd.yaml \\
          --set student.unlabeled=true --set train.out_dir=work/demo/student_cmkd_unlab
      torchrun --nproc_per_node 8 -m bevkd.pipeline.cli train-student --config F
    """
    cfg = resolve(config_path, (*overrides, *([f"train.targets={targets}"] if targets else [])))
    from bevkd.pipeline.commands.train_teacher import print_metrics
    from bevkd.stages.train_student import run

    if build_missing:
        _build_store(cfg, cache_config)
    result = run(cfg)
    click.echo(
        f"best checkpoint: {result.checkpoint} (epoch {result.best['epoch']}, "
        f"{result.best['metric']} {result.best['value']:.4f})"
    )
    if result.metrics:
        print_metrics(result.metrics)


def _build_store(cfg: Config, cache_config: str) -> None:
    """Data, teachers and store for ``cfg`` (cache_config's teachers), unless the store exists."""
    from bevkd.storage.remote import is_local

    if not is_local(cfg.student.store) or Path(cfg.student.store, "zarr.json").is_file():
        return
    from bevkd.pipeline.config import load_config
    from bevkd.stages.cache_teacher import run as cache
    from bevkd.stages.demo import prepare_teachers

    cache_cfg = load_config(
        cache_config, [f"data.root={cfg.data.root}", f"store.url={cfg.student.store}"]
    )
    click.echo(f"[build] store {cfg.student.store} not found: building it ({cache_config})")
    cache(prepare_teachers(cache_cfg))
