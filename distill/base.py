"""The recipe base: what every student recipe shares (GT detection and depth terms, the GT
mask), and the GT-only :class:`Baseline`.

A recipe is a small ``nn.Module``. It declares the store fields it reads (``expects``: field
-> the per-frame shape it needs, or None for any) and returns ``{term: weighted scalar}`` from
``forward(out, batch)``; the loop sums the terms. It owns the defaults of the ``distill.*``
weights that mean different things to different recipes (``DEFAULTS``, its paper's values):
DistillConfig leaves those None, and a recipe reads ``self.d``, its config with them filled.
GT terms apply to labelled frames only (``batch.has_label``), so an unlabelled frame meets
teacher terms alone. Where the targets came from (the store, or a teacher run in the step) is
not a recipe's business. Modules a recipe owns (adaptors, generators) train with the student
and are not part of the student's inference checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from bevkd.datasets.student_batch import StudentBatch
from bevkd.models.camera_bev import depth_loss
from bevkd.models.camera_student import StudentOutput
from bevkd.models.targets import build_targets, gaussian_heatmaps, labelled_detection_loss
from bevkd.pipeline.config import Config, ConfigError, DistillConfig

Shape = tuple[int, ...] | None


def fill_defaults(d: DistillConfig, defaults: Mapping[str, float]) -> DistillConfig:
    """``d`` with each of its None fields named in ``defaults`` set to the default; fields the
    config set keep their value."""
    unset: dict[str, Any] = {k: v for k, v in defaults.items() if getattr(d, k) is None}
    return dataclasses.replace(d, **unset) if unset else d


class Recipe(nn.Module):
    """Base: the GT detection and depth terms every recipe keeps (unless it drops GT)."""

    # distill.* key -> this recipe's default (its paper's value, the source beside it in the
    # subclass), for the keys DistillConfig leaves None because recipes disagree on them
    DEFAULTS: ClassVar[dict[str, float]] = {}

    def __init__(self, cfg: Config, use_gt: bool = True) -> None:
        super().__init__()
        self.d = fill_defaults(cfg.distill, self.DEFAULTS)
        self.grid = cfg.grid.bev_grid
        self.head_cfg, self.num_classes = cfg.head, len(cfg.classes)
        self.depth_weight = cfg.model.depth_loss_weight
        self.depth_bins = cfg.model.depth_bins
        self.use_gt = use_gt
        self.expects: dict[str, Shape] = {}
        self.heatmap_activation: dict[str, str] = {}

    def resolved(self, key: str) -> float:
        """The resolved value of ``distill.<key>`` (a weight DistillConfig may leave None)."""
        value = getattr(self.d, key)
        if value is None:
            raise ConfigError(
                f"distill.{key} is not set and the {type(self).__name__} recipe has no default "
                f"for it: set distill.{key}"
            )
        return float(value)

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

    def gt_heatmaps(self, batch: StudentBatch) -> torch.Tensor:
        """(B, K, H, W) CenterPoint GT gaussians (peaks exactly 1 at box centres); all zero on
        unlabelled frames."""
        heat = gaussian_heatmaps(
            batch.gt_boxes, batch.gt_labels, self.grid, self.num_classes, self.head_cfg
        )
        return heat * batch.has_label.to(heat.dtype).view(-1, 1, 1, 1)

    def gt_mask(self, batch: StudentBatch, clip: bool = True) -> torch.Tensor:
        """(B, 1, H, W) sum over classes of the GT gaussians (clipped to 1 unless ``clip`` is
        False); 0 on unlabelled frames."""
        heat = self.gt_heatmaps(batch).sum(dim=1, keepdim=True)
        return heat.clamp(max=1.0) if clip else heat

    def gt_centres(self, batch: StudentBatch) -> torch.Tensor:
        """(B, H, W) bool: the cells holding a GT box centre (CenterPoint's regression cells);
        none on unlabelled frames."""
        centres = build_targets(
            batch.gt_boxes, batch.gt_labels, self.grid, self.num_classes, self.head_cfg
        ).mask
        return centres & batch.has_label.view(-1, 1, 1).to(centres.device)

    def kd_terms(self, out: StudentOutput, batch: StudentBatch) -> dict[str, torch.Tensor]:
        """The recipe's own terms (distillation, pseudo-labels); none for the baseline."""
        return {}

    def forward(self, out: StudentOutput, batch: StudentBatch) -> dict[str, torch.Tensor]:
        """The GT terms and the recipe's own (:meth:`kd_terms`)."""
        return {**self.gt_terms(out, batch), **self.kd_terms(out, batch)}


class Baseline(Recipe):
    """GT detection and depth losses only: the reference every distilled student must beat."""
