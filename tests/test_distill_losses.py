"""Distillation losses against hand arithmetic, GT masking by ``has_label`` in a real tiny
camera student, and the CMKD recipe's terms, weights and per-frame ``present`` masks.

Expected values are written out with :mod:`math` on 2x2 maps, never with the torch functions
the implementation calls, so a slip in a formula cannot check itself.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from bevkd.datasets.student_batch import StudentBatch, Targets, collate_targets
from bevkd.distill import losses
from bevkd.distill.recipes import CMKD, Baseline, build_recipe
from bevkd.models.camera_student import StudentOutput, build_camera_student
from bevkd.models.outputs import HeadOutput
from bevkd.pipeline.config import Config, load_config

# ------------------------------------------------------------------------------------------
# Scalar definitions the expected values are built from
# ------------------------------------------------------------------------------------------


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def bce_with_logits(z: float, p: float) -> float:
    s = sigmoid(z)
    return -(p * math.log(s) + (1.0 - p) * math.log(1.0 - s))


def smooth_l1(d: float) -> float:
    """SmoothL1 with beta 1: 0.5 d^2 inside |d| < 1, |d| - 0.5 outside."""
    return 0.5 * d * d if abs(d) < 1.0 else abs(d) - 0.5


def t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def close(value: torch.Tensor, expected: float) -> None:
    assert value.ndim == 0
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


# ------------------------------------------------------------------------------------------
# feature_mse
# ------------------------------------------------------------------------------------------


def test_feature_mse_full_map_is_the_per_channel_mean_squared_error() -> None:
    student = t([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [1.0, -1.0]]]])  # (1, 2, 2, 2)
    teacher = t([[[[1.0, 0.0], [1.0, 4.0]], [[0.5, 0.0], [0.0, 1.0]]]])
    channel0 = [0.0, 2.0**2, 2.0**2, 0.0]
    channel1 = [0.5**2, 0.0, 1.0**2, 2.0**2]
    squares = [*channel0, *channel1]
    expected = sum(squares) / (2 * 4)  # C = 2 channels x 4 cells: 13.25 / 8
    close(losses.feature_mse(student, teacher), expected)
    close(losses.feature_mse(teacher, student), expected)  # symmetric
    close(losses.feature_mse(student, student), 0.0)


def test_feature_mse_mask_weights_cells_and_matches_the_cmkd_formula() -> None:
    # B=2, C=2, 2x2; frame 1 is masked out entirely and differs wildly from its teacher.
    student = t(
        [
            [[[1.0, 5.0], [2.0, 0.0]], [[0.0, 1.0], [-1.0, 3.0]]],
            [[[100.0, 100.0], [100.0, 100.0]], [[-50.0, 0.0], [0.0, 9.0]]],
        ]
    )
    teacher = torch.zeros_like(student)
    teacher[0, 0, 0, 0], teacher[0, 1, 1, 0] = 3.0, 0.5
    mask = t([[[1.0, 0.0], [0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])  # (B, H, W)
    # The docstring: sum_bchw M_bhw (F_S - F_T)^2 / (C * sum_bhw M_bhw).
    # frame 0, cell (0,0) weight 1: channel diffs 1-3 = -2 and 0-0 = 0
    # frame 0, cell (1,0) weight 0.5: channel diffs 2-0 = 2 and -1-0.5 = -1.5
    numerator = 1.0 * ((-2.0) ** 2 + 0.0**2) + 0.5 * (2.0**2 + (-1.5) ** 2)
    expected = numerator / (2 * (1.0 + 0.5))
    close(losses.feature_mse(student, teacher, mask), expected)
    # CMKD's own formula (Cc-Hy/CMKD cmkd.py: (MSE(none) * M).mean() * M.numel() / M.sum(),
    # M of shape (B, 1, H, W) broadcast over C), in numpy: the code must give the same number.
    s_np, t_np = student.numpy().astype(np.float64), teacher.numpy().astype(np.float64)
    m_np = mask.numpy().astype(np.float64)[:, None]  # (B, 1, H, W)
    cmkd = np.mean((s_np - t_np) ** 2 * m_np) * m_np.size / m_np.sum()
    close(losses.feature_mse(student, teacher, mask), float(cmkd))
    # A (B, 1, H, W) mask is the same mask.
    close(losses.feature_mse(student, teacher, mask.unsqueeze(1)), expected)


def test_feature_mse_all_zero_mask_is_a_zero_that_keeps_the_student_in_the_graph() -> None:
    student = t([[[[1.0, 2.0], [3.0, 4.0]]]]).requires_grad_(True)
    teacher = torch.zeros_like(student)
    loss = losses.feature_mse(student, teacher, torch.zeros(1, 2, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert student.grad is not None and torch.equal(student.grad, torch.zeros_like(student))


def test_feature_mse_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"student \(1, 2, 2, 2\) vs teacher \(1, 3, 2, 2\)"):
        losses.feature_mse(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))


# ------------------------------------------------------------------------------------------
# qfl_heatmap
# ------------------------------------------------------------------------------------------

# B=2, K=1, 2x2. No probability sits on a threshold used below (0.1, 0.4).
QFL_Z = [[[[2.0, -1.0], [0.0, 0.5]]], [[[-3.0, 1.0], [4.0, 0.0]]]]
QFL_P = [[[[0.9, 0.05], [0.3, 0.12]]], [[[0.5, 0.0], [1.0, 0.2]]]]


def _flat(nested: list) -> list[float]:
    return [v for frame in nested for ch in frame for row in ch for v in row]


def _qfl_terms(beta: float, frames: tuple[int, ...] = (0, 1)) -> list[float]:
    """BCEWithLogits(z, p) * |sigmoid(z) - p|^beta per entry, of the listed frames."""
    out = []
    for b in frames:
        for z, p in zip(_flat([QFL_Z[b]]), _flat([QFL_P[b]]), strict=True):
            out.append(bce_with_logits(z, p) * abs(sigmoid(z) - p) ** beta)
    return out


def test_qfl_heatmap_default_beta_2_and_count_normaliser() -> None:
    # p > 0.1: frame 0 has 0.9, 0.3, 0.12; frame 1 has 0.5, 1.0, 0.2 -> 6 entries.
    expected = sum(_qfl_terms(2.0)) / 6
    close(losses.qfl_heatmap(t(QFL_Z), t(QFL_P)), expected)


def test_qfl_heatmap_beta_and_threshold() -> None:
    # p > 0.4: 0.9 (frame 0); 0.5, 1.0 (frame 1) -> 3 entries.
    expected = sum(_qfl_terms(1.0)) / 3
    close(losses.qfl_heatmap(t(QFL_Z), t(QFL_P), beta=1.0, threshold=0.4), expected)
    # Nothing above the threshold: the normaliser is max(1, 0) = 1, a plain sum.
    close(losses.qfl_heatmap(t(QFL_Z), t(QFL_P), threshold=2.0), sum(_qfl_terms(2.0)))


def test_qfl_heatmap_frames_drop_both_the_loss_and_the_count() -> None:
    frames = torch.tensor([True, False])
    expected = sum(_qfl_terms(2.0, frames=(0,))) / 3  # frame 0's three entries above 0.1
    close(losses.qfl_heatmap(t(QFL_Z), t(QFL_P), frames=frames), expected)
    none = losses.qfl_heatmap(t(QFL_Z), t(QFL_P), frames=torch.tensor([False, False]))
    assert none.item() == 0.0


def test_qfl_heatmap_cells_normaliser_divides_by_the_grid_not_the_positives() -> None:
    # SimDistill's: sum over frames and classes of each frame's per-cell mean (H * W = 4),
    # whatever the threshold; the frames kept still choose what is summed.
    close(losses.qfl_heatmap(t(QFL_Z), t(QFL_P), normaliser="cells"), sum(_qfl_terms(2.0)) / 4)
    close(
        losses.qfl_heatmap(t(QFL_Z), t(QFL_P), threshold=0.4, normaliser="cells"),
        sum(_qfl_terms(2.0)) / 4,
    )
    frame0 = losses.qfl_heatmap(
        t(QFL_Z), t(QFL_P), frames=torch.tensor([True, False]), normaliser="cells"
    )
    close(frame0, sum(_qfl_terms(2.0, frames=(0,))) / 4)
    with pytest.raises(ValueError, match="normaliser 'frames'"):
        losses.qfl_heatmap(t(QFL_Z), t(QFL_P), normaliser="frames")


def test_qfl_heatmap_counts_class_entries_not_cells() -> None:
    # One cell, K=2, both classes above 0.1: the normaliser is 2 (entries of p_T, as the
    # docstring's #{p_T > threshold} says), not 1 cell.
    z, p = [[[[0.3]], [[-0.2]]]], [[[[0.6]], [[0.25]]]]
    terms = [bce_with_logits(0.3, 0.6) * (sigmoid(0.3) - 0.6) ** 2]
    terms.append(bce_with_logits(-0.2, 0.25) * (sigmoid(-0.2) - 0.25) ** 2)
    close(losses.qfl_heatmap(t(z), t(p)), sum(terms) / 2)


def test_qfl_heatmap_is_zero_where_the_student_matches_a_hard_teacher() -> None:
    # QFL's modulating factor vanishes where sigmoid(z_S) = p_T, whatever the BCE.
    p = sigmoid(0.7)
    loss = losses.qfl_heatmap(t([[[[0.7]]]]), t([[[[p]]]]))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------
# soft_regression
# ------------------------------------------------------------------------------------------

# B=2, K=2 classes, 2 regression channels, 2x2 cells.
SR_PROB = [
    [[[0.5, 0.02], [0.3, 0.05]], [[0.4, 0.03], [0.0, 0.2]]],  # w = 0.9, 0.05, 0.3, 0.25
    [[[0.6, 0.0], [0.01, 0.0]], [[0.1, 0.5], [0.02, 0.0]]],  # w = 0.7, 0.5, 0.03, 0.0
]
SR_STUDENT = [
    [[[1.0, 9.0], [0.5, -2.0]], [[0.0, 0.0], [3.0, 0.2]]],
    [[[-1.0, 0.0], [7.0, 7.0]], [[0.25, 4.0], [0.0, 0.0]]],
]
SR_TEACHER = [
    [[[0.5, 0.0], [2.5, -2.0]], [[-0.2, 5.0], [0.0, 0.0]]],
    [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]],
]


def _soft_reg_expected(
    threshold: float,
    channel_weights: tuple[float, float],
    frames: tuple[int, ...],
    normaliser: str = "cells",
) -> float:
    """sum w c SmoothL1 over the kept cells, over B * H * W ("cells") or the kept cells."""
    num, kept = 0.0, 0
    for b in frames:
        for i in range(2):
            for j in range(2):
                w = SR_PROB[b][0][i][j] + SR_PROB[b][1][i][j]
                if not w > threshold:
                    continue
                err = sum(
                    channel_weights[c] * smooth_l1(SR_STUDENT[b][c][i][j] - SR_TEACHER[b][c][i][j])
                    for c in range(2)
                )
                num, kept = num + w * err, kept + 1
    return num / (len(frames) * 4 if normaliser == "cells" else max(kept, 1))


def test_soft_regression_by_hand() -> None:
    # Frame 0 cells with w > 0.1: (0,0) w 0.9, diffs 0.5 and 0.2 -> 0.125 + 0.02;
    # (1,0) w 0.3, diffs -2 and 3 -> 1.5 + 2.5; (1,1) w 0.25, diffs 0 and 0.2 -> 0.02.
    # Frame 1: (0,0) w 0.7, diffs -2, 0.25 -> 1.5 + 0.03125; (0,1) w 0.5, diffs 0, 3 -> 2.5.
    numerator = (
        0.9 * (0.125 + 0.02) + 0.3 * (1.5 + 2.5) + 0.25 * 0.02 + 0.7 * (1.5 + 0.03125) + 0.5 * 2.5
    )
    assert numerator == pytest.approx(3.657375)
    s, r, p = t(SR_STUDENT), t(SR_TEACHER), t(SR_PROB)
    # "cells" (CMKD-MV): over every cell of both frames, 2 x 2 x 2 = 8.
    close(losses.soft_regression(s, r, p), numerator / 8)
    # "masked" (CMKD's CenterPoint head): over the 5 cells whose w passes 0.1.
    close(losses.soft_regression(s, r, p, normaliser="masked"), numerator / 5)
    assert _soft_reg_expected(0.1, (1.0, 1.0), (0, 1)) == pytest.approx(numerator / 8)
    assert _soft_reg_expected(0.1, (1.0, 1.0), (0, 1), "masked") == pytest.approx(numerator / 5)


@pytest.mark.parametrize("normaliser", ["cells", "masked"])
def test_soft_regression_threshold_channel_weights_and_frames(normaliser: str) -> None:
    s, r, p = t(SR_STUDENT), t(SR_TEACHER), t(SR_PROB)
    close(
        losses.soft_regression(s, r, p, threshold=0.4, normaliser=normaliser),
        _soft_reg_expected(0.4, (1.0, 1.0), (0, 1), normaliser),
    )
    close(
        losses.soft_regression(s, r, p, channel_weights=[2.0, 0.25], normaliser=normaliser),
        _soft_reg_expected(0.1, (2.0, 0.25), (0, 1), normaliser),
    )
    close(
        losses.soft_regression(s, r, p, frames=torch.tensor([False, True]), normaliser=normaliser),
        _soft_reg_expected(0.1, (1.0, 1.0), (1,), normaliser),
    )
    # No cell passes: a zero, not NaN.
    assert losses.soft_regression(s, r, p, threshold=5.0, normaliser=normaliser).item() == 0.0
    none = torch.tensor([False, False])
    assert losses.soft_regression(s, r, p, frames=none, normaliser=normaliser).item() == 0.0
    with pytest.raises(ValueError, match="3 channel weights for 2 channels"):
        losses.soft_regression(s, r, p, channel_weights=[1.0, 1.0, 1.0], normaliser=normaliser)
    with pytest.raises(ValueError, match="normaliser 'sum'"):
        losses.soft_regression(s, r, p, normaliser="sum")


def test_soft_regression_cells_with_per_head_channel_weights_is_cmkd_mvs_term() -> None:
    # CMKD-MV (bevdet.py CMKD_BEVDet.forward_train), one task: for each CenterPoint head (reg 2,
    # height 1, dim 3, rot 2, vel 2 channels), (SmoothL1(pred, teacher) * weight).mean() over
    # (B, its channels, H, W), summed over the heads. Written in numpy, every cell kept.
    g = torch.Generator().manual_seed(7)
    student, teacher = torch.randn(2, 10, 3, 4, generator=g), torch.randn(2, 10, 3, 4, generator=g)
    prob = torch.rand(2, 4, 3, 4, generator=g) * 0.5
    d = np.abs(student.numpy().astype(np.float64) - teacher.numpy())
    sl1 = np.where(d < 1.0, 0.5 * d**2, d - 0.5)
    weight = prob.numpy().astype(np.float64).sum(axis=1, keepdims=True)  # (B, 1, H, W)
    heads, start, expected = (2, 1, 3, 2, 2), 0, 0.0
    for width in heads:
        expected += float(np.mean(sl1[:, start : start + width] * weight))
        start += width
    per_head = [1.0 / n for n in (2, 2, 1, 3, 3, 3, 2, 2, 2, 2)]
    got = losses.soft_regression(student, teacher, prob, -1.0, per_head, normaliser="cells")
    close(got, expected)
    # The recipe's channel weights are these (times head.code_weights, all 1 here).
    cmkd = CMKD(small_cfg("head.code_weights=[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"))
    assert cmkd.regression_channel_weights == pytest.approx(per_head)


def test_centre_regression_per_box_or_per_frame_and_its_beta() -> None:
    # B=2, 2 channels, 1x2 cells; centres: frame 0 both cells, frame 1 none.
    student = t([[[[0.5, 2.0]], [[0.0, 0.05]]], [[[9.0, 9.0]], [[9.0, 9.0]]]])
    teacher = torch.zeros_like(student)
    centres = torch.tensor([[[True, True]], [[False, False]]])
    # L1: |0.5| + |0| + |2| + |0.05| = 2.55; per box (2 centres) and per frame (2 frames).
    close(losses.centre_regression(student, teacher, centres), 2.55 / 2)
    frames = torch.tensor([True, True])
    close(losses.centre_regression(student, teacher, centres, per_frame=frames), 2.55 / 2)
    close(
        losses.centre_regression(student, teacher, centres, per_frame=torch.tensor([True, False])),
        2.55,
    )
    # SmoothL1 with beta 1/9: 0.5 d^2 / beta inside |d| < beta, |d| - beta / 2 outside.
    b = 1.0 / 9.0
    smooth = (0.5 - b / 2) + 0.0 + (2.0 - b / 2) + 0.5 * 0.05**2 / b
    got = losses.centre_regression(student, teacher, centres, smooth=True, beta=b)
    close(got, smooth / 2)
    close(
        losses.centre_regression(student, teacher, centres, [2.0, 0.5]), (2 * 2.5 + 0.5 * 0.05) / 2
    )


# ------------------------------------------------------------------------------------------
# as_probabilities, downsample_mask
# ------------------------------------------------------------------------------------------


def test_as_probabilities() -> None:
    logits = t([[[[-2.0, 0.0], [1.5, 3.0]]]])
    prob = losses.as_probabilities(logits, "logits")
    expected = [sigmoid(v) for v in (-2.0, 0.0, 1.5, 3.0)]
    assert prob.flatten().tolist() == pytest.approx(expected, rel=1e-6)
    assert losses.as_probabilities(logits, "probabilities") is logits
    with pytest.raises(ValueError, match="unknown heatmap activation 'softmax'"):
        losses.as_probabilities(logits, "softmax")


def test_downsample_mask_max_when_shrinking_nearest_when_growing() -> None:
    fine = t([[[[0, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]]])
    # Each coarse cell takes the max of the 2x2 fine cells it covers.
    assert losses.downsample_mask(fine, (2, 2)).tolist() == [[[[0.5, 0.0], [0.0, 1.0]]]]
    coarse = t([[[[1.0, 0.0], [0.25, 0.0]]]])
    up = [[1, 1, 0, 0], [1, 1, 0, 0], [0.25, 0.25, 0, 0], [0.25, 0.25, 0, 0]]
    assert losses.downsample_mask(coarse, (4, 4)).tolist() == [[up]]
    assert losses.downsample_mask(coarse, (2, 2)) is coarse


# ------------------------------------------------------------------------------------------
# A tiny real camera student and hand-made batches
# ------------------------------------------------------------------------------------------

# 16x16 BEV cells of 0.8 m, one 32x64 camera, depth stride 8 (4x8 depth map), 8 depth bins.
SMALL_STUDENT = [
    "model.kind=camera",
    "student.bev_channels=8",
    "student.bev_layers=[1, 1]",
    "model.image_backbone_channels=[8, 16, 32]",
    "model.camera_bev_channels=8",
    "model.head_channels=8",
    "data.image_size=[32, 64]",
    "data.depth_stride=8",
    "data.cameras=[CAM_FRONT]",
    "grid.point_cloud_range=[-6.4, -6.4, -2.0, 6.4, 6.4, 4.0]",
    "model.depth_bins=[1.0, 9.0, 1.0]",
]
C, H, W, NUM_BINS = 8, 16, 16, 8
BOX = [1.0, -2.0, -0.5, 4.0, 1.8, 1.5, 0.3, 0.5, 0.0]  # x y z l w h yaw vx vy, on the grid


def small_cfg(*overrides: str) -> Config:
    return load_config(None, [*SMALL_STUDENT, *overrides])


def front_camera() -> tuple[torch.Tensor, torch.Tensor]:
    """(cam2img, cam2ego) of a level camera 1.5 m up looking along ego +x."""
    cam2img = torch.eye(4)
    cam2img[0, 0], cam2img[1, 1], cam2img[0, 2], cam2img[1, 2] = 40.0, 40.0, 32.0, 16.0
    cam2ego = torch.eye(4)
    cam2ego[:3, :3] = t([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    cam2ego[2, 3] = 1.5
    return cam2img, cam2ego


def make_batch(
    has_label: list[bool], targets: Targets | None = None, seed: int = 0
) -> StudentBatch:
    """B frames of one camera. Every frame carries a GT box, so only ``has_label`` can keep
    it out of the GT terms."""
    g = torch.Generator().manual_seed(seed)
    b = len(has_label)
    cam2img, cam2ego = front_camera()
    depth = torch.rand(b, 1, 4, 8, generator=g) * 8.0 + 1.0
    depth[:, :, ::2, ::3] = 0.0  # some pixels without a LiDAR return
    return StudentBatch(
        tokens=[f"frame{i}" for i in range(b)],
        indices=torch.arange(b),
        has_label=torch.tensor(has_label),
        images=torch.randn(b, 1, 3, 32, 64, generator=g),
        cam2img=cam2img.expand(b, 1, 4, 4).clone(),
        cam2ego=cam2ego.expand(b, 1, 4, 4).clone(),
        img_aug=torch.eye(4).expand(b, 1, 4, 4).clone(),
        bev_aug=torch.eye(4).expand(b, 4, 4).clone(),
        points=torch.zeros(0, 6),
        depth=depth,
        gt_boxes=[t([BOX]) for _ in range(b)],
        gt_labels=[torch.tensor([0]) for _ in range(b)],
        targets=targets if targets is not None else Targets({}, {}, {}),
    )


def gt_sum(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return terms["gt_heatmap"] + terms["gt_regression"]


def baseline_on(has_label: list[bool]) -> tuple[torch.nn.Module, Any, Any, dict[str, torch.Tensor]]:
    """A seeded tiny student's forward over a batch, and the Baseline recipe's terms."""
    torch.manual_seed(0)
    cfg = small_cfg()
    student = build_camera_student(cfg)
    batch = make_batch(has_label)
    out = student(batch)
    out.head.heatmap.retain_grad()
    out.head.regression.retain_grad()
    return student, batch, out, Baseline(cfg)(out, batch)


def test_gt_terms_give_an_unlabelled_frame_exactly_zero_gradient() -> None:
    _, _, out, terms = baseline_on([True, False])
    assert set(terms) == {"gt_heatmap", "gt_regression", "depth"}
    gt_sum(terms).backward()
    for name, grad in (
        ("heatmap", out.head.heatmap.grad),
        ("regression", out.head.regression.grad),
    ):
        assert grad is not None
        assert torch.count_nonzero(grad[1]) == 0, f"{name}: unlabelled frame got a GT gradient"
        assert torch.count_nonzero(grad[0]) > 0, f"{name}: labelled frame got no GT gradient"


def test_gt_terms_without_labelled_frames_are_zero_and_keep_every_parameter() -> None:
    student, _, _, terms = baseline_on([False, False])
    assert terms["gt_heatmap"].item() == 0.0 and terms["gt_regression"].item() == 0.0
    assert terms["depth"].item() > 0.0  # LiDAR depth is not a label: it stays
    gt_sum(terms).backward()
    missing = [n for n, p in student.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the graph of the GT terms: {missing}"
    assert all(torch.count_nonzero(p.grad) == 0 for p in student.head.parameters())


# ------------------------------------------------------------------------------------------
# CMKD recipe
# ------------------------------------------------------------------------------------------


def cmkd_targets(seed: int = 1, drop: dict[int, str] | None = None) -> Targets:
    """Per-frame store fields of two frames, collated like the loader does; ``drop`` maps a
    frame to a field it lacks (zero-filled, present False)."""
    g = torch.Generator().manual_seed(seed)
    frames = []
    for i in range(2):
        fields = {
            "lidar_bev": torch.randn(C, H, W, generator=g),
            "heatmap": torch.rand(10, H, W, generator=g) * 0.5,
            "box_regression": torch.randn(10, H, W, generator=g),
        }
        if drop and i in drop:
            del fields[drop[i]]
        frames.append(fields)
    return collate_targets(frames)


def fake_output(seed: int = 2) -> StudentOutput:
    """A StudentOutput of leaf tensors (so single frames can be sliced out exactly)."""
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_(True)

    features = {
        "camera_bev": leaf(2, C, H, W),
        "bev": leaf(2, C, H, W),
        "bev_s2": leaf(2, 2 * C, 8, 8),
    }
    head = HeadOutput(leaf(2, 10, H, W), leaf(2, 10, H, W))
    return StudentOutput(features, head, leaf(2, NUM_BINS, 4, 8))


def frame_of(out: StudentOutput, batch: StudentBatch, i: int) -> tuple[StudentOutput, StudentBatch]:
    """Frame ``i`` alone, as a batch of one."""
    sl = slice(i, i + 1)
    one_out = StudentOutput(
        {k: v[sl] for k, v in out.features.items()},
        HeadOutput(out.head.heatmap[sl], out.head.regression[sl]),
        out.depth_logits[sl],
    )
    tg = batch.targets
    one_tg = Targets(
        {k: v[sl] for k, v in tg.fields.items()}, {k: v[sl] for k, v in tg.present.items()}, {}
    )
    one = make_batch([bool(batch.has_label[i])], one_tg)
    one.depth = batch.depth[sl]
    return one_out, one


def test_cmkd_expects_the_real_student_shapes() -> None:
    cfg = small_cfg("student.recipe=cmkd", "distill.bev_scales=[1, 2]")
    recipe = build_recipe(cfg)
    assert isinstance(recipe, CMKD)
    student = build_camera_student(cfg).eval()
    with torch.no_grad():
        out = student(make_batch([True, False]))
    assert recipe.expects == {
        "lidar_bev": tuple(out.features["bev"].shape[1:]),
        "lidar_bev_s2": tuple(out.features["bev_s2"].shape[1:]),
        "heatmap": tuple(out.head.heatmap.shape[1:]),
        "box_regression": tuple(out.head.regression.shape[1:]),
    }


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ((), {"gt_heatmap", "gt_regression", "depth", "kd_bev", "kd_heatmap", "kd_regression"}),
        (("distill.mode=kd",), {"depth", "kd_bev", "kd_heatmap", "kd_regression"}),
        (("distill.response=false",), {"gt_heatmap", "gt_regression", "depth", "kd_bev"}),
        (("distill.mode=kd", "distill.response=false"), {"depth", "kd_bev"}),
        (("distill.bev_scales=[1, 2]",), {"gt_heatmap", "gt_regression", "depth", "kd_bev", "kd_bev_s2", "kd_heatmap", "kd_regression"}),
    ],
)  # fmt: skip
def test_cmkd_term_names(overrides: tuple[str, ...], names: set[str]) -> None:
    recipe = CMKD(small_cfg(*overrides))
    if "distill.response=false" in overrides:
        assert "heatmap" not in recipe.expects and "box_regression" not in recipe.expects
    targets = cmkd_targets()
    if "distill.bev_scales=[1, 2]" in overrides:
        targets.fields["lidar_bev_s2"] = torch.randn(2, 2 * C, 8, 8)
        targets.present["lidar_bev_s2"] = torch.tensor([True, True])
    terms = recipe(fake_output(), make_batch([True, False], targets))
    assert set(terms) == names
    assert all(torch.isfinite(v) and v.ndim == 0 for v in terms.values())


def test_cmkd_weights_scale_their_terms_linearly() -> None:
    out, batch = fake_output(), make_batch([True, False], cmkd_targets())
    unit = CMKD(
        small_cfg("distill.bev_weight=1", "distill.heatmap_weight=1", "distill.regression_weight=1")
    )(out, batch)
    doubled = CMKD(
        small_cfg("distill.bev_weight=2", "distill.heatmap_weight=1", "distill.regression_weight=1")
    )(out, batch)
    assert unit["kd_bev"].item() > 0
    close(doubled["kd_bev"], 2 * unit["kd_bev"].item())
    for name in ("kd_heatmap", "kd_regression", "gt_heatmap", "gt_regression", "depth"):
        assert torch.equal(doubled[name], unit[name]), name
    # The defaults are CMKD-MV's nuScenes weights (METHODS.md): BEV 50, QFL 0.2, box 50.
    default = CMKD(small_cfg())(out, batch)
    for name, weight in (("kd_bev", 50.0), ("kd_heatmap", 0.2), ("kd_regression", 50.0)):
        close(default[name], weight * unit[name].item())


def test_cmkd_absent_lidar_bev_contributes_nothing_to_kd_bev() -> None:
    recipe = CMKD(small_cfg())
    out = fake_output()
    batch = make_batch([True, False], cmkd_targets(drop={1: "lidar_bev"}))
    assert batch.targets.present["lidar_bev"].tolist() == [True, False]
    out.features["bev"].retain_grad()
    terms = recipe(out, batch)
    alone = recipe(*frame_of(out, batch, 0))
    close(terms["kd_bev"], alone["kd_bev"].item())
    # Had frame 1 counted (its student map against the zero fill), the value would differ.
    batch.targets.present["lidar_bev"] = torch.tensor([True, True])
    assert abs(recipe(out, batch)["kd_bev"].item() - terms["kd_bev"].item()) > 1e-3
    batch.targets.present["lidar_bev"] = torch.tensor([True, False])
    terms["kd_bev"].backward()
    grad = out.features["bev"].grad
    assert grad is not None
    assert torch.count_nonzero(grad[1]) == 0 and torch.count_nonzero(grad[0]) > 0


def test_cmkd_absent_heatmap_drops_the_frame_from_both_response_terms() -> None:
    recipe = CMKD(small_cfg())
    out = fake_output()
    batch = make_batch([True, False], cmkd_targets(drop={1: "heatmap"}))
    terms = recipe(out, batch)
    alone = recipe(*frame_of(out, batch, 0))
    close(terms["kd_heatmap"], alone["kd_heatmap"].item())
    close(terms["kd_regression"], alone["kd_regression"].item())


def test_cmkd_reads_a_logit_heatmap_through_its_declared_activation() -> None:
    out, batch = fake_output(), make_batch([True, False], cmkd_targets())
    prob = batch.targets.fields["heatmap"].clamp(1e-3, 1 - 1e-3)
    batch.targets.fields["heatmap"] = prob
    as_prob = CMKD(small_cfg())(out, batch)
    batch.targets.fields["heatmap"] = torch.log(prob / (1 - prob))  # the same map as logits
    spec = SimpleNamespace(kind="heatmap", heatmap_activation="logits")
    as_logits = CMKD(small_cfg()).bind({"heatmap": spec})(out, batch)
    close(as_logits["kd_heatmap"], as_prob["kd_heatmap"].item())
    close(as_logits["kd_regression"], as_prob["kd_regression"].item())


# ------------------------------------------------------------------------------------------
# CMKD's BEV masks: distill.bev_mask teacher and gt, by hand
# ------------------------------------------------------------------------------------------


def mask_case() -> tuple[StudentOutput, StudentBatch]:
    """Frame 0: a few hand-set cells of student BEV, teacher BEV and teacher heatmap; frame 1
    has no cached heatmap (its large zero-fill stand-in must not mask anything in)."""
    out = fake_output()
    with torch.no_grad():
        out.features["bev"].zero_()
        out.features["bev"][0, 0, 2, 3], out.features["bev"][0, 5, 2, 3] = 1.0, -2.0
        out.features["bev"][0, 1, 5, 5] = 10.0
        out.features["bev"][1] = 7.0
    zeros = {
        "lidar_bev": torch.zeros(C, H, W),
        "heatmap": torch.zeros(10, H, W),
        "box_regression": torch.zeros(10, H, W),
    }
    frame0 = {k: v.clone() for k, v in zeros.items()}
    frame0["lidar_bev"][0, 2, 3], frame0["lidar_bev"][2, 7, 1] = 3.0, 0.5
    frame0["heatmap"][3, 2, 3] = 0.4  # above 0.1 in one class
    frame0["heatmap"][0, 5, 5] = 0.05  # the soft floor: below 0.1
    frame0["heatmap"][9, 7, 1] = 0.11  # just above 0.1
    frame1 = {"lidar_bev": torch.zeros(C, H, W), "box_regression": torch.zeros(10, H, W)}
    targets = collate_targets([frame0, frame1])
    assert targets.present["heatmap"].tolist() == [True, False]
    targets.fields["heatmap"][1] = 0.9  # what a frame without the field holds must not count
    return out, make_batch([True, True], targets)


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        # cells (2,3) with (1-3)^2 + (-2-0)^2 = 8 and (7,1) with 0.5^2, over C = 8 channels
        (None, (8.0 + 0.25) / (8 * 2)),  # the default, 0.1
        ("0.3", 8.0 / (8 * 1)),  # only (2,3)'s 0.4 passes
        ("0.01", (8.0 + 0.25 + 100.0) / (8 * 3)),  # (5,5)'s 0.05 too: its error 10^2
    ],
)
def test_cmkd_teacher_bev_mask_by_hand(threshold: str | None, expected: float) -> None:
    sets = ["distill.bev_mask=teacher", "distill.bev_weight=1", "distill.response=false"]
    if threshold is not None:
        sets.append(f"distill.bev_mask_threshold={threshold}")
    recipe = CMKD(small_cfg(*sets))
    assert set(recipe.expects) == {"lidar_bev", "heatmap"}  # the mask needs the heatmap
    out, batch = mask_case()
    terms = recipe(out, batch)
    assert set(terms) == {"gt_heatmap", "gt_regression", "depth", "kd_bev"}
    close(terms["kd_bev"], expected)


def box_gaussian() -> list[list[float]]:
    """BOX's CenterPoint gaussian on the 16x16 grid, by hand: 4.0 x 1.8 m is 5 x 2.25 cells of
    0.8 m; CenterNet's radius at overlap 0.1 is min(5.61, 10.72, 1.41) -> floor 1, raised to
    head.min_radius 2; sigma = (2 * 2 + 1) / 6; the window is |dr|, |dc| <= 2 around (5, 9)."""
    sigma = 5.0 / 6.0
    heat = [[0.0] * W for _ in range(H)]
    for dr in range(-2, 3):
        for dc in range(-2, 3):
            heat[5 + dr][9 + dc] = math.exp(-(dr * dr + dc * dc) / (2 * sigma * sigma))
    return heat


def test_cmkd_gt_bev_mask_by_hand() -> None:
    recipe = CMKD(
        small_cfg("distill.bev_mask=gt", "distill.bev_weight=1", "distill.response=false")
    )
    assert set(recipe.expects) == {"lidar_bev"}  # no heatmap needed
    out = fake_output()
    batch = make_batch([True, False], cmkd_targets())
    # frame 0 holds two boxes on one centre (classes 0 and 1): the summed gaussians reach 2 at
    # the centre, clipped to 1; frame 1 is unlabelled: its GT box masks nothing.
    batch.gt_boxes[0] = t([BOX, BOX])
    batch.gt_labels[0] = torch.tensor([0, 1])
    gauss = box_gaussian()
    mask = [[min(1.0, 2.0 * g) for g in row] for row in gauss]
    s = out.features["bev"].detach().tolist()
    tb = batch.targets.fields["lidar_bev"].tolist()
    num = sum(
        mask[i][j] * sum((s[0][c][i][j] - tb[0][c][i][j]) ** 2 for c in range(C))
        for i in range(H)
        for j in range(W)
    )
    expected = num / (C * sum(map(sum, mask)))
    close(recipe(out, batch)["kd_bev"], expected)
    # With frame 1 labelled, its gaussian (one box, not clipped below 1) adds its cells.
    batch.has_label = torch.tensor([True, True])
    num1 = sum(
        gauss[i][j] * sum((s[1][c][i][j] - tb[1][c][i][j]) ** 2 for c in range(C))
        for i in range(H)
        for j in range(W)
    )
    both = (num + num1) / (C * (sum(map(sum, mask)) + sum(map(sum, gauss))))
    close(recipe(out, batch)["kd_bev"], both)
