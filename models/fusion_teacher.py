"""BEVFusion-style LiDAR + camera teacher (the SimDistill teacher), read top to bottom:

images -> camera BEV (LSS, :mod:`bevkd.models.camera_bev`) -> ``camera_bev``
points -> LiDAR encoder (voxel/pillar, as the LiDAR teacher) -> reduction -> ``lidar_bev``
ConvFuser(concat) -> ``fused_bev`` -> SECOND decoder (``fused_bev_s2`` at stride 2) ->
SECONDFPN neck -> CenterHead -> (optional) decoded boxes.

This module imports no spconv: the LiDAR encoder it is handed is built (lazily) by
:func:`build_fusion_teacher`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from bevkd.models import box_coder, targets
from bevkd.models.bev_backbone import SECONDFPN, SECONDBackbone
from bevkd.models.camera_bev import CameraBEV, build_camera_bev, depth_loss
from bevkd.models.head import CenterHead, conv_bn_relu
from bevkd.models.outputs import Detections, HeadOutput, TeacherOutput
from bevkd.pipeline.config import Config, GridConfig, HeadConfig

if TYPE_CHECKING:
    from bevkd.datasets.frame import Batch


@dataclass
class FusionTeacherOutput(TeacherOutput):
    """:class:`TeacherOutput` plus the camera branch's ``depth_logits`` (B*K, D, h, w), kept out
    of ``features`` because they are not a BEV map for the store."""

    depth_logits: torch.Tensor | None = None


class ConvFuser(nn.Module):
    """BEVFusion's ConvFuser: concat camera and LiDAR BEV, conv3x3 + BN + ReLU."""

    def __init__(self, camera_channels: int, lidar_channels: int, out_channels: int) -> None:
        super().__init__()
        self.fuse = conv_bn_relu(camera_channels + lidar_channels, out_channels)

    def forward(self, camera_bev: torch.Tensor, lidar_bev: torch.Tensor) -> torch.Tensor:
        """(B, Cc, H, W) + (B, Cl, H, W) -> (B, out_channels, H, W)."""
        return self.fuse(torch.cat([camera_bev, lidar_bev], dim=1))


class FusionTeacher(nn.Module):
    """LiDAR + camera CenterPoint teacher.

    ``lidar_encoder``: (points (P, 6), batch_size) -> (B, C_enc, H, W) on the BEV grid (the
    LiDAR teacher's voxel or pillar encoder); ``lidar_reduce`` maps it to ``lidar_bev``.
    """

    def __init__(
        self,
        grid: GridConfig,
        head_cfg: HeadConfig,
        class_names: Sequence[str],
        depth_bins: tuple[float, float, float],
        depth_loss_weight: float,
        camera: CameraBEV,
        lidar_encoder: nn.Module,
        lidar_reduce: nn.Module,
        fuser: ConvFuser,
        decoder: SECONDBackbone,
        neck: SECONDFPN,
        head: CenterHead,
    ) -> None:
        super().__init__()
        self.grid_cfg = grid
        self.head_cfg = head_cfg
        self.class_names = tuple(class_names)
        self.bev_grid = grid.bev_grid
        self.depth_bins = depth_bins
        self.depth_loss_weight = depth_loss_weight
        self.camera = camera
        self.lidar_encoder = lidar_encoder
        self.lidar_reduce = lidar_reduce
        self.fuser = fuser
        self.decoder = decoder
        self.neck = neck
        self.head = head

    def forward(self, batch: Batch, decode: bool = False) -> FusionTeacherOutput:
        """Features ``camera_bev`` (B, Cc, H, W), ``lidar_bev`` and ``fused_bev`` (B, C, H, W),
        ``fused_bev_s2`` (B, 2C, H/2, W/2); the head output on (H, W); depth logits."""
        cam = self.camera(batch.images, batch.cam2img, batch.cam2ego)
        lidar_bev = self.lidar_reduce(self.lidar_encoder(batch.points, batch.size))
        fused_bev = self.fuser(cam.bev, lidar_bev)
        decoded = self.decoder(fused_bev)  # the SECOND backbone names its outputs lidar_bev*
        head_out: HeadOutput = self.head(self.neck(decoded))
        features = {
            "camera_bev": cam.bev,
            "lidar_bev": lidar_bev,
            "fused_bev": fused_bev,
            "fused_bev_s2": decoded["lidar_bev_s2"],
        }
        detections = self.decode(head_out) if decode else []
        return FusionTeacherOutput(features, head_out, detections, depth_logits=cam.depth_logits)

    def decode(self, head_out: HeadOutput) -> list[Detections]:
        """Detections per sample from a head output on this teacher's BEV grid."""
        return box_coder.decode(head_out, self.bev_grid, self.head_cfg)

    def loss(self, output: TeacherOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """``heatmap`` + ``regression`` (CenterPoint, labelled samples only, as the LiDAR
        teacher) + ``depth`` (weighted BEVDepth BCE, every sample: LiDAR depth needs no label)."""
        if not isinstance(output, FusionTeacherOutput) or output.depth_logits is None:
            raise TypeError("FusionTeacher.loss needs the FusionTeacherOutput of its own forward")
        terms = targets.labelled_detection_loss(
            output.head, batch.gt_boxes, batch.gt_labels, batch.has_label, batch.tokens,
            self.bev_grid, len(self.class_names), self.head_cfg,
        )  # fmt: skip
        terms["depth"] = self.depth_loss_weight * depth_loss(
            output.depth_logits, batch.depth, self.depth_bins
        )
        return targets.check_finite(terms)


def build_fusion_teacher(cfg: Config) -> FusionTeacher:
    """BEVFusion-style teacher from ``cfg``: the camera branch of :func:`build_camera_bev`, the
    LiDAR teacher's point encoder (``model.lidar_encoder``) reduced to ``model.bev_channels``,
    a ConvFuser to ``bev_channels`` and the LiDAR teacher's decoder, neck and head sizes."""
    from bevkd.models.builders import build_lidar_encoder  # lazy: a voxel encoder imports spconv

    bev_channels = cfg.model.bev_channels
    encoder = build_lidar_encoder(cfg)
    neck = SECONDFPN(bev_channels, up_channels=bev_channels)
    return FusionTeacher(
        grid=cfg.grid,
        head_cfg=cfg.head,
        class_names=cfg.classes,
        depth_bins=cfg.model.depth_bins,
        depth_loss_weight=cfg.model.depth_loss_weight,
        camera=build_camera_bev(cfg),
        lidar_encoder=encoder,
        lidar_reduce=conv_bn_relu(cast(int, encoder.out_channels), bev_channels),
        fuser=ConvFuser(cfg.model.camera_bev_channels, bev_channels, bev_channels),
        decoder=SECONDBackbone(bev_channels, bev_channels, cfg.model.bev_backbone_layers),
        neck=neck,
        head=CenterHead(neck.out_channels, len(cfg.classes), cfg.model.head_channels),
    )
