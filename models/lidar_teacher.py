"""CenterPoint-style LiDAR teacher, read top to bottom:

points -> encoder (voxel: SECOND sparse 3D convs + height compression; or pillars) ->
dense map-to-BEV at the BEV grid (``lidar_bev_pre``, CMKD's distilled layer) ->
SECOND 2D backbone (``lidar_bev``, ``lidar_bev_s2``) ->
SECONDFPN neck -> CenterHead -> (optional) decoded boxes.

This module imports no spconv itself; the voxel encoder it is handed does (see builders.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from bevkd.models import box_coder, targets
from bevkd.models.bev_backbone import MAP_TO_BEV_NAME, SECONDFPN, SECONDBackbone
from bevkd.models.head import CenterHead
from bevkd.models.outputs import Detections, HeadOutput, TeacherOutput
from bevkd.pipeline.config import GridConfig, HeadConfig

if TYPE_CHECKING:
    from bevkd.datasets.frame import Batch


class LidarTeacher(nn.Module):
    """LiDAR-only CenterPoint teacher.

    ``encoder``: a module mapping (points (P, 6), batch_size) to BEV (B, encoder.out_channels,
    H, W) on ``grid``'s BEV grid. The backbone, neck and head are the SECOND/SECONDFPN/
    CenterHead modules of this package.
    """

    def __init__(
        self,
        grid: GridConfig,
        head_cfg: HeadConfig,
        class_names: Sequence[str],
        encoder: nn.Module,
        backbone: SECONDBackbone,
        neck: SECONDFPN,
        head: CenterHead,
    ) -> None:
        super().__init__()
        self.grid_cfg = grid
        self.head_cfg = head_cfg
        self.class_names = tuple(class_names)
        self.bev_grid = grid.bev_grid
        self.encoder = encoder
        self.backbone = backbone
        self.neck_module = neck
        self.head = head

    def bev_features(self, points: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
        """Points (P, 6) = (batch, x, y, z, intensity, time-lag) in the ego frame ->
        ``lidar_bev`` (B, C, H, W) and ``lidar_bev_s2`` (B, 2C, H/2, W/2)."""
        bev = self.encoder(points, batch_size)
        return self.backbone(bev)

    def neck(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """``lidar_bev`` + ``lidar_bev_s2`` -> (B, neck_channels, H, W); callable on features
        made elsewhere (the label encoder) with the same names and shapes."""
        return self.neck_module(features)

    def forward(self, batch: Batch, decode: bool = False) -> TeacherOutput:
        """Features ``lidar_bev_pre`` (B, encoder.out_channels, H, W), the encoder's map-to-BEV
        output, and the backbone's ``lidar_bev``, ``lidar_bev_s2``; the head output on (H, W)."""
        bev = self.encoder(batch.points, batch.size)
        features = {MAP_TO_BEV_NAME: bev, **self.backbone(bev)}
        head_out: HeadOutput = self.head(self.neck(features))
        detections = self.decode(head_out) if decode else []
        return TeacherOutput(features=features, head=head_out, detections=detections)

    def decode(self, head_out: HeadOutput) -> list[Detections]:
        """Detections per sample from a head output on this teacher's BEV grid."""
        return box_coder.decode(head_out, self.bev_grid, self.head_cfg)

    def loss(self, output: TeacherOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """CenterPoint detection loss over the batch's labelled samples: ``heatmap``, ``regression``.

        Unlabelled samples (``has_label`` False) carry no GT and are left out, since their
        empty box lists would otherwise teach "nothing here".
        """
        terms = targets.labelled_detection_loss(
            output.head, batch.gt_boxes, batch.gt_labels, batch.has_label, batch.tokens,
            self.bev_grid, len(self.class_names), self.head_cfg,
        )  # fmt: skip
        return terms
