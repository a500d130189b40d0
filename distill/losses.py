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
) -> torch.Tensor:
    """Quality focal loss of student heatmap logits against teacher probabilities (CMKD's
    response loss, after Li et al.'s QFL; Cc-Hy/CMKD ``qfl``):

    ``sum BCEWithLogits(z_S, p_T) * |sigmoid(z_S) - p_T|^beta / max(1, #{p_T > threshold})``,
    the count taken over the (class, cell) entries of the whole batch (upstream counts per
    frame and class; one batch count keeps a frame with few objects from weighing more).

    The modulating factor uses probabilities (CMKD-MV computes it on logits, a bug), and the
    normaliser counts entries above the threshold: a soft teacher's summed probability would
    drown the peaks (MEASURED.md). ``frames`` (B,) bool keeps only those frames.
    """
    z = student_logits.float()
    p = teacher_prob.float()
    loss = F.binary_cross_entropy_with_logits(z, p, reduction="none")
    loss = loss * (torch.sigmoid(z) - p).abs().pow(beta)
    count = p > threshold
    if frames is not None:
        keep = frames.to(z.dtype).view(-1, 1, 1, 1)
        loss, count = loss * keep, count & frames.view(-1, 1, 1, 1)
    return loss.sum() / count.sum().clamp(min=1).to(z.dtype)


def soft_regression(
    student_reg: torch.Tensor,
    teacher_reg: torch.Tensor,
    teacher_prob: torch.Tensor,
    threshold: float = 0.1,
    code_weights: Sequence[float] | None = None,
    frames: torch.Tensor | None = None,
) -> torch.Tensor:
    """CMKD's soft box regression (Cc-Hy/CMKD ``soft_reg_loss``): SmoothL1 (beta 1) between
    student and teacher regression maps, weighted per cell by the teacher's confidence
    ``w = sum_k p_T`` where ``w > threshold``:

    ``sum_bhw w m sum_c c_c SmoothL1(R_S - R_T) / max(sum_bhw w m, eps)``, ``m = [w > thr]``,
    with per-channel weights ``c`` (default 1). ``frames`` (B,) bool keeps only those frames.

    Upstream divides by the number of cells with ``m`` per frame; dividing by the summed
    confidence instead makes the term a confidence-weighted mean per cell, whose scale does not
    grow with how sure the teacher is (a deliberate change; METHODS.md gives no divisor).
    """
    weight = teacher_prob.float().sum(dim=1)  # (B, H, W)
    weight = weight * (weight > threshold)
    if frames is not None:
        weight = weight * frames.to(weight.dtype).view(-1, 1, 1)
    err = F.smooth_l1_loss(student_reg.float(), teacher_reg.float(), reduction="none", beta=1.0)
    if code_weights is not None:
        cw = torch.tensor(code_weights, dtype=err.dtype, device=err.device)
        if cw.numel() != err.shape[1]:
            raise ValueError(
                f"soft_regression: {cw.numel()} code weights for {err.shape[1]} channels"
            )
        err = err * cw.view(1, -1, 1, 1)
    return (err.sum(dim=1) * weight).sum() / weight.sum().clamp(min=_EPS)


def centre_regression(
    student_reg: torch.Tensor,
    teacher_reg: torch.Tensor,
    centres: torch.Tensor,
    code_weights: Sequence[float] | None = None,
    smooth: bool = False,
) -> torch.Tensor:
    """Student vs teacher box regression maps at the GT centre cells (LabelDistill's L1,
    SimDistill's MMD-P SmoothL1 with beta 1):

    ``sum_{b,h,w in centres} sum_c c_c l(R_S - R_T) / max(1, #centres)``, ``l`` = |d| or
    SmoothL1, per-channel weights ``c`` (default 1). ``centres``: (B, H, W) bool.
    """
    diff = student_reg.float() - teacher_reg.float()
    err = (
        F.smooth_l1_loss(diff, torch.zeros_like(diff), reduction="none", beta=1.0)
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
    return (err.sum(dim=1) * m).sum() / m.sum().clamp(min=1.0)


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
