"""Realistic synthetic teacher outputs, for the store's tests and ``benchmarks/store_io.py``.

Like ``numpy.testing``: not used by the pipeline, but a real part of the package so tests,
benchmarks and subprocess writers share one deterministic generator. The statistics follow
what trained teachers emit: BEV features after a ReLU are ~75% exact zeros with spatially
correlated activations, label embeddings ~5% non-zero around objects, heatmap logits very
negative (about -9) with Gaussian peaks at object centres, box regression dense and noisy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bevkd.pipeline.geometry import NUSCENES_CLASSES, BEVGrid
from bevkd.pipeline.provenance import sha256_lines
from bevkd.storage.fields import (
    bev_feature_field,
    box_regression_field,
    boxes_field,
    embedding_field,
    heatmap_field,
)
from bevkd.storage.schema import SCHEMA_VERSION, StoreContract

DEMO_GRID = BEVGrid(-25.6, -25.6, 25.6, 25.6, 0.8)  # 64 x 64


def demo_contract(
    grid: BEVGrid = DEMO_GRID,
    bev_channels: int = 128,
    embedding_channels: int = 128,
    codecs: dict[str, str] | None = None,
    box_capacity: int = 64,
) -> StoreContract:
    """The demo teacher's fields: lidar_bev, label_bev (labeled only), heatmap, regression, boxes."""
    codecs = codecs or {}
    height, width = grid.shape
    fields = (
        bev_feature_field("lidar_bev", bev_channels, height, width, codecs.get("bev_feature")),
        embedding_field("label_bev", embedding_channels, height, width, codecs.get("embedding")),
        heatmap_field("heatmap", len(NUSCENES_CLASSES), height, width, codecs.get("heatmap")),
        box_regression_field("regression", height, width, codecs.get("box_regression")),
        boxes_field("boxes", box_capacity),
    )
    return StoreContract(SCHEMA_VERSION, grid, NUSCENES_CLASSES, fields)


