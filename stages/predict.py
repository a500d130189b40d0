"""Run a model over a split and evaluate its detections (nuScenes devkit, KITTI AP|R40 or
Waymo AP/APH and LET-3D-AP): the model side of ``bevkd evaluate --checkpoint`` and of the
training steps' final evaluation. The scoring itself is :mod:`bevkd.eval.detections`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from bevkd.datasets.dataset import FrameDataset, load_frames
from bevkd.datasets.frame import Frame, collate
from bevkd.eval.detections import evaluate_detections
from bevkd.models.outputs import Detections
from bevkd.pipeline.config import Config


@torch.no_grad()
def predict(
    model: nn.Module, cfg: Config, role: str = "val", batch_size: int = 4
) -> tuple[list[Frame], list[Detections]]:
    """Decoded detections (ego frame) for every labelled frame of a split role, in frame order:
    the frames evaluation scores (a split that mixes in unlabelled frames, as Waymo's sweeps
    without boxes, does not run the model on them)."""
    frames = [f for f in load_frames(cfg, role) if f.has_label]
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


def draw_predictions(cfg: Config, frames: list[Frame], detections: list[Detections],
                     out_dir: str | Path, count: int = 4, store_url: str = "") -> list[Path]:  # fmt: skip
    """PNGs of the first ``count`` frames: BEV predictions against GT (and the teacher's cached
    boxes when ``store_url`` holds the frame), and predictions drawn on the camera images."""
    from bevkd.viz.draw import draw_bev, draw_cameras

    grid = cfg.grid.bev_grid
    store = _store_if_any(store_url)
    written = []
    for frame, det in list(zip(frames, detections, strict=True))[:count]:
        boxes, scores, labels = det.boxes.numpy(), det.scores.numpy(), det.labels.numpy()
        teacher = None
        if store is not None and frame.token in store:
            teacher = store.read_frame(frame.token, ["boxes"])["boxes"]
        stem = Path(out_dir) / f"frame_{frame.token[:12]}"
        title = f"{frame.token} ({frame.split})"
        written.append(draw_bev(f"{stem}_bev.png", grid, boxes, scores,
                                gt_boxes=frame.boxes, teacher_boxes=teacher, title=title))  # fmt: skip
        written.append(draw_cameras(f"{stem}_cameras.png", frame, boxes, scores, labels,
                                    cfg.classes, gt_boxes=frame.boxes))  # fmt: skip
    return written


def _store_if_any(url: str) -> Any:
    """The teacher store at ``url`` if it opens and holds ``boxes``, else None (drawing only)."""
    from bevkd.storage.remote import is_local

    if not url or (is_local(url) and not Path(url).exists()):
        return None
    from bevkd.storage.reader import open_store
    from bevkd.storage.schema import StoreError

    try:
        store = open_store(url)
    except StoreError:
        return None
    return store if "boxes" in store.contract.field_names else None


def evaluate_model(
    model: nn.Module, cfg: Config, out_dir: str | Path, role: str = "val", draw: int = 0
) -> dict[str, Any]:
    """Predict ``role`` and evaluate with the dataset's own metric; writes into ``out_dir``,
    with PNGs of the first ``draw`` frames (:func:`draw_predictions`)."""
    out = Path(out_dir)
    frames, detections = predict(model, cfg, role)
    if draw:
        draw_predictions(cfg, frames, detections, out, draw, cfg.student.store)
    meta = {
        "use_camera": cfg.model.kind in ("fusion", "camera", "camera_sim"),
        "use_lidar": cfg.model.kind in ("lidar", "fusion"),
    }
    return evaluate_detections(cfg, frames, detections, out, meta=meta)
