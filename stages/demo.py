"""Build what a cache config needs, then the embedded demo from an empty folder to a verified,
drawn teacher store and the students trained against it, with one results table.

``prepare_teachers`` generates the synthetic world at ``data.root`` when the config declares
one (``data.synthetic_preset``) and it is absent, and trains every missing teacher checkpoint
with the config ``cache.teacher_configs`` names for it. Each step is skipped when its output
exists, so a rerun after an interruption picks up where it stopped (training itself resumes
from ``last.pt``).
"""

from __future__ import annotations

from pathlib import Path

import click

from bevkd.pipeline.config import Config, load_config, with_overrides
from bevkd.pipeline.errors import BevkdError

DEMO_CACHE_CONFIG = Path("configs/demo/cache.yaml")
CHECKPOINT_FIELDS = {
    "lidar": "lidar_checkpoint",
    "fusion": "fusion_checkpoint",
    "label_encoder": "label_encoder_checkpoint",
}


def ensure_data(cfg: Config) -> None:
    """Generate the synthetic world the config declares, unless it is already there."""
    from bevkd.stages.make_demo_data import run as make_demo_data

    root = Path(cfg.data.root)
    marker = {"nuscenes": cfg.data.version, "kitti": "object", "waymo": cfg.data.train_split}
    present = (root / marker[cfg.data.format]).is_dir()
    if present:
        return
    if not cfg.data.synthetic_preset:
        raise BevkdError(
            f"dataset root {root} not found (data.root); point it at your {cfg.data.format} data"
        )
    click.echo(
        f"[build] writing the synthetic world ({cfg.data.synthetic_preset}, {cfg.data.format}) to {root}"
    )
    make_demo_data(root, cfg.data.synthetic_preset, 0, cfg.data.format, progress=True)


def ensure_teacher(cfg: Config, name: str) -> None:
    """Train teacher ``name`` into the checkpoint the cache config names, unless it exists."""
    checkpoint = Path(getattr(cfg.cache, CHECKPOINT_FIELDS[name]))
    if checkpoint.is_file():
        return
    configs = dict(cfg.cache.teacher_configs)
    if name not in configs:
        raise BevkdError(
            f"teacher checkpoint {checkpoint} not found and cache.teacher_configs names no config to train '{name}'"
        )
    from bevkd.stages.train_teacher import run as train

    overrides = [
        f"data.root={cfg.data.root}",
        f"data.synthetic_preset={cfg.data.synthetic_preset}",
        f"train.out_dir={checkpoint.parent}",
    ]
    if name == "label_encoder":  # trained through the frozen LiDAR teacher
        overrides.append(f"model.checkpoint={cfg.cache.lidar_checkpoint}")
    if name == "fusion":  # starts from the LiDAR teacher, as BEVFusion does
        overrides.append(f"model.init_from={cfg.cache.lidar_checkpoint}")
    teacher_cfg = load_config(configs[name], overrides)
    click.echo(
        f"[build] training the {name} teacher ({configs[name]}) -> {checkpoint.parent / 'best.pt'}"
    )
    result = train(teacher_cfg)
    if result.checkpoint != checkpoint:
        result.checkpoint.replace(checkpoint)
    if "mAP" in result.metrics:
        click.echo(
            f"[build] {name} teacher on val: mAP {result.metrics['mAP']:.3f}, NDS {result.metrics['NDS']:.3f}"
        )
    elif result.metrics.get("metric") == "waymo":
        mean = result.metrics["mean"]
        click.echo(
            f"[build] {name} teacher on val: mAPH L1 {mean['L1']['APH']:.3f}, L2 {mean['L2']['APH']:.3f}"
        )


def prepare_teachers(cfg: Config) -> Config:
    """Data plus every teacher checkpoint ``cfg.cache.teachers`` needs; returns ``cfg``."""
    ensure_data(cfg)
    order = [t for t in ("lidar", "fusion", "label_encoder") if t in cfg.cache.teachers]
    if {"label_encoder", "fusion"} & set(order) and "lidar" not in order:
        order.insert(
            0, "lidar"
        )  # the label encoder trains through it, the fusion teacher starts from it
    for name in order:
        ensure_teacher(cfg, name)
    return cfg


def demo_config(out: Path, all_teachers: bool = False) -> Config:
    """The demo cache config with every path under ``out``. By default only the LiDAR teacher
    (what the demo's baseline and CMKD students read) into ``out/teacher_lidar.zarr``;
    ``all_teachers``: LiDAR, fusion and label encoder into ``out/teacher.zarr``, the store of
    ``make cache-teacher``."""
    cfg = load_config(DEMO_CACHE_CONFIG)
    store = out / ("teacher.zarr" if all_teachers else "teacher_lidar.zarr")
    return with_overrides(
        cfg,
        [
            f"data.root={out / 'data'}",
            f"cache.lidar_checkpoint={out / 'teacher_lidar' / 'best.pt'}",
            f"cache.fusion_checkpoint={out / 'teacher_fusion' / 'best.pt'}",
            f"cache.label_encoder_checkpoint={out / 'teacher_label' / 'best.pt'}",
            f"store.url={store}",
            *([] if all_teachers else ["cache.teachers=[lidar]"]),
        ],
    )


def run_demo(
    out: Path = Path("work/demo"), students: bool = True, all_teachers: bool = False
) -> Path:
    """Data, teachers, store, verification, a picture, then (``students``) the baseline and
    CMKD students and the results table (``out/results.md``); returns the store URL."""
    from bevkd.datasets.dataset import find_frame
    from bevkd.stages.cache_teacher import run as cache
    from bevkd.storage.info import describe
    from bevkd.storage.reader import open_store
    from bevkd.storage.show import render_frame
    from bevkd.storage.verify import VerifyFailed, summarize, verify_store

    out = Path(out)
    cfg = prepare_teachers(demo_config(out, all_teachers))
    click.echo(f"[demo] caching {', '.join(cfg.cache.teachers)} into {cfg.store.url}")
    result = cache(cfg)
    click.echo(
        f"[demo] {result.frames} frames, {result.shards_written} shards written in "
        f"{result.seconds:.1f} s ({len(result.skipped)} skipped)"
    )
    report = verify_store(cfg.store.url)
    click.echo(f"[demo] verify: {summarize(report)}")
    if not report.ok:
        raise VerifyFailed(summarize(report))
    store = open_store(cfg.store.url)
    for line in describe(store):
        click.echo(line)
    first = next(i for i in range(len(store.tokens)) if store.has_label[i])
    gt = find_frame(cfg, store.tokens[first]).boxes
    picture = render_frame(store, first, out / "frame0.png", gt_boxes=gt)
    click.echo(f"[demo] wrote {picture}")
    if students:
        demo_students(out, cfg)
    return Path(cfg.store.url)


def demo_students(out: Path, cfg: Config) -> str:
    """Train the demo's student arms against the store and print (and save) the table."""
    import json

    from bevkd.stages.demo_students import results_table, train_students

    teacher = out / "teacher_lidar" / "eval" / "metrics.json"
    rows = {"LiDAR teacher": json.loads(teacher.read_text())} if teacher.is_file() else {}
    rows.update(train_students(out, cfg.store.url, cfg.data.root))
    table = results_table(rows)
    (out / "results.md").write_text(
        "# Demo: camera students against the cached LiDAR teacher (nuScenes devkit, val)\n\n"
        + table
        + "\n"
    )
    click.echo("[demo] val split, nuScenes devkit (one seed each):\n" + table)
    return table
