"""The camera BEV student (BEVDepth design at demo scale), read top to bottom:

images (B, K, 3, H, W) -> ResNet-style backbone + FPN-lite neck -> LSS view transform with a
categorical depth net (:class:`~bevkd.models.camera_bev.CameraBEV`, the fusion teacher's camera
branch) -> ``camera_bev`` (B, Cc, H, W) -> SECOND-style BEV encoder -> ``bev`` (B, C, H, W) and
``bev_s2`` (B, 2C, H/2, W/2), the shapes of the store's ``lidar_bev`` / ``lidar_bev_s2`` ->
SECONDFPN neck -> the teachers' CenterPoint head -> (optional) decoded boxes.

Its losses (GT detection on labelled frames, LiDAR depth BCE on every frame, distillation) are
the recipes' (:mod:`bevkd.distill.recipes`). Pure torch: importing this module never imports
spconv.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bevkd.models import box_coder
from bevkd.models.bev_backbone import SECONDFPN, SECONDBackbone
from bevkd.models.camera_bev import CameraBEV, build_camera_bev
from bevkd.models.head import CenterHead
from bevkd.models.outputs import Detections, HeadOutput
from bevkd.pipeline.config import Config, HeadConfig
from bevkd.pipeline.geometry import BEVGrid

# Student feature -> the store field of the same shape it is distilled against by default.
FEATURE_FIELDS: dict[str, str] = {"bev": "lidar_bev", "bev_s2": "lidar_bev_s2"}


@dataclass
class StudentOutput:
    """A student forward over a batch.

    ``features``: ``camera_bev`` (B, Cc, H, W) the LSS output, ``bev`` (B, C, H, W) and
    ``bev_s2`` (B, 2C, H/2, W/2) the BEV encoder's two scales; ``head``: CenterPoint maps on
    (H, W); ``depth_logits`` (B*K, D, h, w); ``detections``: per frame, when decoding.
    """

    features: dict[str, torch.Tensor]
    head: HeadOutput
    depth_logits: torch.Tensor
    detections: list[Detections] = field(default_factory=list)


class CameraStudent(nn.Module):
    """Camera-only CenterPoint student on the teachers' BEV grid."""

    def __init__(self, grid: BEVGrid, head_cfg: HeadConfig, class_names: Sequence[str],
                 camera: CameraBEV, encoder: SECONDBackbone, neck: SECONDFPN,
                 head: CenterHead) -> None:  # fmt: skip
        super().__init__()
        self.bev_grid, self.head_cfg = grid, head_cfg
        self.class_names = tuple(class_names)
        self.camera, self.encoder, self.neck, self.head = camera, encoder, neck, head

    def forward(self, batch: Any, decode: bool = False) -> StudentOutput:
        """``batch``: anything with ``images``, ``cam2img`` and ``cam2ego`` (a
        :class:`~bevkd.datasets.student_batch.StudentBatch` or a dataset ``Batch``)."""
        cam = self.camera(batch.images, batch.cam2img, batch.cam2ego)
        return self.detect(cam.bev, {"camera_bev": cam.bev}, cam.depth_logits, decode)

    def detect(self, bev: torch.Tensor, features: dict[str, torch.Tensor],
               depth_logits: torch.Tensor, decode: bool) -> StudentOutput:  # fmt: skip
        """The BEV encoder, neck and head over ``bev``; ``features`` plus the encoder's two
        scales (``bev``, ``bev_s2``) make the output's features."""
        scales = self.encoder(bev)  # named lidar_bev* by the shared SECOND backbone
        head_out: HeadOutput = self.head(self.neck(scales))
        features = {**features, "bev": scales["lidar_bev"], "bev_s2": scales["lidar_bev_s2"]}
        detections = self.decode(head_out) if decode else []
        return StudentOutput(features, head_out, depth_logits, detections)

    def decode(self, head_out: HeadOutput) -> list[Detections]:
        return box_coder.decode(head_out, self.bev_grid, self.head_cfg)


def build_camera_student(cfg: Config) -> CameraStudent:
    """The student of ``cfg``: camera branch from ``cfg.model`` (image backbone channels, depth
    bins, ``camera_bev_channels``), BEV encoder of ``student.bev_channels`` (stride 1) and twice
    that (stride 2), the teachers' neck and head sizes."""
    channels = cfg.student.bev_channels
    camera = build_camera_bev(cfg)
    neck = SECONDFPN(channels, up_channels=channels)
    return CameraStudent(
        grid=cfg.grid.bev_grid,
        head_cfg=cfg.head,
        class_names=cfg.classes,
        camera=camera,
        encoder=SECONDBackbone(camera.bev_channels, channels, cfg.student.bev_layers),
        neck=neck,
        head=CenterHead(neck.out_channels, len(cfg.classes), cfg.model.head_channels),
    )
