"""Worker side of stage one: load the teachers once per process, run them over one shard of
frames, hand the arrays to the store writer.

Which store field each teacher output becomes is one literal table (:data:`TEACHER_FIELDS`);
a custom teacher's (a factory entry in ``cache.teachers``) is its declaration
(:mod:`bevkd.stages.custom_teacher`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import nn

from bevkd.datasets.dataset import FrameDataset
from bevkd.datasets.frame import Frame, Sample, collate
from bevkd.models.outputs import TeacherOutput
from bevkd.pipeline.cluster import io_threads
from bevkd.pipeline.config import Config, is_custom_teacher
from bevkd.pipeline.errors import BevkdError
from bevkd.storage.fields import MAP_TO_BEV_FIELD, TEACHER_FIELDS


def wanted_features(name: str, scales: Sequence[int], map_to_bev: bool = False) -> dict[str, str]:
    """The feature -> field map of a teacher, keeping the stride-2 maps only if scale 2 is asked
    (``cache.lidar_bev_scales``) and the map-to-BEV ``lidar_bev_pre`` only if ``map_to_bev``
    (``cache.lidar_bev_pre``)."""
    table = TEACHER_FIELDS[name].features
    return {
        k: v
        for k, v in table.items()
        if (not k.endswith("_s2") or 2 in scales) and (k != MAP_TO_BEV_FIELD or map_to_bev)
    }


def checkpoint_of(cfg: Config, name: str) -> str:
    paths = {
        "lidar": cfg.cache.lidar_checkpoint,
        "fusion": cfg.cache.fusion_checkpoint,
        "label_encoder": cfg.cache.label_encoder_checkpoint,
    }
    if name not in paths:
        raise BevkdError(
            f"unknown teacher '{name}' in cache.teachers (expected {', '.join(paths)})"
        )
    if not paths[name]:
        raise BevkdError(f"cache.teachers lists '{name}' but cache.{name}_checkpoint is empty")
    return paths[name]


# One process-wide cache: a dask worker loads each teacher once, not once per task (the lock
# keeps two task threads from loading the same checkpoint twice).
_LOADED: dict[tuple[str, str], tuple[nn.Module, Config, str]] = {}
_LOADING = threading.Lock()


def load_teacher_once(path: str, device: torch.device) -> tuple[nn.Module, Config, str]:
    from bevkd.models.checkpoint import load_teacher

    key = (str(path), str(device))
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = load_teacher(path, device)
        return _LOADED[key]


def forward_frozen(model: nn.Module, samples: list[Sample], device: torch.device) -> TeacherOutput:
    """One eval-mode, no-grad forward with decoding; refuses a teacher in training mode."""
    if model.training or torch.is_grad_enabled():
        raise RuntimeError("teachers must run in eval mode under torch.no_grad() when caching")
    output: TeacherOutput = model(collate(samples).to(device), decode=True)
    return output


# One teacher forward at a time per process. Shard tasks run in threads (dask worker threads, or
# the one-process pool): while one task holds the device, the others load frames and encode and
# write their shards, so I/O overlaps compute and the device (a GPU, or every CPU core through
# torch's intra-op threads) is never asked for two forwards at once.
DEVICE_LOCK = threading.Lock()


def load_shard(
    cfg: Config, frames: Sequence[Frame], first_index: int
) -> tuple[list[Sample], dict[int, str]]:
    """Load ``frames`` (global indices from ``first_index``) for the teachers.

    Returns the samples that loaded and frame index -> reason for those that did not.
    """
    # Teachers read no LiDAR depth maps (the fusion teacher's depth loss is a training term).
    dataset = FrameDataset(
        frames, cfg.data, train=False, with_depth=False, first_number=first_index
    )

    def load(local: int) -> Sample | str:
        try:
            return dataset[local]
        except BevkdError as exc:  # a bad frame is recorded and the job goes on
            return str(exc)

    # Frames load in parallel: image decoding and resizing, file reads and numpy release the GIL.
    with ThreadPoolExecutor(io_threads()) as pool:
        loaded = list(pool.map(load, range(len(frames))))
    samples = [s for s in loaded if not isinstance(s, str)]
    skipped = {first_index + i: s for i, s in enumerate(loaded) if isinstance(s, str)}
    return samples, skipped


def samples_read_by(name: str, samples: Sequence[Sample]) -> list[Sample]:
    """The samples teacher ``name`` runs over: the labelled ones for a labelled-only teacher
    (the label encoder), else all."""
    if TEACHER_FIELDS[name].labeled_only:
        return [s for s in samples if s.has_label]
    return list(samples)


@torch.no_grad()
def forward_shard(
    cfg: Config,
    samples: Sequence[Sample],
    teachers: Sequence[str],
    device: torch.device,
    batch_size: int = 4,
) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]], float]:
    """Run every teacher over the loaded ``samples`` of one shard, holding :data:`DEVICE_LOCK`.

    Returns ``(arrays, boxes, seconds)``: arrays per field stacked over the samples
    (labelled-only fields over the labelled ones among them), box rows (N, 11) per sample, and
    the seconds the teachers ran (not counting the wait for the lock).
    """
    arrays: dict[str, list[np.ndarray]] = {}
    boxes: dict[str, list[np.ndarray]] = {}
    with DEVICE_LOCK:
        started = time.perf_counter()
        for name in teachers:
            if is_custom_teacher(name):  # any torch module behind a factory (models/protocol.py)
                from bevkd.stages.custom_teacher import forward_into

                forward_into(cfg, name, samples, device, batch_size, arrays, boxes)
                continue
            model, _, _ = load_teacher_once(checkpoint_of(cfg, name), device)
            spec = TEACHER_FIELDS[name]
            chosen = samples_read_by(name, samples)
            features = wanted_features(name, cfg.cache.lidar_bev_scales, cfg.cache.lidar_bev_pre)
            for start in range(0, len(chosen), batch_size):
                out = forward_frozen(model, chosen[start : start + batch_size], device)
                for src, dst in features.items():
                    arrays.setdefault(dst, []).append(out.features[src].float().cpu().numpy())
                if spec.heatmap:
                    heatmap = stored_heatmap(out.head.heatmap, cfg.cache.heatmap_as)
                    arrays.setdefault(spec.heatmap, []).append(heatmap.cpu().numpy())
                    arrays.setdefault(spec.regression, []).append(
                        out.head.regression.float().cpu().numpy()
                    )
                    for det in out.detections:
                        rows = torch.cat(
                            [
                                det.boxes.float(),
                                det.scores.float()[:, None],
                                det.labels.float()[:, None],
                            ],
                            dim=1,
                        )
                        boxes.setdefault(spec.boxes, []).append(rows.cpu().numpy())
        seconds = time.perf_counter() - started
    stacked = {k: np.concatenate(v) for k, v in arrays.items()}
    return stacked, boxes, seconds


def stored_heatmap(logits: torch.Tensor, heatmap_as: str) -> torch.Tensor:
    """The head's (B, K, H, W) logits as the store keeps them: ``probabilities`` or ``logits``."""
    if heatmap_as == "probabilities":
        return torch.sigmoid(logits.float())
    if heatmap_as == "logits":
        return logits.float()
    raise BevkdError(f"cache.heatmap_as must be 'probabilities' or 'logits', got {heatmap_as!r}")


