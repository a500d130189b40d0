"""CMKD (Hong, Dai, Ding; ECCV 2022) as a recipe over the cached LiDAR (or fusion) teacher."""

from __future__ import annotations

from typing import ClassVar

import torch

from bevkd.datasets.student_batch import StudentBatch
from bevkd.distill import losses
from bevkd.distill.base import Recipe
from bevkd.models.bev_backbone import MAP_TO_BEV_NAME
from bevkd.models.camera_student import FEATURE_FIELDS, StudentOutput
from bevkd.pipeline.config import Config
from bevkd.pipeline.geometry import REGRESSION_CHANNELS

# The teacher whose response is distilled -> its store fields (heatmap, box regression).
TEACHER_RESPONSE_FIELDS: dict[str, tuple[str, str]] = {
    "lidar": ("heatmap", "box_regression"),
    "fusion": ("fusion_heatmap", "fusion_box_regression"),
}

# distill.bev_layer -> scale -> (student feature, store field). "backbone": the teacher's 2D
# backbone output against the student's BEV encoder output. "map_to_bev" (CMKD's layer): the
# teacher's map-to-BEV output before its backbone (``lidar_bev_pre``) against the student's
# ``camera_bev``, its LSS output before its BEV encoder, the same place in the same network.
BEV_LAYERS: dict[str, dict[int, tuple[str, str]]] = {
    "backbone": {scale: (f, FEATURE_FIELDS[f]) for scale, f in ((1, "bev"), (2, "bev_s2"))},
    "map_to_bev": {1: ("camera_bev", MAP_TO_BEV_NAME)},
}

# Per regression channel (REGRESSION_CHANNELS order), the channels of the CenterPoint head it
# belongs to: reg (offset x, y), height (z), dim (log l, w, h), rot (sin, cos), vel (vx, vy).
# CMKD-MV averages its soft box term within each head and sums the heads.
HEAD_WIDTHS = (2, 2, 1, 3, 3, 3, 2, 2, 2, 2)


