"""Typed outputs of the networks: what heads, teachers and the box decoder hand on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bevkd.pipeline.geometry import REGRESSION_CHANNELS

__all__ = ["REGRESSION_CHANNELS", "Detections", "HeadOutput", "TeacherOutput"]


@dataclass
class HeadOutput:
    """CenterPoint head output on a BEV grid of (H, W) cells.

    ``heatmap``: (B, K, H, W) logits, one channel per class.
    ``regression``: (B, 10, H, W) in :data:`REGRESSION_CHANNELS` order.
    ``task_regression``: (B, T, 10, H, W), one map per class group, from a head with grouped
    tasks (an imported CenterPoint); ``regression`` is then each cell's from the task whose
    heatmap is highest there.
    """

    heatmap: torch.Tensor
    regression: torch.Tensor
    task_regression: torch.Tensor | None = None


@dataclass
class Detections:
    """Decoded boxes of one frame in the ego frame.

    ``boxes``: (N, 9) x, y, z, l, w, h, yaw, vx, vy; ``scores``: (N,); ``labels``: (N,) int64.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def cpu(self) -> Detections:
        return Detections(
            self.boxes.detach().cpu(), self.scores.detach().cpu(), self.labels.detach().cpu()
        )


@dataclass
class TeacherOutput:
    """Everything a teacher forward produces for a batch.

    ``features``: named distillable BEV maps, each (B, C, H', W'), e.g. ``lidar_bev``
    (B, C1, H, W) and ``lidar_bev_s2`` (B, C2, H/2, W/2), and the LiDAR teacher's map-to-BEV
    ``lidar_bev_pre`` (B, C0, H, W) before its 2D backbone; a fusion teacher adds
    ``camera_bev`` and ``fused_bev``. The store writes one field per name it is asked for.
    ``head``: the CenterPoint head output on the (H, W) BEV grid.
    ``detections``: decoded boxes per sample (filled when decoding was asked for).
    """

    features: dict[str, torch.Tensor]
    head: HeadOutput
    detections: list[Detections] = field(default_factory=list)
