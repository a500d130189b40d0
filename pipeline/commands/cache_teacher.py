"""``bevkd cache-teacher``: stage one."""

from __future__ import annotations

import click

from bevkd.pipeline.options import config_options, resolve


@click.command("cache-teacher")
@config_options
@click.option(
    "--store",
    "store_url",
    default=None,
    help="Store URL (path, s3://, gs://, memory://); overrides store.url.",
)
@click.option(
    "--scheduler",
    default=None,
    help="Address of a running dask scheduler; default: start a LocalCluster.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="LocalCluster worker processes (0 = run in this process).",
)
@click.option(
    "--build-missing",
    is_flag=True,
    help="First generate the synthetic world if data.synthetic_preset declares one and it is absent, "
    "and train missing teacher checkpoints with the configs in cache.teacher_configs.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Verify the store, then rewrite what is bad: array metadata, the frame index, and every "
    "shard with a corrupt, missing or NaN chunk; then finalize it again.",
)
@click.option(
    "--retry-skipped",
    is_flag=True,
    help="Rewrite the shards that hold skipped frames (e.g. after fixing their input files), "
    "then finalize again.",
)
def command(
    config_path: str | None,
    overrides: tuple[str, ...],
    store_url: str | None,
    scheduler: str | None,
    workers: int | None,
    build_missing: bool,
    repair: bool,
    retry_skipped: bool,
) -> None:
    """Run the teachers in cache.teachers (lidar, fusion, label_encoder) once over the frames of
    cache.splits (labelled train/val keyframes and unlabeled sweeps or KITTI raw frames) and
    write their BEV features, heatmaps, box regressions, decoded boxes and label embeddings
    into a chunked, compressed, checksummed Zarr store.

    Any torch module can be a teacher too: list its factory in cache.teachers as
    my_pkg.teachers:build or path/to/file.py:build (docs/teachers.md). What it gives is
    checked against what it declares before each shard is written, and the store records the
    factory, the sha256 of its source file and of its weights.

    One dask task per shard (store.shard_size frames), retried on failure. Rerunning after a
    crash resumes: written shards are skipped and the result equals an uninterrupted run.
    Each worker (cache.n_workers; 0 runs in this process) runs cache.threads_per_worker shard
    tasks at once: by default 2 with CUDA, whose teacher forwards take turns on the GPU while
    the other task loads frames or writes its shard, and 1 on CPU, where the forward's
    threads already use every core.
    Frames that fail to load (a missing or truncated file, a point file with no points or with
    NaN/inf) are recorded as skipped with their reason (see `bevkd store info`); once their
    inputs are fixed, --retry-skipped rewrites their shards. A resume refuses a store that
    other teacher weights, cache settings, frames or code began, naming what differs.
    `bevkd store verify` finds bad chunks; --repair rewrites them.

    \b
    Examples:
      bevkd cache-teacher --config configs/demo/cache.yaml --build-missing   # the demo, from nothing
      bevkd cache-teacher --config configs/demo/cache.yaml --store s3://bucket/teacher.zarr
      bevkd cache-teacher --config configs/nuscenes/cache.yaml --scheduler tcp://host:8786
      bevkd cache-teacher --config configs/demo/cache.yaml --repair          # after a failed verify
      bevkd cache-teacher --config configs/demo/cache.yaml --set "cache.teachers=[my_teacher.py:build]"
    """
    extra = list(overrides)
    if store_url:
        extra.append(f"store.url={store_url}")
    if scheduler:
        extra.append(f"cache.scheduler={scheduler}")
    if workers is not None:
        extra.append(f"cache.n_workers={workers}")
    cfg = resolve(config_path, tuple(extra))
    if build_missing:
        from bevkd.stages.demo import prepare_teachers

        prepare_teachers(cfg)
    from bevkd.stages.cache_teacher import run

    result = run(cfg, repair=repair, retry_skipped=retry_skipped)
    click.echo(
        f"store {result.url}: {result.frames} frames, {result.shards_written} shards written this run, "
        f"{len(result.skipped)} skipped, {result.seconds:.1f} s"
    )
    if result.skipped:
        first, reason = next(iter(sorted(result.skipped.items())))
        click.echo(
            f"skipped frames (first: {first}: {reason}); see `bevkd store info {result.url}`, "
            "and rerun with --retry-skipped once their inputs are fixed"
        )