class CMKD(Recipe):
    """CMKD (Hong, Dai, Ding; ECCV 2022), with CMKD-MV's GT terms as an option.

    - ``kd_bev`` (and ``kd_bev_s2``): :func:`losses.feature_mse` of the student's BEV against
      ``lidar_bev`` (``lidar_bev_s2``), or with ``distill.bev_layer`` = "map_to_bev" of its
      ``camera_bev`` against ``lidar_bev_pre`` (:data:`BEV_LAYERS`; the paper's layer, whose
      channels are ``model.camera_bev_channels``, no adaptor: CMKD's student outputs the
      teacher's map-to-BEV shape), full map by default; ``distill.bev_mask`` = "teacher"
      keeps cells where the teacher's heatmap exceeds ``distill.bev_mask_threshold`` in some
      class, "gt" the GT gaussians (clipped to 1; labelled frames only: an unlabelled frame has
      no GT to mask with), both on a frame whose cached field is present only.
    - ``kd_heatmap``: :func:`losses.qfl_heatmap` (beta 2) against the teacher's probabilities,
      over the batch's count of entries above ``distill.qfl_threshold`` (CMKD-MV's 0.5).
    - ``kd_regression``: :func:`losses.soft_regression` weighted by the teacher's confidence,
      normalised by ``distill.regression_normaliser``: "cells" (CMKD-MV's mean over every cell,
      channels averaged within each CenterPoint head, :data:`HEAD_WIDTHS`, times
      ``head.code_weights``) or "masked" (CMKD's CenterPoint head: the kept cells, channels
      summed with ``head.code_weights``).
    - ``distill.mode`` "gt+kd" keeps the GT CenterPoint terms on labelled frames (CMKD-MV);
      "kd" is pure mimicry, no GT on any frame (the released KITTI code). Depth stays either
      way: LiDAR depth is not a label.
    - ``distill.response: false`` drops the two response terms: CMKD's phase 1. Phase 2 is a
      second run with ``student.init_from`` = phase 1's checkpoint, and (the paper's phase 2)
      ``student.init_from_teacher`` = the LiDAR teacher, whose 2D backbone, neck and head
      replace the student's (:func:`bevkd.models.checkpoint.init_from_teacher`).

    Weights default to CMKD-MV's nuScenes values (:data:`DEFAULTS`); CMKD's KITTI
    CenterPoint head (Cc-Hy/CMKD tools/cfgs/kitti_models/CMKD/CMKD-ctp/*_V2.yaml,
    center_head_soft.py) is BEV 32, QFL 1 at ``qfl_threshold`` 0.3, soft box 4 with
    ``regression_normaliser`` "masked" (configs/kitti).
    """

    # CMKD-MV (Cc-Hy/CMKD-MV configs/cmkd/cmkd-bevdet-r50-10sweep.py and
    # mmdet3d/models/detectors/bevdet.py CMKD_BEVDet): bev_loss_cfg MSELoss loss_weight 50;
    # QualityFocalLoss loss_weights 0.2; res_reg_loss_cfg SmoothL1Loss loss_weight 50.
    DEFAULTS: ClassVar[dict[str, float]] = {
        "bev_weight": 50.0,
        "heatmap_weight": 0.2,
        "regression_weight": 50.0,
    }

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, use_gt=cfg.distill.mode == "gt+kd")
        d = self.d  # its choices were checked when the config loaded; weights filled
        self.bev_weight = self.resolved("bev_weight")
        self.regression_channel_weights = (
            tuple(c / n for c, n in zip(cfg.head.code_weights, HEAD_WIDTHS, strict=True))
            if d.regression_normaliser == "cells"
            else tuple(cfg.head.code_weights)
        )
        h, w = self.grid.shape
        pre = d.bev_layer == "map_to_bev"
        c = cfg.model.camera_bev_channels if pre else cfg.student.bev_channels
        self.bev_pairs = {scale: BEV_LAYERS[d.bev_layer][scale] for scale in d.bev_scales}
        if self.bev_weight > 0:
            shapes = {1: (c, h, w), 2: (2 * c, h // 2, w // 2)}
            for scale, (_, field) in self.bev_pairs.items():
                self.expects[field] = shapes[scale]
        self.heatmap_field, self.regression_field = TEACHER_RESPONSE_FIELDS[d.teacher]
        needs_heatmap = d.response or (self.bev_weight > 0 and d.bev_mask == "teacher")
        if needs_heatmap:
            self.expects[self.heatmap_field] = (len(cfg.classes), h, w)
        if d.response:
            self.expects[self.regression_field] = (len(REGRESSION_CHANNELS), h, w)

    def teacher_prob(self, batch: StudentBatch) -> torch.Tensor:
        activation = self.heatmap_activation.get(self.heatmap_field, "probabilities")
        return losses.as_probabilities(batch.targets.field(self.heatmap_field), activation)

    def kd_terms(self, out: StudentOutput, batch: StudentBatch) -> dict[str, torch.Tensor]:
        d, tg = self.d, batch.targets
        terms: dict[str, torch.Tensor] = {}
        prob = self.teacher_prob(batch) if self.heatmap_field in self.expects else None
        if self.bev_weight > 0:
            mask = self._bev_mask(batch, prob)
            for scale, (feature, field) in self.bev_pairs.items():
                student = out.features[feature]
                m = losses.downsample_mask(mask, student.shape[-2:])
                m = m * tg.present[field].to(m.dtype).view(-1, 1, 1, 1)
                name = "kd_bev" if scale == 1 else "kd_bev_s2"
                terms[name] = self.bev_weight * losses.feature_mse(student, tg.field(field), m)
        if d.response:
            assert prob is not None
            frames = tg.present[self.heatmap_field] & tg.present[self.regression_field]
            terms["kd_heatmap"] = self.resolved("heatmap_weight") * losses.qfl_heatmap(
                out.head.heatmap, prob, d.qfl_beta, d.qfl_threshold, frames
            )
            terms["kd_regression"] = self.resolved("regression_weight") * losses.soft_regression(
                out.head.regression, tg.field(self.regression_field), prob,
                d.regression_threshold, self.regression_channel_weights, frames,
                d.regression_normaliser,
            )  # fmt: skip
        return terms

    def _bev_mask(self, batch: StudentBatch, prob: torch.Tensor | None) -> torch.Tensor:
        if self.d.bev_mask == "gt":
            return self.gt_mask(batch)
        if self.d.bev_mask == "teacher":
            assert prob is not None
            # A frame without a cached heatmap gets no mask (its zero fill is not "background").
            present = batch.targets.present[self.heatmap_field].float().view(-1, 1, 1, 1)
            peak = prob.amax(dim=1, keepdim=True)
            return (peak > self.d.bev_mask_threshold).float() * present
        return batch.images.new_ones((batch.size, 1, *self.grid.shape))
