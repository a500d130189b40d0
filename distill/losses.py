"""Distillation losses as small pure functions. Each docstring gives the formula and its source.

Shapes: features (B, C, H, W); heatmaps (B, K, H, W); box regression (B, 10, H, W) in
:data:`bevkd.pipeline.geometry.REGRESSION_CHANNELS` order; masks (B, 1, H, W) or (B, H, W)
in [0, 1]. Every function returns a scalar; a term with nothing to compare returns a zero that
keeps its inputs in the graph (so DDP sees every parameter take part).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_EPS = 1e-6


def _cell_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) float mask; all ones when ``mask`` is None."""
    if mask is None:
        return like.new_ones((like.shape[0], 1, *like.shape[-2:]))
    mask = mask.to(like.dtype)
    return mask if mask.ndim == 4 else mask.unsqueeze(1)


def feature_mse(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """CMKD's BEV feature loss (Hong et al., ECCV 2022; Cc-Hy/CMKD ``bev_loss``):

    ``mean((F_S - F_T)^2 * M) * numel(M) / sum(M)`` with a per-cell mask ``M`` broadcast over
    channels, i.e. ``sum_bchw M_bhw (F_S - F_T)^2 / (C * sum_bhw M_bhw)``: the mean squared
    error per channel over the masked cells. ``M`` defaults to all ones (CMKD's full-map MSE);
    frames to leave out get ``M = 0``.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"feature_mse: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}"
        )
    m = _cell_mask(mask, student)
    diff = (student.float() - teacher.float()) ** 2 * m
    return diff.sum() / (student.shape[1] * m.sum().clamp(min=_EPS))


def qfl_heatmap(
    student_logits: torch.Tensor,
    teacher_prob: torch.Tensor,
    beta: float = 2.0,
    threshold: float = 0.1,
    frames: torch.Tensor | None = None,
    normaliser: str = "positives",
) -> torch.Tensor:
    """Quality focal loss of student heatmap logits against teacher probabilities (CMKD's
    response loss, after Li et al.'s QFL; Cc-Hy/CMKD pcdet/utils/loss_utils.py
    ``QualityFocalLoss``): per (class, cell) entry ``q = BCEWithLogits(z_S, p_T) *
    |sigmoid(z_S) - p_T|^beta``, then

    - ``normaliser`` "positives": ``sum q / max(1, #{p_T > threshold})``, the count taken over
      the (class, cell) entries of the whole batch, as CMKD's CenterPoint head (Cc-Hy/CMKD
      center_head_soft.py ``get_loss``: entries above 0.3) and CMKD-MV (Cc-Hy/CMKD-MV
      mmdet3d/models/detectors/bevdet.py ``CMKD_BEVDet.forward_train``: entries at or above
      0.5, per task) count. Only CMKD's anchor V2 head (anchor_head_single_cmkd_v2.py
      ``get_cls_layer_loss``: above 0.1) counts per frame.
    - "cells": ``sum q / (H * W)``: each frame's mean over its cells, summed over classes and
      over the batch's frames, as SimDistill's released code ends up normalising
      (:class:`bevkd.distill.simdistill.SimDistill`). Equivalently the "positives" loss at a
      weight scaled by ``#{p_T > threshold} / (H * W)``.

    The modulating factor uses probabilities (CMKD-MV computes it on logits, a bug). The
    normaliser counts entries, not summed probability: a soft teacher's summed probability
    (about 0.03 on every empty cell of the demo teacher) would drown the peaks. ``frames``
    (B,) bool keeps only those frames.
    """
    if normaliser not in ("positives", "cells"):
        raise ValueError(f"qfl_heatmap: normaliser {normaliser!r} (positives or cells)")
    z = student_logits.float()
    p = teacher_prob.float()
    loss = F.binary_cross_entropy_with_logits(z, p, reduction="none")
    loss = loss * (torch.sigmoid(z) - p).abs().pow(beta)
    count = p > threshold
    if frames is not None:
        keep = frames.to(z.dtype).view(-1, 1, 1, 1)
        loss, count = loss * keep, count & frames.view(-1, 1, 1, 1)
    if normaliser == "cells":
        return loss.sum() / float(z.shape[-2] * z.shape[-1])
    return loss.sum() / count.sum().clamp(min=1).to(z.dtype)


def soft_regression(
    student_reg: torch.Tensor,
    teacher_reg: torch.Tensor,
    teacher_prob: torch.Tensor,
    threshold: float = 0.1,
    channel_weights: Sequence[float] | None = None,
    frames: torch.Tensor | None = None,
    normaliser: str = "cells",
) -> torch.Tensor:
    """CMKD's soft box regression: SmoothL1 (beta 1) between student and teacher regression
    maps, weighted per cell by the teacher's confidence ``w = sum_k p_T`` where ``w >
    threshold`` (0 elsewhere), with per-channel weights ``c`` (default 1):

    ``L = sum_bhw w_bhw sum_c c_c SmoothL1(R_S - R_T)_bchw / N``, where ``N`` is

    - ``normaliser`` "cells": ``B * H * W``, every cell of the ``frames`` kept. This is
      CMKD-MV's (Cc-Hy/CMKD-MV mmdet3d/models/detectors/bevdet.py
      ``CMKD_BEVDet.forward_train``: ``(SmoothL1(pred, teacher) * sigmoid(sum_k z_T)).mean()``
      per head, summed over the heads), the normalisation its weight 50 goes with: with ``c``
      = 1 / (the channels of the channel's CenterPoint head), ``L`` is the sum over heads of
      each head's mean over (B, its channels, H, W), exactly CMKD-MV's term for one task.
      CMKD-MV weighs a cell by ``sigmoid(sum_k z_T)`` of its task's few classes and keeps every
      cell; over bevkd's one ten-class head that sigmoid of summed logits would be ~0 at an
      object (nine background logits in the sum), so ``w`` is CMKD's summed probability.
    - "masked": ``max(1, #{w > threshold})``, the kept cells of the batch. With ``c`` = 1 this
      is CMKD's CenterPoint head (Cc-Hy/CMKD pcdet/models/dense_heads/center_head_soft.py
      ``get_loss``: ``(SmoothL1 * w * C)[w > 0.1].mean() * 4``, channels summed, its weight
      4). CMKD's anchor V2 head (anchor_head_single_cmkd_v2.py ``get_box_reg_layer_loss``)
      alone counts the kept cells per frame and averages the frames.

    A confidence-weighted mean (dividing by ``sum w``) is neither: it is ``B * H * W / sum w``
    times the "cells" term (94x on a synthetic map whose mean ``w`` per cell is 1/94), so
    CMKD-MV's weight 50 would not mean what it means there.
    ``frames`` (B,) bool keeps only those frames.
    """
    if normaliser not in ("cells", "masked"):
        raise ValueError(f"soft_regression: normaliser {normaliser!r} (cells or masked)")
    weight = teacher_prob.float().sum(dim=1)  # (B, H, W)
    kept = weight > threshold
    if frames is not None:
        kept = kept & frames.view(-1, 1, 1).to(kept.device)
    weight = weight * kept
    err = F.smooth_l1_loss(student_reg.float(), teacher_reg.float(), reduction="none", beta=1.0)
    if channel_weights is not None:
        cw = torch.tensor(channel_weights, dtype=err.dtype, device=err.device)
        if cw.numel() != err.shape[1]:
            raise ValueError(
                f"soft_regression: {cw.numel()} channel weights for {err.shape[1]} channels"
            )
        err = err * cw.view(1, -1, 1, 1)
    total = (err.sum(dim=1) * weight).sum()
    if normaliser == "masked":
        return total / kept.sum().clamp(min=1).to(total.dtype)
    n_frames = torch.tensor(err.shape[0]) if frames is None else frames.sum()
    cells = n_frames.clamp(min=1).to(total.device, total.dtype) * (err.shape[-2] * err.shape[-1])
    return total / cells


def centre_regression(
    student_reg: torch.Tensor,
    teacher_reg: torch.Tensor,
    centres: torch.Tensor,
    code_weights: Sequence[float] | None = None,
    smooth: bool = False,
    beta: float = 1.0,
    per_frame: torch.Tensor | None = None,
) -> torch.Tensor:
    """Student vs teacher box regression maps at the GT centre cells (LabelDistill's L1,
    SimDistill's MMD-P SmoothL1):

    ``sum_{b,h,w in centres} sum_c c_c l(R_S - R_T) / N``, ``l`` = |d| or SmoothL1 with
    ``beta``, per-channel weights ``c`` (default 1); ``N`` = ``max(1, #centres)`` (a mean per
    box, LabelDistill's ``avg_factor``), or with ``per_frame`` (B,) bool ``max(1, #frames)``
    (a sum per frame, averaged over those frames: SimDistill's ``sum() / batch_size``).
    ``centres``: (B, H, W) bool.
    """
    diff = student_reg.float() - teacher_reg.float()
    err = (
        F.smooth_l1_loss(diff, torch.zeros_like(diff), reduction="none", beta=beta)
        if smooth
        else diff.abs()
    )
    if code_weights is not None:
        cw = torch.tensor(code_weights, dtype=err.dtype, device=err.device)
        if cw.numel() != err.shape[1]:
            raise ValueError(
                f"centre_regression: {cw.numel()} code weights for {err.shape[1]} channels"
            )
        err = err * cw.view(1, -1, 1, 1)
    m = centres.to(err.dtype)
    count = m.sum() if per_frame is None else per_frame.sum().to(err.dtype)
    return (err.sum(dim=1) * m).sum() / count.clamp(min=1.0)


def as_probabilities(heatmap: torch.Tensor, activation: str) -> torch.Tensor:
    """A cached heatmap as probabilities, whichever way the store declares it was written."""
    if activation == "probabilities":
        return heatmap
    if activation == "logits":
        return torch.sigmoid(heatmap)
    raise ValueError(f"unknown heatmap activation {activation!r} (logits or probabilities)")


def downsample_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A (B, 1, H, W) cell mask at another scale: max over the cells each coarse cell covers
    (an object anywhere in it counts), or nearest when upsampling."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    if mask.shape[-2] > size[0]:
        return F.adaptive_max_pool2d(mask, tuple(size))
    return F.interpolate(mask, size=tuple(size), mode="nearest")
