"""SimDistill (BEVSimDet; Zhao et al., AAAI 2024; ViTAE-Transformer/SimDistill) as a recipe
over a cached BEVFusion-style teacher, for the simulated multi-modal student
(:mod:`bevkd.models.sim_student`, ``model.kind: camera_sim``)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from bevkd.datasets.student_batch import StudentBatch
from bevkd.distill import losses
from bevkd.distill.base import Recipe
from bevkd.models.camera_student import StudentOutput
from bevkd.models.head import conv_bn_relu
from bevkd.pipeline.config import Config, ConfigError
from bevkd.pipeline.geometry import REGRESSION_CHANNELS

HEATMAP, REGRESSION = "fusion_heatmap", "fusion_box_regression"
# SimDistill's box KD: WeightedSmoothL1Loss built without a beta (its default 1/9;
# mmdet3d/models/heads/bbox/centerpoint.py CenterHead.__init__ reg_loss_func)
BOX_BETA = 1.0 / 9.0


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
               frames: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """SimDistill's CMD term before its weight: ``MSE(S * M, T * M)``, the mean over every
    element (channels and cells) of the ``frames`` (B,) kept, with the (B, 1, H, W) mask ``M``
    applied to both maps: ``sum_b∈frames sum_chw M^2 (S - T)^2 / (#frames * C * H * W)``."""
    # fp32 throughout: under AMP an fp16 count (#frames * C * H * W) overflows to inf -> 0 loss.
    keep = frames.float().view(-1, 1, 1, 1)
    diff = (student.float() - teacher.float()) * mask.float() * keep
    count = keep.sum() * student[0].numel()
    return (diff**2).sum() / count.clamp(min=1.0)


class SimDistill(Recipe):
    """SimDistill's four terms, on top of the student's own GT terms (the paper keeps them):

    - ``kd_imd`` (IMD, intra-modal; weight ``distill.imd_weight``, paper 1): MSE of the
      student's camera BEV against the teacher's ``camera_bev``, full map.
    - ``kd_cmd`` (CMD, cross-modal; ``distill.cmd_weight``, paper 100): the simulated-LiDAR
      BEV through an adaptor (conv3x3 + BN + ReLU, conv1x1) against ``distill.cmd_field``
      (``fusion_lidar_bev``, or the LiDAR teacher's ``lidar_bev``), :func:`masked_mse` with
      ``M`` the sum of the GT gaussians (an object-aware mask).
    - ``kd_fused`` (MMD-F; ``distill.fused_weight``, paper 1): MSE of the fused BEV against
      ``fused_bev`` (through a conv1x1 only when the student's channels differ).
    - ``kd_heatmap`` + ``kd_regression`` (MMD-P; ``distill.heatmap_weight`` and
      ``distill.regression_weight``, paper 0.25 each, :data:`DEFAULTS`), normalised so that
      0.25 weighs what it weighs in the released code
      (mmdet3d/models/heads/bbox/centerpoint.py ``get_cls_layer_loss``,
      ``get_box_reg_layer_loss``):

      - ``kd_heatmap``: QFL of the student heatmap against the teacher's probabilities, the
        sigmoid applied once (only if the store holds logits). The released code applies it
        twice (``clip_sigmoid`` in ``loss``, ``torch.sigmoid`` again): every target lands in
        [0.5, 0.73], so its positive count ``p_T > 0.1`` counts every cell, and its sum over
        frames and classes is divided by ``H * W``. Here the target is the true probability
        and the normaliser stays upstream's ``H * W`` (:func:`losses.qfl_heatmap` "cells"),
        summed over the batch's frames as upstream's is (its configs train 6 frames a GPU).
        Equivalently: CMKD's positives-normalised QFL with the weight rescaled, ``w_pos = 0.25
        * N_pos / (H * W)``, ``N_pos`` the batch's entries above 0.1.
      - ``kd_regression``: SmoothL1 (beta 1/9, upstream's ``WeightedSmoothL1Loss`` default;
        ``head.code_weights``) of the box maps at the GT centres, summed per frame and
        averaged over the frames (upstream's ``loc_loss_src.sum() / batch_size``). A mean
        per box would be ``1 / #boxes per frame`` of it; equivalently that mean at a weight
        rescaled to ``0.25 * #boxes / #frames``. (Upstream also sums its ``max_objs`` padding
        slots, which all gather cell 0: a bug left out here.)

    Unlabelled frames have no GT gaussians and no GT centres. There CMD masks with the
    teacher's own object evidence instead: its heatmap's maximum over classes where that
    exceeds ``distill.cmd_mask_threshold`` (0.1), 0 below, a soft ``M`` in [0, 1] like the
    gaussians, so the simulated-LiDAR branch still learns where objects are and not the
    teacher's background floor (about 0.03 a cell on the demo teacher: unthresholded, a map's
    empty cells would outweigh its objects). The box-map term, defined at GT centres, skips
    them. IMD, MMD-F and the QFL need no label and apply on every frame.
    """

    # ViTAE-Transformer/SimDistill mmdet3d/models/heads/bbox/centerpoint.py: cls_weight = 0.25
    # in get_cls_layer_loss and in get_box_reg_layer_loss (the normalisations above).
    DEFAULTS: ClassVar[dict[str, float]] = {"heatmap_weight": 0.25, "regression_weight": 0.25}

    def __init__(self, cfg: Config) -> None:
        if cfg.model.kind != "camera_sim":
            raise ConfigError(
                "student.recipe simdistill distils the simulated multi-modal student: set "
                f"model.kind: camera_sim (got '{cfg.model.kind}')"
            )
        super().__init__(cfg, use_gt=cfg.distill.mode == "gt+kd")
        d = self.d  # weights filled from DEFAULTS
        self.code_weights = cfg.head.code_weights
        h, w = self.grid.shape
        camera, teacher, student = (
            cfg.model.camera_bev_channels,
            cfg.model.bev_channels,
            cfg.student.bev_channels,
        )
        self.cmd_field = d.cmd_field
        self.expects = {
            "camera_bev": (camera, h, w),
            self.cmd_field: (teacher, h, w),
            "fused_bev": (teacher, h, w),
            HEATMAP: (len(cfg.classes), h, w),
            REGRESSION: (len(REGRESSION_CHANNELS), h, w),
        }
        self.cmd_adaptor = nn.Sequential(
            conv_bn_relu(camera, camera), nn.Conv2d(camera, teacher, 1)
        )
        self.fused_adaptor: nn.Module = (
            nn.Identity() if student == teacher else nn.Conv2d(student, teacher, 1)
        )

    def kd_terms(self, out: StudentOutput, batch: StudentBatch) -> dict[str, torch.Tensor]:
        d, tg = self.d, batch.targets
        terms: dict[str, torch.Tensor] = {}
        prob = losses.as_probabilities(
            tg.field(HEATMAP), self.heatmap_activation.get(HEATMAP, "probabilities")
        )

        def present(name: str) -> torch.Tensor:
            return tg.present[name].to(prob.dtype).view(-1, 1, 1, 1)

        student_cam = out.features["camera_bev"]
        terms["kd_imd"] = d.imd_weight * losses.feature_mse(
            student_cam,
            tg.field("camera_bev"),
            present("camera_bev").expand(-1, 1, *student_cam.shape[-2:]),
        )
        labelled = batch.has_label.to(prob.dtype).view(-1, 1, 1, 1)
        peak = prob.amax(dim=1, keepdim=True)
        teacher_mask = peak * (peak > d.cmd_mask_threshold) * present(HEATMAP)
        mask = self.gt_mask(batch, clip=False) * labelled + teacher_mask * (1 - labelled)
        terms["kd_cmd"] = d.cmd_weight * masked_mse(
            self.cmd_adaptor(out.features["sim_lidar_bev"]), tg.field(self.cmd_field), mask,
            tg.present[self.cmd_field],
        )  # fmt: skip
        fused = self.fused_adaptor(out.features["fused_bev"])
        terms["kd_fused"] = d.fused_weight * losses.feature_mse(
            fused, tg.field("fused_bev"), present("fused_bev").expand(-1, 1, *fused.shape[-2:])
        )
        frames = tg.present[HEATMAP] & tg.present[REGRESSION]
        terms["kd_heatmap"] = self.resolved("heatmap_weight") * losses.qfl_heatmap(
            out.head.heatmap, prob, d.qfl_beta, frames=frames, normaliser="cells"
        )
        # the frames that could hold a GT centre: labelled, with the teacher's response
        box_frames = frames & batch.has_label.to(frames.device)
        centres = self.gt_centres(batch) & box_frames.view(-1, 1, 1)
        terms["kd_regression"] = self.resolved("regression_weight") * losses.centre_regression(
            out.head.regression, tg.field(REGRESSION), centres, self.code_weights, smooth=True,
            beta=BOX_BETA, per_frame=box_frames,
        )  # fmt: skip
        return terms
