"""One training loop for teachers and students (torchvision ``references/detection`` style).

``fit`` trains an *objective*: an ``nn.Module`` whose ``forward(batch)`` returns named loss
terms, holding the deployable network as ``objective.model`` (plus, for students, the
recipe's adaptors). Visible in one function: AMP on CUDA, gradient accumulation (``no_sync``
under DDP on all but the last micro-batch), torchrun DDP, a one-cycle LR schedule, a
checkpoint every epoch (model, the rest of the objective, optimizer, scheduler, scaler, RNG,
epoch, step, best metric), CSV + JSON-lines + TensorBoard logs, a progress bar with samples/s
and the terms, a stop on a non-finite loss naming step, frames and term, validation every
``train.eval_every`` epochs and at the end, and ``best.pt`` chosen by ``train.best_metric``.

Exact resume: a rerun loads ``last.pt`` and repeats the interrupted epoch from its start. The
frame order and augmentation are functions of (seed, epoch, index) (:mod:`bevkd.datasets.sampler`),
so the resumed run reaches the uninterrupted run's weights.
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bevkd.datasets.sampler import EpochBatches
from bevkd.models.checkpoint import load_checkpoint, save_checkpoint
from bevkd.models.targets import NonFiniteLossError
from bevkd.pipeline.config import Config, config_sha256, to_dict
from bevkd.pipeline.distributed import DistInfo, all_reduce_mean
from bevkd.pipeline.errors import BevkdError

Validate = Callable[[nn.Module, Path], dict[str, Any]]


class NonFiniteLoss(BevkdError, FloatingPointError):
    """Training produced a NaN/inf loss term; the message names the step, frames and term."""


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    checkpoint: Path  # best.pt: the weights of the best validation
    epochs: int
    steps: int
    metrics: dict[str, Any]  # the final validation
    best: dict[str, Any]  # {"epoch", "metric", "value"} of best.pt


def metric_value(metrics: dict[str, Any], path: str) -> float:
    """``metrics[a][b]...`` for ``path`` "a.b...", as a float (None counts as -inf)."""
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise BevkdError(
                f"train.best_metric '{path}': no '{part}' in the validation metrics "
                f"(keys: {sorted(node) if isinstance(node, dict) else node})"
            )
        node = node[part]
    return float("-inf") if node is None else float(node)


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any] | torch.Tensor) -> None:
    if isinstance(state, torch.Tensor):  # checkpoints before the shared loop kept torch's only
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _objective_rest(objective: nn.Module) -> dict[str, Any]:
    """The objective's state beyond its ``model`` (recipe adaptors); ``model`` is saved apart,
    in the format every checkpoint reader knows."""
    return {k: v for k, v in objective.state_dict().items() if not k.startswith("model.")}


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {
            k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()
        }
    return {prefix[:-1]: data}


# Keys a resumed run may change: where it writes, how it is run and reported, and which
# validation number picks best.pt; none of them changes the weights a step computes.
RESUME_FREE = frozenset({
    "train.out_dir", "train.best_metric", "train.eval_every", "train.log_every",
    "train.num_workers", "train.torch_threads", "train.keep_checkpoints",
})  # fmt: skip


def check_same_config(state: dict[str, Any], cfg: Config, path: Path) -> None:
    """Refuse to resume a checkpoint written under another config: the schedule, the data
    and the weights would silently mix two experiments. The keys of :data:`RESUME_FREE`
    (out folder, workers, threads, logging, the validation metric) may differ."""
    if state.get("config_sha256") == config_sha256(cfg):
        return
    old, new = _flat(state["config"]), _flat(to_dict(cfg))
    changed = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k) and k not in RESUME_FREE
    ]
    if changed:
        raise BevkdError(
            f"{path} was written by another config ({'; '.join(changed[:6])}); rerun with the "
            "config that started it to resume, or give a new train.out_dir"
        )


class _Logs:
    """train_log.csv, train_log.jsonl (the loss-curve source) and TensorBoard, rank 0 only.
    On resume, rows past the checkpoint's step are dropped: the redone epoch writes them again."""

    def __init__(self, out: Path, resume_step: int, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        self.jsonl_path, self.csv_path = out / "train_log.jsonl", out / "train_log.csv"
        rows = []
        if self.jsonl_path.is_file():
            rows = [json.loads(line) for line in self.jsonl_path.read_text().splitlines() if line]
        self.rows = [r for r in rows if r["step"] <= resume_step]
        self.columns = list(dict.fromkeys(k for r in self.rows for k in r))  # the CSV header
        self._rewrite()
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1)

    def _rewrite(self) -> None:
        self.jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        with self.csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        new_columns = [k for k in row if k not in self.columns]
        if new_columns:  # a new column (the first validation): the CSV gets a new header
            self.columns += new_columns
            self._rewrite()
        else:
            with self.jsonl_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            with self.csv_path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns).writerow(row)
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                self.tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.enabled:
            self.tb.close()


