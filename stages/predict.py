"""Run a model over a split and evaluate its detections (nuScenes devkit or KITTI AP|R40)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from bevkd.datasets.dataset import FrameDataset, load_frames
from bevkd.datasets.frame import Frame, collate
from bevkd.models.outputs import Detections
from bevkd.pipeline.config import Config


@torch.no_grad()
def predict(
    model: nn.Module, cfg: Config, role: str = "val", batch_size: int = 4
) -> tuple[list[Frame], list[Detections]]:
    """Decoded detections (ego frame) for every frame of a split role, in frame order."""
    frames = load_frames(cfg, role)
    dataset = FrameDataset(frames, cfg.data, train=False, with_depth=False)  # eval reads no depth
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=cfg.train.num_workers,
        collate_fn=collate,
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    detections: list[Detections] = []
    for batch in tqdm(loader, desc=f"predict {role}", leave=False):
        output = model(batch.to(device), decode=True)
        detections.extend(d.cpu() for d in output.detections)
    model.train(was_training)
    return frames, detections


def evaluate_model(
    model: nn.Module, cfg: Config, out_dir: str | Path, role: str = "val"
) -> dict[str, Any]:
    """Predict ``role`` and evaluate with the dataset's own metric; writes into ``out_dir``."""
    out = Path(out_dir)
    frames, detections = predict(model, cfg, role)
    if cfg.data.format == "kitti":
        from bevkd.stages import kitti_ap

        results_dir = out / "kitti_results"
        results_dir.mkdir(parents=True, exist_ok=True)
        for frame, det in zip(frames, detections, strict=True):
            kitti_ap.write_detections(
                results_dir,
                frame,
                det.boxes.numpy(),
                det.scores.numpy(),
                det.labels.numpy(),
                cfg.classes,
            )
        metrics: dict[str, Any] = kitti_ap.run(cfg, results_dir, out)
        return metrics
    from bevkd.stages import evaluate
    from bevkd.stages.nuscenes_results import detections_to_results, write_results

    meta = {
        "use_camera": cfg.model.kind in ("fusion", "camera"),
        "use_lidar": cfg.model.kind in ("lidar", "fusion"),
    }
    body = detections_to_results(
        frames,
        detections,
        cfg.classes,
        meta=dict(meta, use_radar=False, use_map=False, use_external=False),
    )
    results = write_results(body, out / "results_nusc.json")
    return evaluate.run(cfg, results, out)
