"""Train a teacher (``model.kind``: lidar, fusion or label_encoder) on the labelled train split,
under the label budget of ``data.labeled_fraction`` / ``data.labeled_tokens`` when one is set
(the hidden frames are never read); every checkpoint records the labelled tokens it saw.

The loop is :func:`bevkd.stages.loop.fit`, shared with the students: AMP on CUDA, gradient
accumulation, DDP under torchrun, a checkpoint every epoch and exact resume, logs, validation
and ``best.pt`` by ``train.best_metric``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from bevkd.datasets import budget
from bevkd.datasets.dataset import FrameDataset, load_frames
from bevkd.datasets.frame import collate
from bevkd.models.checkpoint import init_from_checkpoint, load_checkpoint
from bevkd.pipeline.config import Config, save_resolved
from bevkd.pipeline.distributed import cleanup_distributed, setup_distributed
from bevkd.pipeline.errors import BevkdError
from bevkd.stages.loop import NonFiniteLoss, TrainResult, fit

__all__ = ["NonFiniteLoss", "TeacherObjective", "TrainResult", "run"]


class TeacherObjective(nn.Module):
    """A teacher's own detection loss (its ``loss(output, batch)``) as the loop's objective."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        model: Any = self.model
        return model.loss(model(batch), batch)  # type: ignore[no-any-return]


def run(cfg: Config) -> TrainResult:
    """Train ``cfg.model.kind`` and evaluate it on the val split; returns where it all went."""
    from bevkd.models.builders import build_teacher
    from bevkd.stages.predict import evaluate_model

    info = setup_distributed()
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    if info.is_main:
        save_resolved(cfg, cfg.train.out_dir)
    torch.manual_seed(cfg.train.seed)
    model: nn.Module = build_teacher(cfg)
    if cfg.model.init_from:
        copied, skipped = init_from_checkpoint(model, cfg.model.kind, cfg.model.init_from)
        if info.is_main:
            tqdm.write(
                f"initialised {copied} tensors from {cfg.model.init_from} ({skipped} did not fit)"
            )
    dataset, seen = budget_dataset(cfg, say=tqdm.write if info.is_main else (lambda _: None))

    def validate(trained: nn.Module, out: Path) -> dict[str, Any]:
        return evaluate_model(trained, cfg, out)

    try:
        return fit(cfg, TeacherObjective(model), dataset, collate, info, validate,
                   record={"labeled_tokens": seen})  # fmt: skip
    finally:
        cleanup_distributed()


def budget_dataset(cfg: Config, say: Any = print) -> tuple[FrameDataset, list[str] | None]:
    """The train split under ``cfg.data``'s label budget: only the kept labelled frames (a
    hidden frame is never loaded, so its GT never reaches the teacher), and the labelled tokens
    this teacher will have seen, its own and those its source checkpoints recorded
    (:func:`bevkd.datasets.budget.union_record`; None when a source recorded none)."""
    frames = load_frames(cfg, "train")
    chosen = budget.choose(cfg.data, frames)
    if chosen.active:
        hidden = set(chosen.hidden)
        frames = [f for f in frames if f.token not in hidden]
        say(f"[train-teacher] {chosen.describe(cfg.data)}; the {len(hidden)} others are not read")
    sources = [
        load_checkpoint(path).get("labeled_tokens")
        for path in (cfg.model.checkpoint, cfg.model.init_from)
        if path
    ]
    seen = budget.union_record(chosen.kept, sources)
    unlabelled = sum(not f.has_label for f in frames)
    if unlabelled:  # a split that mixes both (Waymo frames without lidar_box rows, KITTI raw)
        frames = [f for f in frames if f.has_label]
        say(
            f"[train-teacher] {len(frames)} labelled train frames; {unlabelled} unlabelled ones are not read"
        )
    if not frames:
        raise BevkdError(
            f"the train split {cfg.data.train_split!r} of {cfg.data.root} has no labelled frame "
            "to train a teacher on"
        )
    dataset = FrameDataset(frames, cfg.data, train=True, seed=cfg.train.seed)  # indexed once
    return dataset, seen
