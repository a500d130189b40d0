"""Recipes: what a student learns from, as named, weighted loss terms.

A recipe is a small ``nn.Module``. It declares the store fields it reads (``expects``: field
-> the per-frame shape it needs, or None for any) and returns ``{term: weighted scalar}`` from
``forward(out, batch)``; the loop sums the terms. GT terms apply to labelled frames only
(``batch.has_label``), so an unlabelled frame meets teacher terms alone. Where the targets
came from (the store, or a teacher run in the step) is not a recipe's business.

Recipes are chosen by the literal table :data:`RECIPES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bevkd.datasets.student_batch import StudentBatch
from bevkd.distill import losses
from bevkd.models.camera_bev import depth_loss
from bevkd.models.camera_student import FEATURE_FIELDS, StudentOutput
from bevkd.models.targets import gaussian_heatmaps, labelled_detection_loss
from bevkd.pipeline.config import Config, ConfigError
from bevkd.pipeline.geometry import REGRESSION_CHANNELS

Shape = tuple[int, ...] | None

# The teacher whose response CMKD distills -> its store fields.
TEACHER_RESPONSE_FIELDS: dict[str, tuple[str, str]] = {
    "lidar": ("heatmap", "box_regression"),
    "fusion": ("fusion_heatmap", "fusion_box_regression"),
}


class Recipe(nn.Module):
    """Base: the GT detection and depth terms every recipe keeps (unless it drops GT)."""

    def __init__(self, cfg: Config, use_gt: bool = True) -> None:
        super().__init__()
        self.grid = cfg.grid.bev_grid
        self.head_cfg, self.num_classes = cfg.head, len(cfg.classes)
        self.depth_weight = cfg.model.depth_loss_weight
        self.depth_bins = cfg.model.depth_bins
        self.use_gt = use_gt
        self.expects: dict[str, Shape] = {}
        self.heatmap_activation: dict[str, str] = {}

    def bind(self, fields: dict[str, Any]) -> Recipe:
        """Learn how the store wrote its fields (``name -> FieldSpec``): heatmap activations."""
        self.heatmap_activation = {
            name: spec.heatmap_activation for name, spec in fields.items() if spec.kind == "heatmap"
        }
        return self

    def gt_terms(self, out: StudentOutput, batch: StudentBatch) -> dict[str, torch.Tensor]:
        """``gt_heatmap`` + ``gt_regression`` (CenterPoint, labelled frames) and ``depth``
        (BEVDepth BCE against LiDAR depth, every frame)."""
        terms: dict[str, torch.Tensor] = {}
        if self.use_gt:
            det = labelled_detection_loss(
                out.head, batch.gt_boxes, batch.gt_labels, batch.has_label, batch.tokens,
                self.grid, self.num_classes, self.head_cfg, allow_unlabelled=True,
            )  # fmt: skip
            terms = {f"gt_{k}": v for k, v in det.items()}
        terms["depth"] = self.depth_weight * depth_loss(
            out.depth_logits, batch.depth, self.depth_bins
        )
        return terms

    def gt_mask(self, batch: StudentBatch) -> torch.Tensor:
        """(B, 1, H, W) sum over classes of the GT gaussians, clipped to 1; 0 on unlabelled frames."""
        heat = gaussian_heatmaps(
            batch.gt_boxes, batch.gt_labels, self.grid, self.num_classes, self.head_cfg
        )
        labelled = batch.has_label.to(heat.dtype).view(-1, 1, 1, 1)
        return heat.sum(dim=1, keepdim=True).clamp(max=1.0) * labelled

    def forward(self, out: StudentOutput, batch: StudentBatch) -> dict[str, torch.Tensor]:
        return self.gt_terms(out, batch)


class Baseline(Recipe):
    """GT detection and depth losses only: the reference every distilled student must beat."""


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

    def forward(self, out: StudentOutput, batch: StudentBatch) -> dict[str, torch.Tensor]:
        d, tg = self.d, batch.targets
        terms = self.gt_terms(out, batch)
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


RECIPES: dict[str, Callable[[Config], Recipe]] = {
    "baseline": Baseline,
    "cmkd": CMKD,
}


def build_recipe(cfg: Config) -> Recipe:
    """The recipe ``student.recipe`` names."""
    make = RECIPES.get(cfg.student.recipe)
    if make is None:
        raise ConfigError(
            f"student.recipe '{cfg.student.recipe}' is unknown; recipes: {sorted(RECIPES)}"
        )
    return make(cfg)
