"""SimDistill: the simulated multi-modal student (shapes, geometry compensation, init from a
camera student) and the recipe (every term by hand, weights, gradients, the fields it reads,
one training run that lowers the loss).

Expected values are sums written out in Python over ``tolist()`` values, never with the torch
functions the recipe calls, so a slip in a formula cannot check itself.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from test_distill_losses import (
    BOX,
    NUM_BINS,
    C,
    H,
    W,
    bce_with_logits,
    box_gaussian,
    close,
    make_batch,
    sigmoid,
    small_cfg,
    t,
)
from torch import nn

from bevkd.datasets.student_batch import StudentBatch, Targets, collate_targets
from bevkd.distill.recipes import build_recipe
from bevkd.distill.simdistill import SimDistill, masked_mse
from bevkd.models.builders import build_student
from bevkd.models.camera_student import StudentOutput, build_camera_student
from bevkd.models.checkpoint import init_from_checkpoint, save_checkpoint
from bevkd.models.outputs import HeadOutput
from bevkd.models.sim_student import GeometryCompensation, SimStudent
from bevkd.pipeline.config import Config, ConfigError

SIM = ("model.kind=camera_sim", "student.recipe=simdistill")
K = 10  # classes
TEACHER_C = 64  # small_cfg's model.bev_channels: the teacher's lidar/fused BEV channels
UNIT_WEIGHTS = (
    "distill.imd_weight=1",
    "distill.cmd_weight=1",
    "distill.fused_weight=1",
    "distill.heatmap_weight=1",
    "distill.regression_weight=1",
)
KD_TERMS = ("kd_imd", "kd_cmd", "kd_fused", "kd_heatmap", "kd_regression")
# BOX's centre cell on the 16x16 grid of 0.8 m cells from -6.4 m: col floor(7.4 / 0.8) = 9 (x),
# row floor(4.4 / 0.8) = 5 (y).
CENTRE = (5, 9)


def sim_cfg(*overrides: str) -> Config:
    return small_cfg(*SIM, *overrides)


def hand_cfg(*overrides: str) -> Config:
    """Unit weights and a teacher of the student's channels (C): the fused adaptor is the
    identity and the CMD adaptor 8 -> 8, so both can be set by hand."""
    return sim_cfg(f"model.bev_channels={C}", *UNIT_WEIGHTS, *overrides)


def sim_targets(
    teacher_c: int = C, seed: int = 1, drop: dict[int, str] | None = None,
    cmd_field: str = "fusion_lidar_bev", heatmap: str = "probabilities",
) -> Targets:  # fmt: skip
    """The fusion teacher's fields of two frames, collated like the loader does; ``drop`` maps
    a frame to a field it lacks. ``heatmap`` "logits" stores the logit of the same map."""
    g = torch.Generator().manual_seed(seed)
    frames = []
    for i in range(2):
        prob = torch.rand(K, H, W, generator=g) * 0.8 + 0.01
        fields = {
            "camera_bev": torch.randn(C, H, W, generator=g),
            cmd_field: torch.randn(teacher_c, H, W, generator=g),
            "fused_bev": torch.randn(teacher_c, H, W, generator=g),
            "fusion_heatmap": torch.log(prob / (1 - prob)) if heatmap == "logits" else prob,
            "fusion_box_regression": torch.randn(10, H, W, generator=g),
        }
        if drop and i in drop:
            del fields[drop[i]]
        frames.append(fields)
    return collate_targets(frames)


def sim_output(seed: int = 2) -> StudentOutput:
    """A SimStudent-shaped output of leaf tensors."""
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_(True)

    features = {
        name: leaf(2, C, H, W) for name in ("camera_bev", "sim_lidar_bev", "fused_bev", "bev")
    }
    features["bev_s2"] = leaf(2, 2 * C, H // 2, W // 2)
    return StudentOutput(features, HeadOutput(leaf(2, K, H, W), leaf(2, 10, H, W)), leaf(2, NUM_BINS, 4, 8))  # fmt: skip


def two_box_batch(targets: Targets) -> StudentBatch:
    """Frame 0 labelled, with two GT boxes of classes 0 and 1 on the same centre (the summed
    gaussians reach 2 there); frame 1 unlabelled (its GT box must not count)."""
    batch = make_batch([True, False], targets)
    batch.gt_boxes[0] = t([BOX, BOX])
    batch.gt_labels[0] = torch.tensor([0, 1])
    return batch


def set_identity_adaptor(recipe: SimDistill) -> None:
    """CMD adaptor = ReLU(x) / sqrt(1 + eps): centre-tap identity conv3x3, BN in eval mode with
    its initial statistics (mean 0, var 1), identity conv1x1."""
    conv3, bn = recipe.cmd_adaptor[0][0], recipe.cmd_adaptor[0][1]
    conv1 = recipe.cmd_adaptor[1]
    with torch.no_grad():
        conv3.weight.zero_()
        conv3.weight[:, :, 1, 1] = torch.eye(C)
        conv1.weight.copy_(torch.eye(C).view(C, C, 1, 1))
        conv1.bias.zero_()
    recipe.eval()
    assert bn.eps == 1e-5 and bn.running_mean.abs().sum() == 0 and torch.all(bn.running_var == 1)


def rows(x: torch.Tensor) -> Any:
    return x.detach().tolist()


def mse_by_hand(s: torch.Tensor, t_: torch.Tensor, frames: list[bool], mask: Any = None) -> float:
    """``sum_{b in frames} sum_chw (M_bhw (S - T))^2 / (#frames * C * H * W)``; M = 1 if None."""
    s_, tt = rows(s), rows(t_)
    channels, height, width = s.shape[1:]
    num = 0.0
    for b, keep in enumerate(frames):
        if not keep:
            continue
        for c in range(channels):
            for i in range(height):
                for j in range(width):
                    m = 1.0 if mask is None else mask[b][i][j]
                    num += (m * (s_[b][c][i][j] - tt[b][c][i][j])) ** 2
    return num / (sum(frames) * channels * height * width)


# ------------------------------------------------------------------------------------------
# The student
# ------------------------------------------------------------------------------------------


def test_sim_student_feature_shapes_and_decode() -> None:
    torch.manual_seed(0)
    cfg = sim_cfg("student.bev_channels=12")  # C (fused, decoder) apart from Cc (camera)
    student = build_student(cfg)
    assert isinstance(student, SimStudent)
    student.eval()
    with torch.no_grad():
        out = student(make_batch([True, False]), decode=True)
    cc, c = cfg.model.camera_bev_channels, cfg.student.bev_channels
    assert {k: tuple(v.shape) for k, v in out.features.items()} == {
        "camera_bev": (2, cc, H, W),
        "sim_lidar_bev": (2, cc, H, W),
        "fused_bev": (2, c, H, W),
        "bev": (2, c, H, W),
        "bev_s2": (2, 2 * c, H // 2, W // 2),
    }
    assert out.head.heatmap.shape == (2, K, H, W) and out.head.regression.shape == (2, 10, H, W)
    assert out.depth_logits.shape == (2, NUM_BINS, 4, 8)  # the camera branch's depth
    assert len(out.detections) == 2
    for det in out.detections:
        n = det.scores.shape[0]
        assert det.boxes.shape == (n, 9) and det.labels.shape == (n,)
        assert torch.isfinite(det.boxes).all()


class SampledHalf(nn.Module):
    """In place of GeometryCompensation.mix: returns the sampled map alone."""

    def forward(self, both: torch.Tensor) -> torch.Tensor:
        return both[:, both.shape[1] // 2 :]


def sampler(channels: int, max_cells: float = 2.0) -> GeometryCompensation:
    block = GeometryCompensation(channels, max_cells)
    block.mix = SampledHalf()
    return block


# A hand-made 2-channel 4x5 map (H != W, so an x/y swap cannot pass): value = 100c + 10r + col.
MAP = t(
    [[[[100.0 * ch + 10.0 * r + col for col in range(5)] for r in range(4)] for ch in range(2)]]
)


def test_geometry_compensation_starts_as_the_identity_sampling() -> None:
    block = sampler(2)
    assert (
        torch.count_nonzero(block.offset.weight) == 0
        and torch.count_nonzero(block.offset.bias) == 0
    )
    assert torch.equal(block(MAP), MAP)


def test_geometry_compensation_identity_survives_half_precision() -> None:
    # Regression: the sampling grid was built in the map's dtype; in fp16 the normalised
    # coordinates are off by a fraction of a cell (by several cells in bf16) and blurred the map.
    torch.manual_seed(0)
    bev = torch.randn(1, 2, 128, 180)
    block = sampler(2).half()
    assert (block(bev.half()).float() - bev.half().float()).abs().max() < 1e-3
    block = sampler(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(bev.bfloat16())
    assert (out.float() - bev.bfloat16().float()).abs().max() < 1e-3


@pytest.mark.parametrize("axis", ["x", "y"])
def test_geometry_compensation_one_cell_offset_shifts_the_sampling(axis: str) -> None:
    # tanh(b) * max_cells = 1 cell: each cell samples the one a cell along +x (+column) or +y
    # (+row); past the edge grid_sample's zero padding.
    block = sampler(2, max_cells=2.0)
    with torch.no_grad():
        block.offset.bias[0 if axis == "x" else 1] = math.atanh(0.5)
    out = rows(block(MAP))
    for ch in range(2):
        for r in range(4):
            for col in range(5):
                src = (r, col + 1) if axis == "x" else (r + 1, col)
                inside = src[0] < 4 and src[1] < 5
                expected = 100.0 * ch + 10.0 * src[0] + src[1] if inside else 0.0
                assert out[0][ch][r][col] == pytest.approx(expected, abs=1e-4), (ch, r, col)


# ------------------------------------------------------------------------------------------
# The recipe's contract
# ------------------------------------------------------------------------------------------


def test_recipe_refuses_the_plain_camera_student() -> None:
    with pytest.raises(ConfigError, match=r"model\.kind: camera_sim"):
        build_recipe(small_cfg("student.recipe=simdistill"))


@pytest.mark.parametrize("cmd_field", ["fusion_lidar_bev", "lidar_bev"])
def test_expects_names_the_five_fields_with_their_shapes(cmd_field: str) -> None:
    cfg = sim_cfg(f"distill.cmd_field={cmd_field}")
    recipe = build_recipe(cfg)
    assert isinstance(recipe, SimDistill)
    student = build_student(cfg).eval()
    with torch.no_grad():
        out = student(make_batch([True, False]))
    assert recipe.expects == {
        "camera_bev": tuple(out.features["camera_bev"].shape[1:]),
        cmd_field: (TEACHER_C, H, W),
        "fused_bev": (TEACHER_C, H, W),
        "fusion_heatmap": tuple(out.head.heatmap.shape[1:]),
        "fusion_box_regression": tuple(out.head.regression.shape[1:]),
    }
    # The adaptors map the student's channels to the teacher's.
    assert recipe.cmd_adaptor(out.features["sim_lidar_bev"]).shape == (2, TEACHER_C, H, W)
    assert recipe.fused_adaptor(out.features["fused_bev"]).shape == (2, TEACHER_C, H, W)


def test_default_weights_are_the_papers() -> None:
    # No weight set: the recipe weighs each unit-weight term by the paper's 1 / 100 / 1 and
    # MMD-P's 0.25 / 0.25 (its own defaults; a DistillConfig default of CMKD's would not do).
    out, batch = sim_output(), two_box_batch(sim_targets())
    unit = SimDistill(hand_cfg())
    set_identity_adaptor(unit)
    paper = build_recipe(sim_cfg(f"model.bev_channels={C}"))
    assert isinstance(paper, SimDistill)
    set_identity_adaptor(paper)
    base, got = unit(out, batch), paper(out, batch)
    papers = {"kd_imd": 1.0, "kd_cmd": 100.0, "kd_fused": 1.0, "kd_heatmap": 0.25,
              "kd_regression": 0.25}  # fmt: skip
    for name, weight in papers.items():
        assert base[name].item() > 0, name
        close(got[name], weight * base[name].item())


# ------------------------------------------------------------------------------------------
# Every term by hand
# ------------------------------------------------------------------------------------------


def test_masked_mse_by_hand() -> None:
    # B=2, C=2, 2x2; frame 1 is left out whatever its values.
    s = t([[[[1.0, 2.0], [0.0, -1.0]], [[3.0, 0.0], [1.0, 1.0]]], [[[9.0] * 2] * 2] * 2])
    tt = t([[[[0.0, 2.0], [1.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]], [[[0.0] * 2] * 2] * 2])
    m = t([[[[2.0, 0.5], [1.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    # frame 0: channel 0 (M d)^2 = (2*1)^2, 0, (1*-1)^2, 0; channel 1: (2*2)^2, 0, 0, 0
    expected = (4.0 + 1.0 + 16.0) / (1 * 2 * 2 * 2)
    close(masked_mse(s, tt, m, torch.tensor([True, False])), expected)
    close(masked_mse(s, tt, m, torch.tensor([False, False])), 0.0)


def test_masked_mse_counts_in_fp32_under_amp() -> None:
    # Regression: the count #frames * C * H * W (2 * 64 * 64 * 64 here) was taken in the
    # student's dtype; in fp16 it overflowed to inf and the term silently became 0.
    torch.manual_seed(0)
    s = torch.randn(2, 64, 64, 64)
    loss = masked_mse(s.half(), torch.zeros_like(s), torch.ones(2, 1, 64, 64), torch.tensor([True, True]))  # fmt: skip
    close(loss, (s.half().float() ** 2).mean().item())


def hand_terms() -> tuple[SimDistill, StudentOutput, StudentBatch, dict[str, torch.Tensor]]:
    recipe = SimDistill(hand_cfg())
    set_identity_adaptor(recipe)
    out, batch = sim_output(), two_box_batch(sim_targets())
    return recipe, out, batch, recipe(out, batch)


def test_term_names_and_gt_mode() -> None:
    _, out, batch, terms = hand_terms()
    assert set(terms) == {"gt_heatmap", "gt_regression", "depth", *KD_TERMS}
    kd = SimDistill(hand_cfg("distill.mode=kd"))(out, batch)
    assert set(kd) == {"depth", *KD_TERMS}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in terms.values())


def test_kd_imd_and_kd_fused_are_full_map_mse() -> None:
    _, out, batch, terms = hand_terms()
    tg = batch.targets
    close(terms["kd_imd"], mse_by_hand(out.features["camera_bev"], tg.field("camera_bev"), [True, True]))  # fmt: skip
    close(terms["kd_fused"], mse_by_hand(out.features["fused_bev"], tg.field("fused_bev"), [True, True]))  # fmt: skip


def test_kd_imd_and_kd_fused_skip_a_frame_without_the_field() -> None:
    recipe = SimDistill(hand_cfg())
    out = sim_output()
    for term, feature, field in (("kd_imd", "camera_bev", "camera_bev"), ("kd_fused", "fused_bev", "fused_bev")):  # fmt: skip
        batch = two_box_batch(sim_targets(drop={1: field}))
        expected = mse_by_hand(out.features[feature], batch.targets.field(field), [True, False])
        close(recipe(out, batch)[term], expected)


def cmd_mask_by_hand(batch: StudentBatch, threshold: float = 0.1) -> list:
    """Frame 0 (labelled): the two GT boxes' gaussians summed, written out by hand (BOX's,
    test_distill_losses.box_gaussian, twice: 2 at the centre, not clipped); frame 1
    (unlabelled): the teacher heatmap's max over classes where it exceeds ``threshold``."""
    gauss = box_gaussian()
    prob = rows(batch.targets.field("fusion_heatmap"))
    labelled = [[2.0 * gauss[i][j] for j in range(W)] for i in range(H)]
    peak = [[max(prob[1][k][i][j] for k in range(K)) for j in range(W)] for i in range(H)]
    teacher = [[v if v > threshold else 0.0 for v in row] for row in peak]
    assert labelled[CENTRE[0]][CENTRE[1]] == pytest.approx(2.0)  # two peaks of 1: not clipped
    assert any(0.0 < v <= threshold for row in peak for v in row)  # the cut is exercised
    return [labelled, teacher]


def with_floor(batch: StudentBatch) -> StudentBatch:
    """Frame 1's teacher heatmap brought down to a soft background (0.001-0.081) on its first
    8 rows, like a real teacher's empty cells."""
    batch.targets.fields["fusion_heatmap"][1, :, :8] *= 0.1
    return batch


def test_kd_cmd_masks_labelled_frames_by_gt_and_unlabelled_by_the_teacher() -> None:
    recipe = SimDistill(hand_cfg())
    set_identity_adaptor(recipe)
    out, batch = sim_output(), with_floor(two_box_batch(sim_targets()))
    adapted = [
        [[[max(v, 0.0) / math.sqrt(1 + 1e-5) for v in row] for row in ch] for ch in frame]
        for frame in rows(out.features["sim_lidar_bev"])
    ]
    mask = cmd_mask_by_hand(batch)
    expected = mse_by_hand(t(adapted), batch.targets.field("fusion_lidar_bev"), [True, True], mask)  # fmt: skip
    close(recipe(out, batch)["kd_cmd"], expected)
    # A frame without the CMD field is left out of the mean.
    lacking = two_box_batch(sim_targets(drop={1: "fusion_lidar_bev"}))
    only0 = mse_by_hand(t(adapted), lacking.targets.field("fusion_lidar_bev"), [True, False], mask)
    close(recipe(out, lacking)["kd_cmd"], only0)
    # The cut on unlabelled frames follows distill.cmd_mask_threshold.
    strict = SimDistill(hand_cfg("distill.cmd_mask_threshold=0.5"))
    set_identity_adaptor(strict)
    mask = cmd_mask_by_hand(batch, 0.5)
    expected = mse_by_hand(t(adapted), batch.targets.field("fusion_lidar_bev"), [True, True], mask)  # fmt: skip
    close(strict(out, batch)["kd_cmd"], expected)


def test_kd_cmd_reads_distill_cmd_field() -> None:
    recipe = SimDistill(hand_cfg("distill.cmd_field=lidar_bev"))
    set_identity_adaptor(recipe)
    out = sim_output()
    batch = with_floor(two_box_batch(sim_targets(cmd_field="lidar_bev")))
    adapted = torch.relu(out.features["sim_lidar_bev"]) / math.sqrt(1 + 1e-5)
    mask = cmd_mask_by_hand(batch)
    expected = mse_by_hand(adapted, batch.targets.field("lidar_bev"), [True, True], mask)
    close(recipe(out, batch)["kd_cmd"], expected)


def qfl_by_hand(z: torch.Tensor, p: torch.Tensor) -> float:
    """sum BCE(z, p) |sigmoid(z) - p|^2 / (H * W), summed over the frames given: each frame's
    mean per cell, as the released code's double sigmoid ends up normalising."""
    num = 0.0
    for zb, pb in zip(rows(z), rows(p), strict=True):
        for zk, pk in zip(zb, pb, strict=True):
            for zr, pr in zip(zk, pk, strict=True):
                for zv, pv in zip(zr, pr, strict=True):
                    num += bce_with_logits(zv, pv) * (sigmoid(zv) - pv) ** 2
    return num / (H * W)


def smooth_l1_ninth(d: float) -> float:
    """SmoothL1 with SimDistill's beta 1/9: 4.5 d^2 inside |d| < 1/9, |d| - 1/18 outside."""
    return 4.5 * d * d if abs(d) < 1.0 / 9.0 else abs(d) - 1.0 / 18.0


def test_kd_heatmap_is_qfl_against_the_teacher_probabilities() -> None:
    _, out, batch, terms = hand_terms()
    expected = qfl_by_hand(out.head.heatmap, batch.targets.field("fusion_heatmap"))
    close(terms["kd_heatmap"], expected)


def test_kd_heatmap_applies_the_sigmoid_exactly_once() -> None:
    out = sim_output()
    as_prob = SimDistill(hand_cfg())(out, two_box_batch(sim_targets()))
    logit_batch = two_box_batch(sim_targets(heatmap="logits"))
    spec = SimpleNamespace(kind="heatmap", heatmap_activation="logits")
    as_logits = SimDistill(hand_cfg()).bind({"fusion_heatmap": spec})(out, logit_batch)
    close(as_logits["kd_heatmap"], as_prob["kd_heatmap"].item())
    # Same by hand from the stored logits: one sigmoid.
    p = t([[[[sigmoid(v) for v in r] for r in k] for k in f] for f in rows(logit_batch.targets.field("fusion_heatmap"))])  # fmt: skip
    close(as_logits["kd_heatmap"], qfl_by_hand(out.head.heatmap, p))
    # Twice would not be the same term.
    assert abs(qfl_by_hand(out.head.heatmap, torch.sigmoid(p)) - as_prob["kd_heatmap"].item()) > 1e-3  # fmt: skip


def test_kd_regression_is_smooth_l1_at_gt_centres_of_labelled_frames() -> None:
    recipe, out, batch, terms = hand_terms()
    centres = recipe.gt_centres(batch)
    assert centres.nonzero().tolist() == [[0, *CENTRE]]  # frame 1's GT box is unlabelled
    s = rows(out.head.regression)[0]
    r = rows(batch.targets.field("fusion_box_regression"))[0]
    cw = recipe.code_weights
    i, j = CENTRE
    # summed per frame over the frames that can hold a centre (labelled, response cached): 1
    expected = sum(cw[c] * smooth_l1_ninth(s[c][i][j] - r[c][i][j]) for c in range(10)) / 1
    close(terms["kd_regression"], expected)
    # Frame 1 labelled (its GT box has the same centre): both centres, over 2 frames.
    both = make_batch([True, True], batch.targets)
    both.gt_boxes[0], both.gt_labels[0] = batch.gt_boxes[0], batch.gt_labels[0]
    r1 = rows(batch.targets.field("fusion_box_regression"))[1]
    s1 = rows(out.head.regression)[1]
    frame1 = sum(cw[c] * smooth_l1_ninth(s1[c][i][j] - r1[c][i][j]) for c in range(10))
    close(recipe(out, both)["kd_regression"], (expected + frame1) / 2)
    # Two boxes two cells apart in frame 0 alone: a sum over its two centres, over 1 frame
    # (a mean per box would halve it).
    apart = make_batch([True, False], batch.targets)
    apart.gt_boxes[0] = t([BOX, [BOX[0] + 1.6, *BOX[1:]]])
    apart.gt_labels[0] = torch.tensor([0, 0])
    second = sum(cw[c] * smooth_l1_ninth(s[c][i][j + 2] - r[c][i][j + 2]) for c in range(10))
    close(recipe(out, apart)["kd_regression"], expected + second)
    out.head.regression.retain_grad()
    terms["kd_regression"].backward()
    grad = out.head.regression.grad
    assert grad is not None
    assert torch.count_nonzero(grad[1]) == 0 and torch.count_nonzero(grad[0]) > 0


@pytest.mark.parametrize("field", ["fusion_heatmap", "fusion_box_regression"])
def test_a_frame_without_the_teachers_response_drops_out_of_both_response_terms(field: str) -> None:
    # The labelled frame 0 lacks one response field: no QFL there and no box term at its centre
    # (its zero fill is not the teacher's answer).
    recipe = SimDistill(hand_cfg())
    out = sim_output()
    batch = two_box_batch(sim_targets(drop={0: field}))
    terms = recipe(out, batch)
    close(terms["kd_regression"], 0.0)
    one = slice(1, 2)
    prob = batch.targets.field("fusion_heatmap")[one]
    close(terms["kd_heatmap"], qfl_by_hand(out.head.heatmap[one], prob))


def test_weights_scale_their_terms_linearly() -> None:
    _, out, batch, unit = hand_terms()
    weights = {"imd": 2.0, "cmd": 3.0, "fused": 4.0, "heatmap": 5.0, "regression": 6.0}
    scaled_recipe = SimDistill(hand_cfg(*(f"distill.{k}_weight={v}" for k, v in weights.items())))
    set_identity_adaptor(scaled_recipe)
    scaled = scaled_recipe(out, batch)
    for key, weight in weights.items():
        name = f"kd_{key}"
        assert unit[name].item() > 0, name
        close(scaled[name], weight * unit[name].item())
    for name in ("gt_heatmap", "gt_regression", "depth"):
        assert torch.equal(scaled[name], unit[name]), name


# ------------------------------------------------------------------------------------------
# Gradients, reads, training
# ------------------------------------------------------------------------------------------


def real_run(cfg: Config) -> tuple[SimStudent, SimDistill, StudentBatch]:
    torch.manual_seed(0)
    student = build_student(cfg)
    recipe = build_recipe(cfg)
    assert isinstance(student, SimStudent) and isinstance(recipe, SimDistill)
    return student, recipe, two_box_batch(sim_targets(teacher_c=TEACHER_C))


def test_gradients_reach_every_student_and_adaptor_parameter_never_the_targets() -> None:
    # A box weight other than the GT head's 0.25: at one centre both L1-like gradients are
    # +-0.25, and where teacher and GT lie either side of the student they cancel exactly.
    student, recipe, batch = real_run(sim_cfg("distill.regression_weight=0.3"))
    assert isinstance(recipe.fused_adaptor, nn.Conv2d)  # 8 student -> 64 teacher channels
    terms = recipe(student(batch), batch)
    sum(terms.values()).backward()
    for owner, module in (("student", student), ("recipe", recipe)):
        dead = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.any()]
        assert not dead, f"{owner} parameters without a gradient: {dead}"
    for name in ("sim_depth_net", "sim_refine", "compensation"):
        assert any(n.startswith(name) for n, _ in student.named_parameters()), name
    for name, field in batch.targets.fields.items():
        assert not field.requires_grad and field.grad is None, name


class RecordingTargets(Targets):
    """Targets that record every field name read (``field``, ``fields[...]``, ``present[...]``,
    ``boxes[...]``)."""

    def __init__(self, inner: Targets) -> None:
        self.read: set[str] = set()
        read = self.read

        class Recording(dict):
            def __getitem__(self, key: str) -> Any:
                read.add(key)
                return super().__getitem__(key)

            def get(self, key: str, default: Any = None) -> Any:
                read.add(key)
                return super().get(key, default)

        super().__init__(Recording(inner.fields), Recording(inner.present), Recording(inner.boxes))

    def field(self, name: str) -> torch.Tensor:
        self.read.add(name)
        return super().field(name)


@pytest.mark.parametrize("cmd_field", ["fusion_lidar_bev", "lidar_bev"])
def test_the_fields_read_are_exactly_expects(cmd_field: str) -> None:
    recipe = SimDistill(hand_cfg(f"distill.cmd_field={cmd_field}"))
    targets = RecordingTargets(sim_targets(cmd_field=cmd_field))
    recipe(sim_output(), two_box_batch(targets))
    assert targets.read == set(recipe.expects)


def test_a_few_adam_steps_lower_the_total_loss() -> None:
    student, recipe, batch = real_run(sim_cfg())
    params = [*student.parameters(), *recipe.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)

    def total() -> torch.Tensor:
        return sum(recipe(student(batch), batch).values())  # type: ignore[return-value]

    first = total()
    for _ in range(6):
        optimizer.zero_grad()
        loss = total()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        last = total()
    assert torch.isfinite(last) and last.item() < 0.8 * first.item(), (first.item(), last.item())


# ------------------------------------------------------------------------------------------
# init_from
# ------------------------------------------------------------------------------------------


def test_a_camera_student_checkpoint_initialises_the_camera_branch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    camera_cfg = small_cfg()
    source = build_camera_student(camera_cfg)
    path = save_checkpoint(tmp_path / "camera.pt", source, camera_cfg)
    torch.manual_seed(2)
    target = build_student(sim_cfg())
    before = {k: v.clone() for k, v in target.state_dict().items()}
    copied, skipped = init_from_checkpoint(target, "camera_sim", path)
    camera_keys = [k for k in source.state_dict() if k.startswith("camera.")]
    assert copied == len(camera_keys) > 0
    assert skipped == len(source.state_dict()) - len(camera_keys)
    after, src = target.state_dict(), source.state_dict()
    for key in camera_keys:
        assert torch.equal(after[key], src[key]), key
    # Everything else, the simulated-LiDAR branch included, keeps its own initialisation.
    for key, value in after.items():
        if not key.startswith("camera."):
            assert torch.equal(value, before[key]), key
    # A camera_sim checkpoint initialises a camera_sim student whole.
    path = save_checkpoint(tmp_path / "sim.pt", target, sim_cfg())
    fresh = build_student(sim_cfg())
    copied, skipped = init_from_checkpoint(fresh, "camera_sim", path)
    assert (copied, skipped) == (len(after), 0)
