"""CMKD (Hong, Dai, Ding; ECCV 2022) as a recipe over the cached LiDAR (or fusion) teacher."""

from __future__ import annotations

import torch

from bevkd.datasets.student_batch import StudentBatch
from bevkd.distill import losses
from bevkd.distill.base import Recipe
from bevkd.models.camera_student import FEATURE_FIELDS, StudentOutput
from bevkd.pipeline.config import Config
from bevkd.pipeline.geometry import REGRESSION_CHANNELS

# The teacher whose response is distilled -> its store fields (heatmap, box regression).
TEACHER_RESPONSE_FIELDS: dict[str, tuple[str, str]] = {
    "lidar": ("heatmap", "box_regression"),
    "fusion": ("fusion_heatmap", "fusion_box_regression"),
}


class CMKD(Recipe):
    """CMKD (Hong, Dai, Ding; ECCV 2022), with CMKD-MV's GT terms as an option.

    - ``kd_bev`` (and ``kd_bev_s2``): :func:`losses.feature_mse` of the student's BEV against
      ``lidar_bev`` (``lidar_bev_s2``), full map by default; ``distill.bev_mask`` = "teacher"
      keeps cells where the teacher's heatmap exceeds ``heatmap_threshold``, "gt" the GT
      gaussians (labelled frames only: an unlabelled frame has no GT to mask with).
    - ``kd_heatmap``: :func:`losses.qfl_heatmap` (beta 2) against the teacher's probabilities.
    - ``kd_regression``: :func:`losses.soft_regression` weighted by the teacher's confidence.
    - ``distill.mode`` "gt+kd" keeps the GT CenterPoint terms on labelled frames (CMKD-MV);
      "kd" is pure mimicry, no GT on any frame (the released KITTI code). Depth stays either
      way: LiDAR depth is not a label.
    - ``distill.response: false`` drops the two response terms: CMKD's phase 1. Phase 2 is a
      second run with ``student.init_from`` = phase 1's checkpoint.

    Weights default to CMKD-MV's nuScenes values (METHODS.md): BEV 50, QFL 0.2, box 50.
    """

    def __init__(self, cfg: Config) -> None:
        d = cfg.distill  # its choices are checked when the config loads
        super().__init__(cfg, use_gt=d.mode == "gt+kd")
        self.d = d
        self.code_weights = cfg.head.code_weights
        h, w = self.grid.shape
        c = cfg.student.bev_channels
        self.bev_features = {1: "bev", 2: "bev_s2"}
        if d.bev_weight > 0:
            shapes = {1: (c, h, w), 2: (2 * c, h // 2, w // 2)}
            for scale in d.bev_scales:
                self.expects[FEATURE_FIELDS[self.bev_features[scale]]] = shapes[scale]
        self.heatmap_field, self.regression_field = TEACHER_RESPONSE_FIELDS[d.teacher]
        needs_heatmap = d.response or (d.bev_weight > 0 and d.bev_mask == "teacher")
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
        if d.bev_weight > 0:
            mask = self._bev_mask(batch, prob)
            for scale in d.bev_scales:
                feature = self.bev_features[scale]
                field = FEATURE_FIELDS[feature]
                student = out.features[feature]
                m = losses.downsample_mask(mask, student.shape[-2:])
                m = m * tg.present[field].to(m.dtype).view(-1, 1, 1, 1)
                name = "kd_bev" if scale == 1 else "kd_bev_s2"
                terms[name] = d.bev_weight * losses.feature_mse(student, tg.field(field), m)
        if d.response:
            assert prob is not None
            frames = tg.present[self.heatmap_field] & tg.present[self.regression_field]
            terms["kd_heatmap"] = d.heatmap_weight * losses.qfl_heatmap(
                out.head.heatmap, prob, d.qfl_beta, d.heatmap_threshold, frames
            )
            terms["kd_regression"] = d.regression_weight * losses.soft_regression(
                out.head.regression, tg.field(self.regression_field), prob,
                d.regression_threshold, self.code_weights, frames,
            )  # fmt: skip
        return terms

    def _bev_mask(self, batch: StudentBatch, prob: torch.Tensor | None) -> torch.Tensor:
        if self.d.bev_mask == "gt":
            return self.gt_mask(batch)
        if self.d.bev_mask == "teacher":
            assert prob is not None
            # A frame without a cached heatmap gets no mask (its zero fill is not "background").
            present = batch.targets.present[self.heatmap_field].float().view(-1, 1, 1, 1)
            return (prob.amax(dim=1, keepdim=True) > self.d.heatmap_threshold).float() * present
        return batch.images.new_ones((batch.size, 1, *self.grid.shape))
