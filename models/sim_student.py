"""SimDistill's simulated multi-modal camera student (BEVSimDet, AAAI 2024), read top to bottom:

images -> one image backbone, two view transforms (LSS, :mod:`~bevkd.models.camera_bev`):
  camera branch -> ``camera_bev`` (B, Cc, H, W), distilled from the teacher's camera BEV (IMD);
  simulated-LiDAR branch -> geometry compensation -> ``sim_lidar_bev`` (B, Cc, H, W),
  distilled through an adaptor from the teacher's LiDAR BEV (CMD);
ConvFuser(concat) -> ``fused_bev`` (B, C, H, W), distilled from the teacher's fused BEV
(MMD-F) -> SECOND decoder (``bev``, ``bev_s2``) -> SECONDFPN neck -> the teachers'
CenterPoint head, whose maps are distilled from the teacher's (MMD-P).

The released code runs one view transform twice; here the branches keep their own depth nets
(the cleaner design METHODS.md notes). Geometry compensation replaces BEVSimDet's deformable
attention with learned per-cell offsets and ``grid_sample`` (no custom CUDA op). The camera
branch's depth is supervised with LiDAR depth as in the plain student; the simulated-LiDAR
branch's depth net learns through CMD alone (its job is to look like LiDAR BEV).

Pure torch; importing it never imports spconv.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bevkd.models.bev_backbone import SECONDFPN, SECONDBackbone
from bevkd.models.camera_bev import CameraBEV, build_camera_bev
from bevkd.models.camera_student import CameraStudent, StudentOutput
from bevkd.models.fusion_teacher import ConvFuser
from bevkd.models.head import CenterHead, conv_bn_relu
from bevkd.pipeline.config import Config, HeadConfig
from bevkd.pipeline.geometry import BEVGrid


class GeometryCompensation(nn.Module):
    """Learned offsets re-sample a BEV map where its lift put features in the wrong cells.

    ``offset``: conv3x3 -> (dx, dy) per cell, ``tanh``-bounded to ``max_cells`` cells and zero
    at initialisation (the block starts as the identity sampling); the map is sampled there
    with ``grid_sample`` and mixed with the input by conv3x3 + BN + ReLU over both.
    """

    def __init__(self, channels: int, max_cells: float = 2.0) -> None:
        super().__init__()
        self.max_cells = max_cells
        self.offset = nn.Conv2d(channels, 2, 3, padding=1)
        assert self.offset.bias is not None
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.mix = conv_bn_relu(2 * channels, channels)

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        _, _, h, w = bev.shape
        # The grid stays fp32 under AMP: in fp16 (bf16) a normalised coordinate near 1 is off by
        # a fraction of a cell (several cells), and the "identity" would blur the map.
        shift = torch.tanh(self.offset(bev).float()) * self.max_cells  # (B, 2, H, W) in cells
        # grid_sample's normalised coords with align_corners=False: cell centre j -> (2j+1)/n - 1.
        ys = (2 * torch.arange(h, device=bev.device, dtype=torch.float32) + 1) / h - 1
        xs = (2 * torch.arange(w, device=bev.device, dtype=torch.float32) + 1) / w - 1
        base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
        scale = torch.tensor([2.0 / w, 2.0 / h], device=bev.device)
        grid = base.unsqueeze(0) + shift.permute(0, 2, 3, 1) * scale  # (B, H, W, 2)
        sampled = F.grid_sample(bev.float(), grid, align_corners=False).to(bev.dtype)
        return self.mix(torch.cat([bev, sampled], dim=1))  # type: ignore[no-any-return]


class SimStudent(CameraStudent):
    """Camera-only CenterPoint student with a simulated LiDAR branch and a fuser; its BEV
    encoder (the decoder after the fuser), neck and head are the camera student's."""

    def __init__(self, grid: BEVGrid, head_cfg: HeadConfig, class_names: Sequence[str],
                 camera: CameraBEV, compensation: GeometryCompensation, fuser: ConvFuser,
                 encoder: SECONDBackbone, neck: SECONDFPN, head: CenterHead) -> None:  # fmt: skip
        super().__init__(grid, head_cfg, class_names, camera, encoder, neck, head)
        self.sim_depth_net, self.sim_refine = camera.make_view_transform()
        self.compensation, self.fuser = compensation, fuser

    def forward(self, batch: Any, decode: bool = False) -> StudentOutput:
        """``batch``: anything with ``images``, ``cam2img`` and ``cam2ego``."""
        feats = self.camera.image_features(batch.images)
        cam = self.camera.lift(feats, batch.cam2img, batch.cam2ego)
        sim = self.camera.lift(
            feats, batch.cam2img, batch.cam2ego, self.sim_depth_net, self.sim_refine
        )
        sim_lidar_bev = self.compensation(sim.bev)
        fused = self.fuser(cam.bev, sim_lidar_bev)
        features = {"camera_bev": cam.bev, "sim_lidar_bev": sim_lidar_bev, "fused_bev": fused}
        return self.detect(fused, features, cam.depth_logits, decode)


def build_sim_student(cfg: Config) -> SimStudent:
    """The simulated multi-modal student of ``cfg``: the camera branch of ``cfg.model`` (and a
    second view transform of its shapes), a fuser to ``student.bev_channels``, the decoder of
    ``student.bev_layers``, the teachers' neck and head sizes."""
    channels = cfg.student.bev_channels
    camera = build_camera_bev(cfg)
    neck = SECONDFPN(channels, up_channels=channels)
    return SimStudent(
        grid=cfg.grid.bev_grid,
        head_cfg=cfg.head,
        class_names=cfg.classes,
        camera=camera,
        compensation=GeometryCompensation(camera.bev_channels),
        fuser=ConvFuser(camera.bev_channels, camera.bev_channels, channels),
        encoder=SECONDBackbone(channels, channels, cfg.student.bev_layers),
        neck=neck,
        head=CenterHead(neck.out_channels, len(cfg.classes), cfg.model.head_channels),
    )
