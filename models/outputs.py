"""Typed outputs of the networks: what heads, teachers and the box decoder hand on."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Channel map of the CenterPoint box regression, shared by heads, targets, the store
# (`box_regression` fields) and its augmentation. Offsets are the sub-cell position of the box
# centre, in cells, relative to the cell's corner: (centre_col - col, centre_row - row) in
# [0, 1). z: box centre height in metres; log_l/w/h: log of the size in metres; sin/cos of
# yaw; vx, vy in m/s, all in the ego frame.
REGRESSION_CHANNELS: tuple[str, ...] = (
    "offset_x",
    "offset_y",
    "z",
    "log_l",
    "log_w",
    "log_h",
    "sin_yaw",
    "cos_yaw",
    "vx",
    "vy",
)


@dataclass
class HeadOutput:
    """CenterPoint head output on a BEV grid of (H, W) cells.

    ``heatmap``: (B, K, H, W) logits, one channel per class.
    ``regression``: (B, 10, H, W) in :data:`REGRESSION_CHANNELS` order.
    """

    heatmap: torch.Tensor
    regression: torch.Tensor


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
    (B, C1, H, W) and ``lidar_bev_s2`` (B, C2, H/2, W/2); a fusion teacher adds
    ``camera_bev`` and ``fused_bev``. The store writes one field per name.
    ``head``: the CenterPoint head output on the (H, W) BEV grid.
    ``detections``: decoded boxes per sample (filled when decoding was asked for).
    """

    features: dict[str, torch.Tensor]
    head: HeadOutput
    detections: list[Detections] = field(default_factory=list)
