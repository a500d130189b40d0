"""LabelDistill (Kim et al., ECCV 2024; sanmin0312/LabelDistill) as a recipe over the cached
LiDAR teacher and label encoder."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bevkd.datasets.student_batch import StudentBatch
from bevkd.distill import losses
from bevkd.distill.base import Recipe
from bevkd.models.camera_student import StudentOutput
from bevkd.models.image_backbone import BasicBlock
from bevkd.models.targets import gaussian_focal_loss
from bevkd.pipeline.config import Config, ConfigError
from bevkd.pipeline.geometry import REGRESSION_CHANNELS

# BEV scale -> (student feature, suffix of the store fields distilled at that scale).
SCALES: dict[int, tuple[str, str]] = {1: ("bev", ""), 2: ("bev_s2", "_s2")}
HEATMAP, REGRESSION = "heatmap", "box_regression"


def adaptor(in_channels: int, out_channels: int) -> nn.Sequential:
    """LabelDistill's ``DistillAdaptor`` block: conv3x3 (replicate padding) + BN + ReLU, then a
    residual BasicBlock, mapping (B, in_channels, H, W) to (B, out_channels, H, W)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode="replicate", bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        BasicBlock(out_channels, out_channels),
    )


def masked_feature_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """LabelDistill's feature loss (``get_feature_distill_loss`` in its experiment files):

    ``sum_bxy m_bxy sum_c (F_T - A(F_S))^2 / max(1, sum_bxy m_bxy)``: the squared error summed
    over channels (not averaged, unlike CMKD's), weighted per cell by ``mask`` (B, 1, H, W).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"masked_feature_loss: adapted student {tuple(student.shape)} vs teacher "
            f"{tuple(teacher.shape)}"
        )
    per_cell = ((teacher.float() - student.float()) ** 2).sum(dim=1, keepdim=True)
    m = mask.to(per_cell.dtype)
    return (per_cell * m).sum() / m.sum().clamp(min=1.0)


def heatmap_target(gt_heatmap: torch.Tensor, teacher_prob: torch.Tensor) -> torch.Tensor:
    """The response target (B, K, H, W): 1 at the GT centres (where the GT gaussian is 1),
    ``p_T * g`` elsewhere. LabelDistill's code uses ``p_T * g`` everywhere, which never reaches
    1, so the gaussian focal loss (positives where target == 1) would have no positives."""
    gt = gt_heatmap.float()
    return torch.where(gt == 1.0, torch.ones_like(gt), teacher_prob.float() * gt)


class LabelDistill(Recipe):
    """LabelDistill (Kim et al., ECCV 2024): the student's BEV split in thirds, the first
    distilled from the label encoder, the second from the LiDAR teacher, the last left free.

    At each scale of ``distill.bev_scales`` (1: ``bev`` vs ``*_bev``, 2: ``bev_s2`` vs
    ``*_bev_s2``), a student map of ``n`` channels gives its channels ``[0, n//3)`` to the label
    adaptor and ``[n//3, 2*(n//3))`` to the LiDAR adaptor (the upstream split; the rest is
    free). Each adaptor (:func:`adaptor`) maps its third to the teacher's channels. The
    adaptors train with the student and live here, not in the student: the loop saves them in
    ``last.pt``'s ``objective`` entry, and ``best.pt``/``last.pt``'s ``model`` is the plain
    student.

    Terms, at the paper's weights (:data:`DEFAULTS` holds those another recipe reads too):

    - ``kd_lidar``: :func:`masked_feature_loss` of the LiDAR adaptor's output against
      ``lidar_bev`` (+ ``lidar_bev_s2``), summed over the scales; the mask is the sum over
      classes of the GT gaussians (soft), bilinearly resized at stride 2. ``distill.bev_weight``
      (paper 0.3).
    - ``kd_label``: the same against ``label_bev`` (+ ``label_bev_s2``) with the mask binarised
      (m > 0). ``distill.label_weight`` (paper 0.3).
    - ``kd_heatmap``: :func:`gaussian_focal_loss` of the student's heatmap against
      :func:`heatmap_target` (the teacher's probabilities times the GT gaussians, 1 at the GT
      centres), over the number of GT centres as upstream's ``avg_factor``.
      ``distill.heatmap_weight`` (paper 1).
    - ``kd_regression``: L1 (``head.code_weights``) between the student's and the teacher's box
      maps at the GT centre cells, a mean per box (:func:`losses.centre_regression`; upstream
      ``L1Loss`` with ``avg_factor`` = the number of boxes). ``distill.regression_weight``
      (paper 0.25).
    - ``distill.mode`` "gt+kd" keeps the GT detection terms on labelled frames (the paper);
      "kd" drops them. Either way the KD terms above use the GT (masks, centres, label
      embeddings): LabelDistill is not a label-free recipe. Depth stays.

    Unlabelled frames (``student.unlabeled``) have no GT and no ``label_bev``:

    - ``kd_lidar`` masks them with the teacher's heatmap instead, ``max_k p_T`` where it
      exceeds ``distill.unlabelled_mask_threshold`` (0.3; 0 below), kept soft like the GT mask
      it stands in for. LiDAR features are what unlabelled frames can still teach; the cut
      keeps a soft teacher's background floor (about 0.03 on the demo teacher's empty cells)
      from outweighing the objects in the normaliser. One normaliser spans the batch, GT and
      teacher masks alike.
    - ``kd_label`` skips them: the label embedding encodes GT (a store may even hold one for a
      frame whose GT is hidden: it is never read there).
    - ``kd_heatmap`` and ``kd_regression`` skip them: both are defined by the GT (its centres,
      its gaussians); on a frame without GT the target would be zero everywhere and teach the
      student to see nothing.

    A frame lacking a field (``present`` False) contributes nothing to the terms reading it;
    an adaptor runs only on the frames its term uses (its BatchNorm statistics are theirs).
    """

    # sanmin0312/LabelDistill labeldistill/exps/nuscenes/labeldistill/
    # LabelDistill_r50_128x128_e24_{2,4}key.py: get_feature_distill_loss(lidar ...) * 0.3 (its
    # label term's 0.3 is distill.label_weight); head loss_cls GaussianFocalLoss (weight 1) and
    # loss_bbox L1Loss loss_weight 0.25, which kd_head.py response_loss reuses for the KD terms.
    DEFAULTS: ClassVar[dict[str, float]] = {
        "bev_weight": 0.3,
        "heatmap_weight": 1.0,
        "regression_weight": 0.25,
    }

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, use_gt=cfg.distill.mode == "gt+kd")
        d = self.d  # its choices were checked when the config loaded; weights filled
        self.code_weights = cfg.head.code_weights
        self.scales = tuple(sorted(d.bev_scales))
        h, w = self.grid.shape
        # The LiDAR teacher's SECOND backbone: C channels at stride 1, 2C at stride 2; the
        # label encoder's heads copy those shapes (models/label_encoder.py, _assemble).
        teacher = cfg.model.bev_channels
        student = cfg.student.bev_channels
        if student < 3:
            raise ConfigError(
                f"student.bev_channels={student}: LabelDistill splits the student's BEV into "
                "thirds; use at least 3 channels"
            )
        self.thirds = {scale: scale * student // 3 for scale in self.scales}
        self.lidar_adaptors = nn.ModuleDict()
        self.label_adaptors = nn.ModuleDict()
        for scale in self.scales:
            suffix = SCALES[scale][1]
            shape = (scale * teacher, h // scale, w // scale)
            self.expects[f"label_bev{suffix}"] = shape
            self.expects[f"lidar_bev{suffix}"] = shape
            self.label_adaptors[str(scale)] = adaptor(self.thirds[scale], scale * teacher)
            self.lidar_adaptors[str(scale)] = adaptor(self.thirds[scale], scale * teacher)
        self.expects[HEATMAP] = (self.num_classes, h, w)
        self.expects[REGRESSION] = (len(REGRESSION_CHANNELS), h, w)

    def teacher_prob(self, batch: StudentBatch) -> torch.Tensor:
        activation = self.heatmap_activation.get(HEATMAP, "probabilities")
        return losses.as_probabilities(batch.targets.field(HEATMAP), activation).float()

    def kd_terms(self, out: StudentOutput, batch: StudentBatch) -> dict[str, torch.Tensor]:
        d = self.d
        terms: dict[str, torch.Tensor] = {}
        gt_heatmap = self.gt_heatmaps(batch)  # zero on unlabelled frames
        prob = self.teacher_prob(batch)
        labelled = batch.has_label.to(prob.device).view(-1, 1, 1, 1)
        kd_lidar, kd_label = self._feature_terms(out, batch, gt_heatmap, prob, labelled)
        terms["kd_lidar"] = self.resolved("bev_weight") * kd_lidar
        terms["kd_label"] = d.label_weight * kd_label
        heatmap_frames = batch.has_label.to(prob.device) & batch.targets.present[HEATMAP]
        target = heatmap_target(gt_heatmap, prob)
        terms["kd_heatmap"] = self.resolved("heatmap_weight") * gaussian_focal_loss(
            out.head.heatmap[heatmap_frames].float(), target[heatmap_frames]
        )
        centres = self.gt_centres(batch) & batch.targets.present[REGRESSION].view(-1, 1, 1)
        terms["kd_regression"] = self.resolved("regression_weight") * losses.centre_regression(
            out.head.regression, batch.targets.field(REGRESSION), centres, self.code_weights
        )
        return terms

    def _feature_terms(
        self,
        out: StudentOutput,
        batch: StudentBatch,
        gt_heatmap: torch.Tensor,
        prob: torch.Tensor,
        labelled: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(LiDAR, label) feature losses summed over the scales, unweighted."""
        tg = batch.targets
        gt_mask = gt_heatmap.sum(dim=1, keepdim=True)  # soft, unclipped: gt_mask(clip=False)
        p_max = prob.amax(dim=1, keepdim=True)
        teacher_mask = p_max * (p_max > self.d.unlabelled_mask_threshold)
        teacher_mask = teacher_mask * tg.present[HEATMAP].to(p_max.dtype).view(-1, 1, 1, 1)
        lidar_mask = torch.where(labelled, gt_mask, teacher_mask)
        kd_lidar = kd_label = gt_mask.new_zeros(())
        for scale in self.scales:
            feature, suffix = SCALES[scale]
            student = out.features[feature]
            n = self.thirds[scale]
            size = tuple(student.shape[-2:])
            soft = self._resized(lidar_mask, size)
            binary = (self._resized(gt_mask, size) > 0).to(soft.dtype)
            lidar_field, label_field = f"lidar_bev{suffix}", f"label_bev{suffix}"
            # Each adaptor sees only the frames its term reads, so its BatchNorm statistics
            # never mix in a frame the term leaves out (an empty selection is a zero term).
            frames = tg.present[lidar_field]
            adapted = self.lidar_adaptors[str(scale)](student[frames, n : 2 * n])
            kd_lidar = kd_lidar + masked_feature_loss(
                adapted, tg.field(lidar_field)[frames], soft[frames]
            )
            frames = labelled.view(-1) & tg.present[label_field]
            adapted = self.label_adaptors[str(scale)](student[frames, :n])
            teacher = tg.field(label_field)[frames]
            kd_label = kd_label + masked_feature_loss(adapted, teacher, binary[frames])
        return kd_lidar, kd_label

    @staticmethod
    def _resized(mask: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """The (B, 1, H, W) mask at ``size``: bilinear, as LabelDistill resizes its GT mask
        (align_corners False: a coarse cell is then the mean of the fine cells it covers;
        upstream's True shifts the mask by up to a cell)."""
        if tuple(mask.shape[-2:]) == size:
            return mask
        return F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
