"""Train a teacher (``model.kind``: lidar, fusion or label_encoder) on the labelled train split.

One readable loop: AMP on CUDA, gradient accumulation, DDP under torchrun, a checkpoint at
every epoch end and resume from it, a progress bar and a JSON-lines log. Resuming after a
kill repeats the interrupted epoch from its start with the same shuffle and augmentation
draws, so the result is the one an uninterrupted run gives.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from bevkd.datasets.dataset import FrameDataset, build_dataset
from bevkd.datasets.frame import collate
from bevkd.models.checkpoint import init_from_checkpoint, load_checkpoint, save_checkpoint
from bevkd.models.targets import NonFiniteLossError
from bevkd.pipeline.config import Config, save_resolved
from bevkd.pipeline.distributed import (
    DistInfo,
    all_reduce_mean,
    cleanup_distributed,
    setup_distributed,
)
from bevkd.pipeline.errors import BevkdError


class NonFiniteLoss(BevkdError, FloatingPointError):
    """Training produced a NaN/inf loss term; the message names the step and the term."""


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    checkpoint: Path
    epochs: int
    steps: int
    metrics: dict[str, Any]


def _loader(
    dataset: FrameDataset, cfg: Config, info: DistInfo, epoch: int
) -> torch.utils.data.DataLoader:
    """The epoch's loader over the (once-built) train dataset."""
    dataset.set_epoch(epoch)
    # The shuffle order is a function of (seed, epoch): a resumed epoch sees the same order.
    generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch)
    sampler: torch.utils.data.Sampler
    if info.enabled:
        sampler = torch.utils.data.DistributedSampler(
            dataset, shuffle=True, seed=cfg.train.seed, drop_last=True
        )
        sampler.set_epoch(epoch)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=cfg.train.num_workers,
        collate_fn=collate,
        drop_last=len(dataset) >= cfg.train.batch_size,
        pin_memory=info.device.type == "cuda",
    )


def _raw(model: nn.Module) -> Any:
    """The teacher inside DDP (typed Any: teachers add ``loss``/``decode`` to nn.Module)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def run(cfg: Config) -> TrainResult:
    """Train ``cfg.model.kind`` and evaluate it on the val split; returns where it all went."""
    from bevkd.models.builders import build_teacher

    info = setup_distributed()
    out = Path(cfg.train.out_dir)
    if info.is_main:
        save_resolved(cfg, out)
    torch.manual_seed(cfg.train.seed)
    model: nn.Module = build_teacher(cfg)
    if cfg.model.init_from:
        copied, skipped = init_from_checkpoint(model, cfg.model.kind, cfg.model.init_from)
        if info.is_main:
            tqdm.write(
                f"initialised {copied} tensors from {cfg.model.init_from} ({skipped} did not fit)"
            )
    model = model.to(info.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    dataset = build_dataset(cfg, "train")  # indexed once, not once per epoch
    steps_per_epoch = max(1, len(_loader(dataset, cfg, info, 0)) // cfg.train.grad_accum)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=cfg.train.lr,
        total_steps=cfg.train.epochs * steps_per_epoch,
        pct_start=0.3,
    )
    use_amp = cfg.train.amp and info.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, step = 0, 0
    last = out / "last.pt"
    if last.is_file():  # resume
        state = load_checkpoint(last, map_location=info.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        torch.set_rng_state(state["rng"])
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

    log = (out / "train_log.jsonl").open("a") if info.is_main else None
    for epoch in range(start_epoch, cfg.train.epochs):
        model.train()
        loader = _loader(dataset, cfg, info, epoch)
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
            disable=not info.is_main,
            leave=False,
        )
        started = time.perf_counter()
        for i, batch in enumerate(bar):
            batch = batch.to(info.device)
            where = f"step {step} (epoch {epoch + 1}, batch {i}, frames {', '.join(batch.tokens)})"
            with torch.autocast(info.device.type, dtype=torch.float16, enabled=use_amp):
                output = model(batch)
                try:
                    terms = _raw(model).loss(output, batch)
                except NonFiniteLossError as exc:
                    raise NonFiniteLoss(f"{where}: {exc}") from None
            for name, value in terms.items():
                if not torch.isfinite(value):
                    raise NonFiniteLoss(f"{where}: loss term '{name}' is {value.item()}")
            loss = sum(terms.values())
            scaler.scale(loss / cfg.train.grad_accum).backward()
            if (i + 1) % cfg.train.grad_accum:
                continue
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if scheduler.last_epoch < scheduler.total_steps:
                scheduler.step()
            step += 1
            values = {k: all_reduce_mean(v, info).item() for k, v in terms.items()}
            bar.set_postfix(loss=f"{sum(values.values()):.3f}")
            if log and (step % cfg.train.log_every == 0 or i == len(loader) - 1):
                row = {"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0], **values}
                log.write(json.dumps(row) + "\n")
                log.flush()
        if info.is_main:
            elapsed = time.perf_counter() - started
            tqdm.write(
                f"epoch {epoch + 1}/{cfg.train.epochs}: {len(loader)} batches in {elapsed:.1f} s, loss {sum(values.values()):.4f}"
            )
            if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == cfg.train.epochs:
                save_checkpoint(
                    last,
                    _raw(model),
                    cfg,
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict(),
                    epoch=epoch,
                    step=step,
                    rng=torch.get_rng_state(),
                )
                if cfg.train.keep_checkpoints:
                    shutil.copyfile(last, out / f"epoch_{epoch + 1:03d}.pt")
    if log:
        log.close()

    metrics: dict[str, Any] = {}
    final = out / "best.pt"
    if info.is_main:
        save_checkpoint(final, _raw(model), cfg, epoch=cfg.train.epochs - 1, step=step)
        from bevkd.stages.plots import plot_loss_curve
        from bevkd.stages.predict import evaluate_model

        plot_loss_curve(out / "train_log.jsonl", out / "loss.png")
        metrics = evaluate_model(_raw(model), cfg, out / "eval")
    cleanup_distributed()
    return TrainResult(out, final, cfg.train.epochs, step, metrics)