def describe_teachers(
    cfg: Config, teachers: Sequence[str], device: torch.device | None = None
) -> dict[str, Any]:
    """Provenance of each teacher: architecture, checkpoint path and sha256, its config sha and
    the labelled frames it saw (:func:`labels_seen`)."""
    from bevkd.models.checkpoint import load_checkpoint, weights_sha256
    from bevkd.pipeline.config import config_sha256
    from bevkd.stages import custom_teacher

    out = {}
    for name in teachers:
        if is_custom_teacher(name):  # keyed by its declared name (custom_teacher.describe)
            built = custom_teacher.build(cfg, name, device or torch.device("cpu"))
            out[built.declaration.name] = custom_teacher.describe(built)
            continue
        model, tcfg, sha = load_teacher_once(
            checkpoint_of(cfg, name), device or torch.device("cpu")
        )
        payload = load_checkpoint(checkpoint_of(cfg, name))
        encoder = (
            tcfg.centerpoint.encoder
            if tcfg.model.kind == "centerpoint"
            else tcfg.model.lidar_encoder
        )
        out[name] = {
            "architecture": f"{type(model).__name__} ({tcfg.model.kind}, encoder {encoder})",
            "checkpoint": checkpoint_of(cfg, name),
            "checkpoint_sha256": sha,
            "config_sha256": config_sha256(tcfg),
            "model": dataclasses.asdict(tcfg.model),
            "labeled_tokens": labels_seen(checkpoint_of(cfg, name)),
            "weights_sha256": weights_sha256(payload),
        }
        if tcfg.model.kind == "centerpoint":  # an imported teacher: its architecture and origin
            out[name]["centerpoint"] = dataclasses.asdict(tcfg.centerpoint)
            out[name]["imported_from"] = payload.get("imported_from")
    return out


def identities(cfg: Config, teachers: Sequence[str]) -> dict[str, str]:
    """Teacher -> the sha256 a store records for it (``provenance.checkpoint_sha256``): a
    built-in teacher's checkpoint file, a custom teacher's source and weights (it is built)."""
    from bevkd.pipeline.provenance import sha256_file
    from bevkd.stages import custom_teacher

    out = {}
    for name in teachers:
        if is_custom_teacher(name):
            built = custom_teacher.build(cfg, name, torch.device("cpu"))
            out[built.declaration.name] = built.identity
        else:
            out[name] = sha256_file(checkpoint_of(cfg, name))
    return out


def labels_seen(checkpoint: str) -> dict[str, Any] | None:
    """What a teacher checkpoint records of the labelled frames it trained on (with those of
    the checkpoints it was built from): ``{"count", "sha256", "tokens"}``, or None when it
    records nothing (a checkpoint from before the record, or from another framework)."""
    from bevkd.models.checkpoint import load_checkpoint
    from bevkd.pipeline.provenance import sha256_lines

    tokens = load_checkpoint(checkpoint).get("labeled_tokens")
    if tokens is None:
        return None
    return {"count": len(tokens), "sha256": sha256_lines(list(tokens)), "tokens": list(tokens)}
