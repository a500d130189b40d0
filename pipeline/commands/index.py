"""``bevkd index``: build (or reuse) the frame index of a dataset root and show it."""

from __future__ import annotations

import dataclasses

import click

from bevkd.pipeline.config import Config
from bevkd.pipeline.options import config_options, resolve


def with_data_root(cfg: Config, data: str | None, fmt: str | None = None) -> Config:
    """``cfg`` with ``--data`` / ``--format`` applied to the data section (they beat --set)."""
    data_cfg = cfg.data
    if data:
        data_cfg = dataclasses.replace(data_cfg, root=data)
    if fmt:
        data_cfg = dataclasses.replace(data_cfg, format=fmt)
    return dataclasses.replace(cfg, data=data_cfg)


@click.command("index")
@config_options
@click.option("--data", "data_root", default=None, help="Dataset root (overrides data.root).")
@click.option("--rebuild", is_flag=True, help="Rebuild the nuScenes index even if it is current.")
@click.option("--split", default=None, help="Also list the first frames of this split.")
@click.option("--limit", default=5, show_default=True, help="How many frames --split lists.")
def command(
    config_path: str | None,
    overrides: tuple[str, ...],
    data_root: str | None,
    rebuild: bool,
    split: str | None,
    limit: int,
) -> None:
    """Build or show the frame index of a dataset root (nuScenes: cached as JSON)."""
    cfg = with_data_root(resolve(config_path, overrides), data_root)
    if cfg.data.format == "nuscenes":
        from bevkd.datasets.nuscenes_index import INDEX_SCHEMA_VERSION, load_index

        index = load_index(cfg.data, rebuild=rebuild)
        where = index.path or "not saved: no writable location"
        click.echo(
            f"index {where} (schema {INDEX_SCHEMA_VERSION}, {cfg.data.version}, built in {index.body['build_seconds']} s)"
        )
        splits = {name: index.frames(name) for name in index.splits}
    else:
        from bevkd.datasets.dataset import load_frames, split_name

        click.echo(f"{cfg.data.format} root {cfg.data.root} (no cached index)")
        splits = {
            split_name(cfg.data, role): load_frames(cfg, role)
            for role in ("train", "val", "unlabeled")
        }
    click.echo(f"{'split':<12}{'frames':>8}{'labeled':>9}{'boxes':>8}{'scenes':>8}")
    for name, frames in splits.items():
        labeled = sum(f.has_label for f in frames)
        boxes = sum(len(f.boxes) for f in frames)
        scenes = len({f.scene for f in frames})
        click.echo(f"{name:<12}{len(frames):>8}{labeled:>9}{boxes:>8}{scenes:>8}")
    if split is not None:
        if split not in splits:
            raise click.BadParameter(
                f"no split '{split}' (splits: {', '.join(splits)})", param_hint="--split"
            )
        for frame in splits[split][:limit]:
            cams = ",".join(c.name for c in frame.cameras)
            click.echo(
                f"{frame.token}  scene={frame.scene}  t={frame.timestamp}  boxes={len(frame.boxes)}  "
                f"sweeps={len(frame.sweeps)}  cameras={cams}"
            )
