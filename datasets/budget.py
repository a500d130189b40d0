"""The label budget: which labelled train frames keep their GT, for teachers and students alike.

``data.labeled_tokens`` (a file of frame tokens, one a line) or ``data.labeled_fraction`` with
``data.label_seed`` (a fixed subset drawn over the sorted labelled tokens) picks the kept frames.
A teacher trains on the kept frames only and never loads a hidden one; a student keeps the
hidden frames as unlabelled ones (their boxes dropped before any sample is loaded). The kept
tokens are recorded in every checkpoint (``labeled_tokens``), so a store can say what its
teachers saw, and a student under a budget can refuse a teacher that saw what it hides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bevkd.datasets.frame import Frame
from bevkd.pipeline.config import DataConfig
from bevkd.pipeline.errors import BevkdError


@dataclass(frozen=True)
class LabelBudget:
    """The outcome of a budget over one frame list: ``kept`` labelled tokens keep their GT,
    ``hidden`` labelled tokens lose it (both sorted). ``active`` is False when nothing is
    hidden (fraction 1, no token file)."""

    kept: tuple[str, ...]
    hidden: tuple[str, ...]

    @property
    def active(self) -> bool:
        return bool(self.hidden)

    def describe(self, data: DataConfig) -> str:
        how = (
            f"data.labeled_tokens {data.labeled_tokens}"
            if data.labeled_tokens
            else f"data.labeled_fraction {data.labeled_fraction:g}, label_seed {data.label_seed}"
        )
        return (
            f"label budget: {len(self.kept)} of {len(self.kept) + len(self.hidden)} labelled "
            f"train frames keep their GT ({how})"
        )


def read_token_file(path: str | Path) -> list[str]:
    """Tokens of a ``data.labeled_tokens`` file: one a line, blank lines and ``#`` comments
    skipped."""
    path = Path(path)
    if not path.is_file():
        raise BevkdError(f"data.labeled_tokens: no such file {path}")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def choose(data: DataConfig, frames: Iterable[Frame]) -> LabelBudget:
    """Which labelled ``frames`` keep their GT under ``data``'s budget. A token file naming a
    frame that is not a labelled frame of this list is an error naming it; a fraction keeps
    ``round(fraction * n)`` frames (at least one), drawn with ``label_seed`` over the tokens in
    sorted order, so the subset depends on the frame set, not its listing order."""
    labelled = sorted(f.token for f in frames if f.has_label)
    if data.labeled_tokens:
        wanted = read_token_file(data.labeled_tokens)
        unknown = sorted(set(wanted) - set(labelled))
        if unknown:
            raise BevkdError(
                f"data.labeled_tokens {data.labeled_tokens}: {len(unknown)} tokens are not "
                f"labelled train frames of {data.root} (first: {unknown[:3]})"
            )
        kept = set(wanted)
    elif data.labeled_fraction >= 1.0 or not labelled:
        kept = set(labelled)
    else:
        count = max(1, round(data.labeled_fraction * len(labelled)))
        chosen = np.random.default_rng(data.label_seed).choice(
            len(labelled), size=count, replace=False
        )
        kept = {labelled[i] for i in chosen}
    return LabelBudget(tuple(sorted(kept)), tuple(t for t in labelled if t not in kept))


def hide_labels(frames: list[Frame], budget: LabelBudget) -> list[Frame]:
    """``frames`` with the hidden ones turned into unlabelled frames: no boxes, no labels,
    ``has_label`` false (before any sample is loaded, so their GT never reaches a batch)."""
    hidden = set(budget.hidden)
    return [
        dataclasses.replace(
            f, has_label=False, boxes=f.boxes[:0], labels=f.labels[:0],
            num_lidar_pts=f.num_lidar_pts[:0],
        )
        if f.token in hidden
        else f
        for f in frames
    ]  # fmt: skip


def union_record(own: Iterable[str], sources: Iterable[Any]) -> list[str] | None:
    """The labelled tokens a model has seen: its own and those recorded by every checkpoint it
    was built from (the label encoder's frozen LiDAR neck and head, the fusion teacher's
    ``init_from``). None when a source does not record them: then nobody knows."""
    seen = set(own)
    for record in sources:
        if record is None:
            return None
        seen.update(record)
    return sorted(seen)
