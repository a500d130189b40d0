"""The embedded demo: everything from an empty folder to a verified teacher store.

Each step is skipped when its output already exists, so ``make demo`` after an interruption
picks up where it stopped (training itself resumes from ``last.pt``).
"""

from __future__ import annotations

from pathlib import Path

import click

from bevkd.pipeline.config import Config, load_config

DEMO_CONFIGS = Path("configs/demo")
TEACHER_CONFIGS = {
    "lidar": "lidar_teacher.yaml",
    "label_encoder": "label_encoder.yaml",
    "fusion": "fusion_teacher.yaml",
}


def _out_overrides(out: Path) -> list[str]:
    """Point every demo path at ``out`` (the configs say work/demo)."""
    return [f"data.root={out / 'data'}"]


def ensure_demo_data(cfg: Config) -> None:
    root = Path(cfg.data.root)
    if (root / cfg.data.version / "sample.json").is_file():
        return
    from bevkd.datasets.synthetic import generate

    click.echo(f"[demo] writing the synthetic world (nuScenes format) to {root}")
    generate(root, preset="demo", seed=0, fmt="nuscenes")


def ensure_teacher(name: str, checkpoint: str, out: Path) -> None:
    """Train the demo teacher ``name`` unless ``checkpoint`` exists."""
    if Path(checkpoint).is_file():
        return
    from bevkd.stages.train_teacher import run as train

    overrides = [*_out_overrides(out), f"train.out_dir={Path(checkpoint).parent}"]
    if name == "label_encoder":
        overrides.append(f"model.checkpoint={out / 'teacher_lidar' / 'best.pt'}")
    cfg = load_config(DEMO_CONFIGS / TEACHER_CONFIGS[name], overrides)
    click.echo(f"[demo] training the {name} teacher -> {checkpoint}")
    result = train(cfg)
    if result.metrics:
        click.echo(
            f"[demo] {name} teacher on val: mAP {result.metrics.get('mAP', float('nan')):.3f}"
        )


def prepare_teachers(
    cache_config: str | Path, overrides: tuple[str, ...] = (), out: Path = Path("work/demo")
) -> Config:
    """Demo data plus every teacher checkpoint the cache config names; returns the cache config."""
    out = Path(out)
    paths = [
        f"cache.lidar_checkpoint={out / 'teacher_lidar' / 'best.pt'}",
        f"cache.label_encoder_checkpoint={out / 'teacher_label' / 'best.pt'}",
        f"cache.fusion_checkpoint={out / 'teacher_fusion' / 'best.pt'}",
        f"store.url={out / 'teacher.zarr'}",
    ]
    cfg = load_config(cache_config, [*_out_overrides(out), *paths, *overrides])
    ensure_demo_data(cfg)
    order = [t for t in ("lidar", "fusion", "label_encoder") if t in cfg.cache.teachers]
    if "label_encoder" in order and "lidar" not in order:
        order.insert(0, "lidar")  # the label encoder is trained through the LiDAR teacher
    checkpoints = {
        "lidar": cfg.cache.lidar_checkpoint,
        "fusion": cfg.cache.fusion_checkpoint,
        "label_encoder": cfg.cache.label_encoder_checkpoint,
    }
    for name in order:
        ensure_teacher(name, checkpoints[name], out)
    return cfg


def run_demo(out: Path = Path("work/demo")) -> Path:
    """Data, teachers, store, verification and a picture; returns the store URL."""
    from bevkd.stages.cache_teacher import run as cache
    from bevkd.storage.info import describe
    from bevkd.storage.reader import open_store
    from bevkd.storage.show import render_frame
    from bevkd.storage.verify import VerifyFailed, summarize, verify_store

    out = Path(out)
    cfg = prepare_teachers(DEMO_CONFIGS / "cache.yaml", out=out)
    click.echo(f"[demo] caching {', '.join(cfg.cache.teachers)} into {cfg.store.url}")
    result = cache(cfg)
    click.echo(
        f"[demo] {result.frames} frames cached in {result.seconds:.1f} s ({len(result.skipped)} skipped)"
    )
    report = verify_store(cfg.store.url)
    click.echo(f"[demo] verify: {summarize(report)}")
    if not report.ok:
        raise VerifyFailed(summarize(report))
    store = open_store(cfg.store.url)
    for line in describe(store):
        click.echo(line)
    first = next(i for i in range(len(store.tokens)) if store.has_label[i])
    frames = {f.token: f for f in load_frames_any(cfg)}
    picture = render_frame(
        store, first, out / "frame0.png", gt_boxes=frames[store.tokens[first]].boxes
    )
    click.echo(f"[demo] wrote {picture}")
    return Path(cfg.store.url)


def load_frames_any(cfg: Config) -> list:
    from bevkd.datasets.dataset import load_frames

    return [f for role in ("train", "val") for f in load_frames(cfg, role)]