def _loss(
    objective: nn.Module, batch: Any, where: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The objective's terms and their sum; a non-finite term stops training, named. One
    device sync per step (on the sum), the terms are searched only when it is not finite."""
    try:
        terms: dict[str, torch.Tensor] = objective(batch)
    except NonFiniteLossError as exc:
        raise NonFiniteLoss(f"{where}: {exc}") from None
    total = torch.stack([v.float() for v in terms.values()]).sum()
    if not bool(torch.isfinite(total)):
        name, value = next((k, v) for k, v in terms.items() if not bool(torch.isfinite(v).all()))
        raise NonFiniteLoss(f"{where}: loss term '{name}' is {value.item()}")
    return terms, total


def fit(cfg: Config, objective: nn.Module, dataset: Any, collate: Callable[[list[Any]], Any],
        info: DistInfo, validate: Validate | None = None,
        loader_extra: dict[str, Any] | None = None,
        record: dict[str, Any] | None = None, labelled: Any = None,
        labelled_per_batch: int = 0) -> TrainResult:  # fmt: skip
    """Train ``objective`` on ``dataset`` (keys ``(epoch, index)``) as ``cfg.train`` says;
    returns where the checkpoints went and the validation metrics. ``record``: more entries
    for every checkpoint (e.g. the frames whose labels the run used). ``labelled`` (a bool per
    frame) and ``labelled_per_batch``: a fixed labelled share of every batch
    (:class:`~bevkd.datasets.sampler.EpochBatches`)."""
    record = dict(record or {})
    t = cfg.train
    out = Path(t.out_dir)
    model: nn.Module = objective.model  # type: ignore[assignment]
    sampler = EpochBatches(
        len(dataset), t.batch_size, t.seed, True, info.rank, info.world_size, t.grad_accum,
        labelled, labelled_per_batch,
    )  # fmt: skip
    # A worker start method (loader_extra) means nothing without workers; torch refuses it.
    extra = (loader_extra or {}) if t.num_workers > 0 else {}
    workers = dict(num_workers=t.num_workers, persistent_workers=t.num_workers > 0, **extra)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         pin_memory=info.device.type == "cuda", **workers)  # fmt: skip
    objective.to(info.device)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=t.lr, total_steps=t.epochs * sampler.steps, pct_start=0.3
    )
    use_amp = t.amp and info.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    best: dict[str, Any] = {"epoch": 0, "metric": t.best_metric, "value": float("-inf")}
    start_epoch, step = 0, 0
    metrics: dict[str, Any] = {}
    if (out / "last.pt").is_file():  # resume: repeat the interrupted epoch from its start
        state = load_checkpoint(out / "last.pt", map_location=info.device)
        check_same_config(state, cfg, out / "last.pt")
        objective.load_state_dict(
            {**{f"model.{k}": v for k, v in state["model"].items()}, **state.get("objective", {})}
        )
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        best, metrics = state.get("best", best), state.get("metrics", {})
    ddp = info.enabled
    trained: nn.Module = objective
    if ddp:
        trained = nn.parallel.DistributedDataParallel(
            objective, find_unused_parameters=t.find_unused_parameters
        )
    logs = _Logs(out, step, info.is_main)

    for epoch in range(start_epoch, t.epochs):
        sampler.set_epoch(epoch)
        trained.train()
        bar = tqdm(
            total=sampler.steps,
            desc=f"epoch {epoch + 1}/{t.epochs}",
            disable=not info.is_main,
            leave=False,
        )
        started = tick = time.perf_counter()
        wait = 0.0
        sums: dict[str, torch.Tensor] = {}
        values: dict[str, float] = {}
        for i, batch in enumerate(loader):
            now = time.perf_counter()
            wait, tick = wait + now - tick, now
            batch = batch.to(info.device)
            last_micro = (i + 1) % t.grad_accum == 0
            sync = trained.no_sync() if ddp and not last_micro else contextlib.nullcontext()  # type: ignore[operator]
            where = f"step {step} (epoch {epoch + 1}, batch {i}, frames {', '.join(batch.tokens)})"
            with sync:
                with torch.autocast(info.device.type, dtype=torch.float16, enabled=use_amp):
                    terms, total = _loss(trained, batch, where)
                scaler.scale(total / t.grad_accum).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach() / t.grad_accum
            if not last_micro:
                tick = time.perf_counter()  # the next wait starts after this micro-step
                continue
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if scheduler.last_epoch < scheduler.total_steps:
                scheduler.step()
            step += 1
            # One all-reduce and one device read for every term of the step.
            means = all_reduce_mean(torch.stack(list(sums.values())), info).tolist()
            values, sums = dict(zip(sums, means, strict=True)), {}
            now = tick = time.perf_counter()
            rate = t.batch_size * t.grad_accum * info.world_size * (bar.n + 1) / (now - started)
            bar.update(1)
            bar.set_postfix(
                samples_s=f"{rate:.1f}",
                loss=f"{sum(values.values()):.3f}",
                **{k: f"{v:.3f}" for k, v in values.items()},
            )
            if step % t.log_every == 0 or bar.n == sampler.steps:
                logs.write({"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0], **values,
                            "loss": sum(values.values()), "samples_per_s": rate,
                            "data_wait_frac": wait / max(now - started, 1e-9)})  # fmt: skip
        bar.close()
        if info.is_main:
            elapsed = time.perf_counter() - started
            tqdm.write(f"epoch {epoch + 1}/{t.epochs}: {sampler.steps} steps in {elapsed:.1f} s "
                       f"(data wait {100 * wait / max(elapsed, 1e-9):.1f}%), loss {sum(values.values()):.4f}")  # fmt: skip
        final = epoch + 1 == t.epochs
        if validate is not None and (final or (t.eval_every and (epoch + 1) % t.eval_every == 0)):
            if info.is_main:
                metrics = validate(
                    model, out / ("eval" if final else f"eval_epoch_{epoch + 1:03d}")
                )
                value = metric_value(metrics, t.best_metric)
                tqdm.write(
                    f"epoch {epoch + 1}: validation {t.best_metric} = {value:.4f} (best so far {best['value']:.4f})"
                )
                logs.write({"epoch": epoch + 1, "step": step, f"val_{t.best_metric}": value})
                if value > best["value"]:
                    best = {"epoch": epoch + 1, "metric": t.best_metric, "value": value}
                    save_checkpoint(
                        out / "best.pt",
                        model,
                        cfg,
                        epoch=epoch,
                        step=step,
                        metrics=metrics,
                        **record,
                        best=best,
                    )
            if ddp:
                torch.distributed.barrier()
        if info.is_main and ((epoch + 1) % t.checkpoint_every == 0 or final):
            save_checkpoint(out / "last.pt", model, cfg, objective=_objective_rest(objective), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), rng=_rng_state(),
                            epoch=epoch, step=step, best=best, metrics=metrics, **record)  # fmt: skip
            if t.keep_checkpoints:
                shutil.copyfile(out / "last.pt", out / f"epoch_{epoch + 1:03d}.pt")
    logs.close()
    if info.is_main and validate is None:  # nothing to choose by: the final weights
        save_checkpoint(
            out / "best.pt",
            model,
            cfg,
            epoch=t.epochs - 1,
            step=step,
            metrics={},
            best=best,
            **record,
        )
    if info.is_main:
        from bevkd.viz.plots import plot_loss_curve

        plot_loss_curve(out / "train_log.jsonl", out / "loss.png")
    return TrainResult(out, out / "best.pt", t.epochs, step, metrics, best)
