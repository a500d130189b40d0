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
        click.echo(f"[demo] {name} teacher on val: mAP {result.metrics.get('mAP', float('nan')):.3f}")


def prepare_teachers(cache_config: str | Path, overrides: tuple[str, ...] = (), out: Path = Path("work/demo")) -> Config:
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