def _smooth(
    rng: np.random.Generator, channels: int, height: int, width: int, factor: int = 4
) -> np.ndarray:
    """Spatially correlated unit noise ``(C, H, W)``: coarse noise, bilinearly upsampled."""
    coarse = rng.standard_normal((channels, height // factor + 2, width // factor + 2)).astype(
        np.float32
    )
    rows = np.linspace(0, coarse.shape[1] - 1.001, height)
    cols = np.linspace(0, coarse.shape[2] - 1.001, width)
    r0, c0 = rows.astype(int), cols.astype(int)
    fr, fc = (rows - r0)[:, None].astype(np.float32), (cols - c0)[None, :].astype(np.float32)
    a = coarse[:, r0][:, :, c0]
    b = coarse[:, r0][:, :, c0 + 1]
    c = coarse[:, r0 + 1][:, :, c0]
    d = coarse[:, r0 + 1][:, :, c0 + 1]
    return (a * (1 - fr) * (1 - fc) + b * (1 - fr) * fc + c * fr * (1 - fc) + d * fr * fc) * 1.6


def synthetic_frame(
    contract: StoreContract, frame: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Deterministic teacher outputs of one frame: spatial fields ``(C, H, W)`` and boxes ``(N, 11)``."""
    rng = np.random.default_rng([seed, frame])
    grid = contract.grid
    n_obj = int(rng.integers(4, 24))
    centres = rng.uniform(
        [grid.x_min + 2, grid.y_min + 2], [grid.x_max - 2, grid.y_max - 2], (n_obj, 2)
    )
    labels = rng.integers(0, len(contract.classes), n_obj)
    boxes = np.zeros((n_obj, 11), np.float32)
    boxes[:, :2] = centres
    boxes[:, 2] = rng.uniform(-1.0, 0.5, n_obj)
    boxes[:, 3:6] = rng.uniform([3.5, 1.6, 1.4], [5.0, 2.1, 1.9], (n_obj, 3))
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, n_obj)
    boxes[:, 7:9] = rng.normal(0, 3, (n_obj, 2))
    boxes[:, 9] = rng.uniform(0.1, 0.95, n_obj)
    boxes[:, 10] = labels
    arrays: dict[str, np.ndarray] = {}
    out_boxes: dict[str, np.ndarray] = {}
    for spec in contract.fields:
        if spec.kind == "boxes":
            out_boxes[spec.name] = boxes[: spec.shape[0]]
            continue
        channels, height, width = spec.shape
        cell = (grid.x_max - grid.x_min) / width
        ij = np.stack(
            [(centres[:, 1] - grid.y_min) / cell, (centres[:, 0] - grid.x_min) / cell], axis=1
        )
        rr, cc = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
        dist2 = (
            (rr[None] - ij[:, 0, None, None]) ** 2 + (cc[None] - ij[:, 1, None, None]) ** 2
        ).min(axis=0)
        near = np.exp(-dist2 / (2 * 2.0**2)).astype(np.float32)  # 1 at objects, 0 far away
        arrays[spec.name] = _field(rng, spec.kind, channels, height, width, near, ij, labels, boxes)
    return arrays, out_boxes


def _field(rng: np.random.Generator, kind: str, channels: int, height: int, width: int, near: np.ndarray,
           ij: np.ndarray, labels: np.ndarray, boxes: np.ndarray) -> np.ndarray:  # fmt: skip
    noise = _smooth(rng, channels, height, width)
    fine = rng.standard_normal((channels, height, width)).astype(np.float32)
    if kind == "bev_feature":  # ReLU of correlated activations: ~75% exact zeros
        return np.maximum(noise + 0.3 * fine + 2.0 * near - 1.0, 0.0).astype(np.float32)
    if kind == "embedding":  # label encoder: non-zero only around objects (~5%)
        return np.maximum((noise * 0.5 + 1.0) * near - 0.55, 0.0).astype(np.float32) * 3.0
    if kind == "heatmap":
        logits = -9.0 + 1.2 * noise + 0.3 * fine
        rr, cc = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
        for (r, c), k in zip(ij, labels, strict=True):
            peak = 0.9 * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * 1.5**2))
            logits[k] = np.maximum(logits[k], np.log(peak / (1 - peak) + 1e-12))
        return logits.astype(np.float32)
    # box_regression: dense outputs, meaningful near objects, noisy everywhere
    out = np.empty((channels, height, width), np.float32)
    out[0:2] = 1 / (1 + np.exp(-noise[0:2]))
    out[2] = -0.5 + 0.3 * noise[2]
    out[3:6] = np.log(np.array([4.2, 1.9, 1.6], np.float32))[:, None, None] + 0.1 * noise[3:6]
    angle = np.pi * np.tanh(noise[6])
    out[6], out[7] = np.sin(angle), np.cos(angle)
    out[8:10] = 2.0 * noise[8:10] + 0.2 * fine[8:10]
    return out


def synthetic_frame_list(n: int, labeled_every: int = 2, prefix: str = "tok") -> dict[str, Any]:
    """``tokens``, ``scenes``, ``splits``, ``has_label`` for ``n`` frames (every k-th unlabeled)."""
    tokens = [f"{prefix}{i:05d}" for i in range(n)]
    has_label = (
        [i % labeled_every != labeled_every - 1 for i in range(n)]
        if labeled_every > 1
        else [True] * n
    )
    return {
        "tokens": tokens,
        "scenes": [f"scene-{i // 10:04d}" for i in range(n)],
        "splits": ["train" if h else "unlabeled" for h in has_label],
        "has_label": has_label,
    }


def synthetic_provenance(tokens: list[str]) -> dict[str, Any]:
    """A provenance dict for synthetic stores (the real one: schema.make_provenance)."""
    return {
        "teacher": "synthetic",
        "checkpoint_sha256": "none",
        "config": "",
        "config_sha256": "none",
        "code_version": "test",
        "code_dirty": False,
        "dataset": {"name": "synthetic", "version": "0", "splits": ["train", "unlabeled"]},
        "frame_tokens_sha256": sha256_lines(tokens),
        "packages": {},
        "created_at": "2025-01-01T00:00:00+00:00",
    }


def shard_payload(
    writer: Any, shard_id: int, seed: int = 0, skipped: dict[int, str] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """The ``write_shard`` arguments for a shard of synthetic frames (rows per field as required)."""
    contract = writer.contract
    frames = {
        i: synthetic_frame(contract, i, seed)
        for i in writer.shard_frames(shard_id)
        if i not in (skipped or {})
    }
    arrays: dict[str, np.ndarray] = {}
    boxes: dict[str, list[np.ndarray]] = {}
    for spec in contract.fields:
        rows = writer.rows_for(shard_id, spec.name, skipped)
        if spec.kind == "boxes":
            boxes[spec.name] = [frames[i][1][spec.name] for i in rows]
        else:
            arrays[spec.name] = (
                np.stack([frames[i][0][spec.name] for i in rows])
                if rows
                else np.zeros((0, *spec.shape), np.float32)
            )
    return arrays, boxes


SMALL_GRID = BEVGrid(-6.4, -6.4, 6.4, 6.4, 0.8)  # 16 x 16


def small_contract(codecs: dict[str, str] | None = None) -> StoreContract:
    """A tiny contract for fast tests: 8-channel BEV, 4-channel embedding, 16x16 grid."""
    return demo_contract(
        SMALL_GRID, bev_channels=8, embedding_channels=4, codecs=codecs, box_capacity=32
    )


def write_store(
    url: str,
    contract: StoreContract,
    n_frames: int = 20,
    shard_size: int = 8,
    seed: int = 0,
    storage_options: dict[str, Any] | None = None,
    skipped: dict[int, str] | None = None,
    finalize: bool = True,
) -> Any:
    """Create and fill a store of synthetic frames (every other frame unlabeled); return its writer."""
    from bevkd.storage.writer import StoreWriter

    frames = synthetic_frame_list(n_frames)
    writer = StoreWriter.create(
        url, contract, frames["tokens"], frames["scenes"], frames["splits"], frames["has_label"],
        synthetic_provenance(frames["tokens"]), shard_size=shard_size, storage_options=storage_options,
    )  # fmt: skip
    skipped = skipped or {}
    for shard in writer.pending_shards():
        mine = {i: r for i, r in skipped.items() if i in writer.shard_frames(shard)}
        arrays, boxes = shard_payload(writer, shard, seed, mine)
        writer.write_shard(shard, arrays, boxes, skipped=mine)
    if finalize:
        writer.finalize()
    return writer
