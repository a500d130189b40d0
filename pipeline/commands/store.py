"""``bevkd store``: inspect, verify, copy and draw teacher stores (any URL: path, s3://, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def _remote_options(
    prefix: str = "", what: str = "the store"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--[prefix-]storage-options JSON and --[prefix-]endpoint URL (S3-compatible endpoint)."""
    dash = f"{prefix}-" if prefix else ""
    under = f"{prefix}_" if prefix else ""

    def add(func: Callable[..., Any]) -> Callable[..., Any]:
        func = click.option(
            f"--{dash}endpoint",
            f"{under}endpoint",
            default=None,
            metavar="URL",
            help=f"S3-compatible endpoint of {what} (sets endpoint_url), e.g. http://127.0.0.1:9000.",
        )(func)
        return click.option(
            f"--{dash}storage-options",
            f"{under}storage_options",
            default=None,
            metavar="JSON",
            help=f'fsspec options of {what} as JSON, e.g. \'{{"key": "...", "secret": "..."}}\'.',
        )(func)

    return add


def _options(text: str | None, endpoint: str | None) -> dict[str, Any]:
    from bevkd.storage.remote import parse_storage_options

    return parse_storage_options(text, endpoint)


@click.group("store")
def command() -> None:
    """Inspect, verify, copy and draw teacher stores."""


@command.command("info")
@click.argument("url")
@_remote_options()
def info(url: str, storage_options: str | None, endpoint: str | None) -> None:
    """Schema, provenance, fields (sizes, codecs, errors), completeness and skipped frames."""
    from bevkd.storage.info import describe
    from bevkd.storage.reader import open_store

    for line in describe(open_store(url, storage_options=_options(storage_options, endpoint))):
        click.echo(line)


@command.command("verify")
@click.argument("url")
@_remote_options()
def verify(url: str, storage_options: str | None, endpoint: str | None) -> None:
    """Check a store against what its writer recorded: the root attrs' checksum, every
    declared array's metadata, the frame index, every chunk of every written shard (crc32c,
    missing, NaN) and completeness. Names bad frames, shards and arrays; non-zero exit.
    `bevkd cache-teacher --repair` (with the store's config) rewrites what is bad."""
    from bevkd.storage.verify import VerifyFailed, summarize, verify_store

    report = verify_store(url, _options(storage_options, endpoint))
    for problem in report.problems:
        click.echo(f"  {problem}")
    if report.incomplete_shards:
        click.echo(f"  shards not written: {report.incomplete_shards[:50]}")
    for note in report.notes:
        click.echo(f"  note: {note}")
    if report.leftover_partials:
        click.echo(
            f"  note: {report.leftover_partials} leftover .partial temp files (harmless; from a killed writer)"
        )
    if not report.ok:
        raise VerifyFailed(summarize(report))
    click.echo(summarize(report))


@command.command("copy")
@click.argument("src")
@click.argument("dst")
@_remote_options("src", "the source")
@_remote_options("dst", "the destination")
def copy(src: str, dst: str, src_storage_options: str | None, src_endpoint: str | None,
         dst_storage_options: str | None, dst_endpoint: str | None) -> None:  # fmt: skip
    """Copy a store between any two URLs (resumable: rerun to continue), then verify DST."""
    from bevkd.storage.copy import copy_store

    result = copy_store(
        src,
        dst,
        _options(src_storage_options, src_endpoint),
        _options(dst_storage_options, dst_endpoint),
    )
    click.echo(
        f"copied {result.copied} objects ({result.bytes_copied / 1e6:.1f} MB), {result.skipped} already there; "
        f"verified: {result.report.frames_checked} frames, {result.report.chunks_checked} chunks ok"
    )


@command.command("show")
@click.argument("url")
@click.option("--frame", "frame", required=True, help="Frame index or token.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--gt", "gt", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Optional .npy of GT boxes (N, 9+) in the ego frame, drawn in green.")  # fmt: skip
@click.option(
    "--score", "score", default=0.3, show_default=True, help="Draw cached boxes above this score."
)
@click.option("--with-gt", is_flag=True,
              help="Draw the frame's GT from the dataset the store was made from (its provenance config).")  # fmt: skip
@_remote_options()
def show(url: str, frame: str, out: str, gt: str | None, score: float, with_gt: bool,
         storage_options: str | None, endpoint: str | None) -> None:  # fmt: skip
    """Draw one frame: BEV feature energy, heatmaps, cached boxes (over GT if given)."""
    import numpy as np

    from bevkd.storage.reader import open_store
    from bevkd.storage.show import render_frame

    store = open_store(url, storage_options=_options(storage_options, endpoint))
    which: int | str = int(frame) if frame.lstrip("-").isdigit() else frame
    gt_boxes = np.load(gt) if gt else None
    if with_gt:
        gt_boxes = gt_from_provenance(store, which)
    path = render_frame(store, which, out, gt_boxes=gt_boxes, score_threshold=score)
    click.echo(f"wrote {path}")


def gt_from_provenance(store: Any, frame: int | str) -> Any:
    """GT boxes (N, 9) in the ego frame of a store frame, read from the dataset named by the
    config saved in the store's provenance."""
    import yaml

    from bevkd.datasets.dataset import find_frame
    from bevkd.pipeline.config import recorded_config

    cfg = recorded_config(yaml.safe_load(store.provenance["config"]))
    i = store.index_of(frame) if isinstance(frame, str) else int(frame)
    return find_frame(cfg, store.tokens[i]).boxes
