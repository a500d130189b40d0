"""The LabelDistill recipe: each term against hand arithmetic, the channel thirds its adaptors
read, unlabelled frames (LiDAR feature KD under the teacher's heatmap, no label or response
KD), gradients, the store fields it reads, a few optimizer steps of a real student, and a real
semi-supervised run on a cached tiny world whose checkpoints load into a plain student.

Expected values are written out with :mod:`math` on a few hand-set cells, never with the torch
functions the recipe calls, so a slip in a formula cannot check itself.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from stage_helpers import cached_world, small_config
from test_distill_losses import BOX, box_gaussian, make_batch, sigmoid, small_cfg, t
from torch import nn

from bevkd.datasets.student_batch import StudentBatch, Targets
from bevkd.distill.labeldistill import LabelDistill, heatmap_target, masked_feature_loss
from bevkd.distill.recipes import build_recipe
from bevkd.models.camera_student import StudentOutput, build_camera_student
from bevkd.models.outputs import HeadOutput

H, W, K = 16, 16, 10  # the grid and classes of test_distill_losses.small_cfg
CS, CT = 6, 2  # student BEV channels (thirds of 2, and of 4 at stride 2) and teacher channels
FIELD_SHAPES = {
    "lidar_bev": (CT, H, W),
    "label_bev": (CT, H, W),
    "lidar_bev_s2": (2 * CT, H // 2, W // 2),
    "label_bev_s2": (2 * CT, H // 2, W // 2),
    "heatmap": (K, H, W),
    "box_regression": (10, H, W),
}
CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)  # head.code_weights default


def ld_cfg(*overrides: str) -> Any:
    """Thirds the size of the teacher's channels at both scales, unit weights."""
    return small_cfg(
        "student.recipe=labeldistill", f"student.bev_channels={CS}", f"model.bev_channels={CT}",
        "distill.bev_scales=[1, 2]", "distill.bev_weight=1", "distill.label_weight=1",
        "distill.heatmap_weight=1", "distill.regression_weight=1", *overrides,
    )  # fmt: skip


def identity_adaptors(recipe: LabelDistill) -> LabelDistill:
    """Adaptors replaced by identities: a third of the student is then compared as it is."""
    for adaptors in (recipe.lidar_adaptors, recipe.label_adaptors):
        for key in list(adaptors):
            adaptors[key] = nn.Identity()
    return recipe


def zero_targets(b: int, absent: dict[int, tuple[str, ...]] | None = None) -> Targets:
    """Zero store fields of ``b`` frames; ``absent`` maps a frame to fields it lacks."""
    fields = {name: torch.zeros(b, *shape) for name, shape in FIELD_SHAPES.items()}
    present = {name: torch.ones(b, dtype=torch.bool) for name in FIELD_SHAPES}
    for frame, names in (absent or {}).items():
        for name in names:
            present[name][frame] = False
    return Targets(fields, present, {})


def random_targets(b: int, seed: int = 1) -> Targets:
    g = torch.Generator().manual_seed(seed)
    tg = zero_targets(b)
    for name, value in tg.fields.items():
        value.copy_(torch.rand(value.shape, generator=g) * (0.8 if name == "heatmap" else 2.0))
    return tg


def zero_output(b: int, c: int = CS) -> StudentOutput:
    """A StudentOutput of zero leaf tensors (filled by hand before requires_grad)."""
    features = {
        "camera_bev": torch.zeros(b, 4, H, W),
        "bev": torch.zeros(b, c, H, W),
        "bev_s2": torch.zeros(b, 2 * c, H // 2, W // 2),
    }
    return StudentOutput(features, HeadOutput(torch.zeros(b, K, H, W), torch.zeros(b, 10, H, W)),
                         torch.zeros(b, 8, 4, 8))  # fmt: skip


def leaves(out: StudentOutput) -> StudentOutput:
    for v in [*out.features.values(), out.head.heatmap, out.head.regression, out.depth_logits]:
        v.requires_grad_(True)
    return out


def random_output(b: int, c: int = CS, seed: int = 2) -> StudentOutput:
    g = torch.Generator().manual_seed(seed)
    out = zero_output(b, c)
    for v in [*out.features.values(), out.head.heatmap, out.head.regression, out.depth_logits]:
        v.copy_(torch.randn(v.shape, generator=g))
    return leaves(out)


def close(value: torch.Tensor, expected: float) -> None:
    assert value.ndim == 0
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


# ------------------------------------------------------------------------------------------
# Construction: registration, the fields and shapes it expects, the thirds it reads
# ------------------------------------------------------------------------------------------


def test_registered_and_expects_the_teachers_shapes() -> None:
    cfg = small_cfg("student.recipe=labeldistill", "distill.bev_scales=[1, 2]",
                    "student.bev_channels=9", "model.bev_channels=12",
                    "model.label_encoder_channels=5")  # fmt: skip
    recipe = build_recipe(cfg)
    assert isinstance(recipe, LabelDistill)
    student = build_camera_student(cfg).eval()
    with torch.no_grad():
        out = student(make_batch([True, False]))
    # The label encoder's heads copy the LiDAR teacher's (model.bev_channels) shapes; its
    # own width (label_encoder_channels) is not what it writes.
    assert recipe.expects == {
        "label_bev": (12, H, W),
        "lidar_bev": (12, H, W),
        "label_bev_s2": (24, H // 2, W // 2),
        "lidar_bev_s2": (24, H // 2, W // 2),
        "heatmap": tuple(out.head.heatmap.shape[1:]),
        "box_regression": tuple(out.head.regression.shape[1:]),
    }
    assert recipe.thirds == {1: 3, 2: 6}
    one = LabelDistill(small_cfg("student.bev_channels=9", "model.bev_channels=12"))
    assert set(one.expects) == {"label_bev", "lidar_bev", "heatmap", "box_regression"}
    assert set(one.lidar_adaptors) == set(one.label_adaptors) == {"1"}


class Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return torch.zeros(x.shape[0], 2 * CT if x.shape[-1] == W // 2 else CT, *x.shape[-2:])


def test_adaptors_read_the_first_and_second_thirds_of_each_scale() -> None:
    # 7 channels: thirds of 2 at stride 1 ([0, 2), [2, 4), free [4, 7)); 14 at stride 2 give
    # thirds of 4 ([0, 4), [4, 8), free [8, 14)). The adaptors output the teacher's channels.
    recipe = LabelDistill(ld_cfg("student.bev_channels=7"))
    recorders = {}
    for kind, adaptors in (("lidar", recipe.lidar_adaptors), ("label", recipe.label_adaptors)):
        for key in list(adaptors):
            recorders[kind, key] = adaptors[key] = Recorder()
    out = random_output(2, c=7)
    recipe(out, make_batch([True, True], random_targets(2)))
    bev, bev_s2 = out.features["bev"].detach(), out.features["bev_s2"].detach()
    assert torch.equal(recorders["label", "1"].seen[0], bev[:, 0:2])
    assert torch.equal(recorders["lidar", "1"].seen[0], bev[:, 2:4])
    assert torch.equal(recorders["label", "2"].seen[0], bev_s2[:, 0:4])
    assert torch.equal(recorders["lidar", "2"].seen[0], bev_s2[:, 4:8])


def test_the_real_adaptor_maps_a_third_to_the_teachers_channels() -> None:
    recipe = LabelDistill(ld_cfg("student.bev_channels=9", "model.bev_channels=5"))
    assert recipe.lidar_adaptors["1"](torch.randn(2, 3, H, W)).shape == (2, 5, H, W)
    assert recipe.label_adaptors["2"](torch.randn(2, 6, 8, 8)).shape == (2, 10, 8, 8)


# ------------------------------------------------------------------------------------------
# The pure loss pieces
# ------------------------------------------------------------------------------------------


def test_masked_feature_loss_sums_channels_and_divides_by_the_mask() -> None:
    student = torch.tensor([[[[1.0, 0.0]], [[2.0, 5.0]]]])  # (1, 2, 1, 2)
    teacher = torch.tensor([[[[3.0, 0.0]], [[0.0, -5.0]]]])
    # cell 0: (3-1)^2 + (0-2)^2 = 8; cell 1: 0 + 10^2 = 100
    mask = torch.tensor([[[[1.5, 0.25]]]])
    close(masked_feature_loss(student, teacher, mask), (1.5 * 8 + 0.25 * 100) / 1.75)
    small = torch.tensor([[[[0.5, 0.0]]]])  # sum 0.5 < 1: the divisor is 1
    close(masked_feature_loss(student, teacher, small), 0.5 * 8)
    with pytest.raises(ValueError, match=r"adapted student \(1, 2, 1, 2\) vs teacher"):
        masked_feature_loss(student, teacher[:, :1], mask)


def test_heatmap_target_is_one_at_gt_centres_and_teacher_times_gt_elsewhere() -> None:
    gt = torch.tensor([[[[1.0, 0.5, 0.0, 1.0]]]])
    prob = torch.tensor([[[[0.6, 0.8, 0.9, 0.0]]]])
    target = heatmap_target(gt, prob)
    assert target.flatten().tolist() == pytest.approx([1.0, 0.4, 0.0, 1.0])
    # The focal positives (target == 1) are the GT centres; the released code's target,
    # teacher x GT (0.6 and 0 there), would have none.
    assert target.eq(1).flatten().tolist() == [True, False, False, True]


# ------------------------------------------------------------------------------------------
# Every term against hand arithmetic
# ------------------------------------------------------------------------------------------


def feature_case() -> tuple[StudentOutput, StudentBatch, torch.Tensor]:
    """Two labelled frames with hand-set cells; returns (output, batch, GT heatmaps)."""
    heat = torch.zeros(2, K, H, W)
    heat[0, 0, 3, 5], heat[0, 1, 3, 5] = 1.0, 0.5  # sum 1.5: the soft mask is not clipped
    heat[0, 0, 3, 4] = 0.25
    heat[1, 0, 8, 8] = 0.5
    out, tg = zero_output(2), zero_targets(2)
    bev, bev_s2 = out.features["bev"], out.features["bev_s2"]
    # stride 1: label third = channels 0-1, LiDAR third = 2-3, free 4-5
    bev[0, 2:4, 3, 5] = torch.tensor([1.0, 2.0])
    bev[0, 0:2, 3, 5] = torch.tensor([0.5, -1.0])
    bev[0, 4:6, 3, 5] = 50.0  # the free third is never compared
    tg.fields["lidar_bev"][0, :, 3, 5] = torch.tensor([3.0, 0.0])
    tg.fields["lidar_bev"][0, 0, 10, 10] = 100.0  # outside every mask
    tg.fields["lidar_bev"][1, :, 8, 8] = torch.tensor([1.0, 1.0])
    tg.fields["label_bev"][0, :, 3, 5] = torch.tensor([0.5, 1.0])
    tg.fields["label_bev"][1, :, 8, 8] = torch.tensor([2.0, 0.0])
    # stride 2: label third = channels 0-3, LiDAR third = 4-7
    bev_s2[0, 4, 1, 2] = 1.0
    tg.fields["lidar_bev_s2"][0, 3, 1, 2] = 2.0
    tg.fields["lidar_bev_s2"][1, :, 4, 4] = 1.0
    tg.fields["label_bev_s2"][0, 0:2, 1, 2] = 1.0
    return leaves(out), make_batch([True, True], tg), heat


def test_feature_terms_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = identity_adaptors(LabelDistill(ld_cfg()))
    out, batch, heat = feature_case()
    monkeypatch.setattr(recipe, "gt_heatmaps", lambda _: heat)
    terms = recipe(out, batch)
    # kd_lidar stride 1, soft mask: (3,5) 1.5 with (3-1)^2 + (0-2)^2 = 8; (3,4) 0.25 with 0;
    # frame 1 (8,8) 0.5 with 1 + 1 = 2. Divisor 1.5 + 0.25 + 0.5 = 2.25.
    lidar_s1 = (1.5 * 8 + 0.25 * 0 + 0.5 * 2) / 2.25
    # stride 2: bilinear at exactly half size averages each 2x2 block: coarse (1,2) covers
    # fine (2..3, 4..5) -> (0.25 + 1.5) / 4; frame 1's (4,4) covers (8..9, 8..9) -> 0.5 / 4.
    # Errors: frame 0 (1,2): 1^2 + 2^2 = 5; frame 1 (4,4): 4 x 1^2 = 4. Divisor max(1, 0.5625).
    lidar_s2 = ((1.75 / 4) * 5 + (0.5 / 4) * 4) / 1.0
    close(terms["kd_lidar"], lidar_s1 + lidar_s2)
    # kd_label: the same cells binarised. Stride 1: (3,5) (0.5-0.5)^2 + (1+1)^2 = 4, (3,4) 0,
    # frame 1 (8,8) 2^2 = 4; divisor 3. Stride 2: frame 0 (1,2) 1 + 1 = 2, frame 1 0; divisor 2.
    close(terms["kd_label"], (4 + 0 + 4) / 3 + 2 / 2)


def test_feature_terms_use_the_unclipped_gt_mask_of_the_real_gt() -> None:
    recipe = identity_adaptors(LabelDistill(ld_cfg()))
    out, batch = random_output(2), make_batch([True, True], random_targets(2))
    # Frame 0: two GT boxes of classes 0 and 1 on one centre; frame 1: one box. The mask is
    # BOX's gaussian written out by hand (test_distill_losses.box_gaussian), summed over the
    # classes and not clipped: 2 x gaussian (2 at the centre) in frame 0, 1 x in frame 1.
    batch.gt_boxes[0], batch.gt_labels[0] = t([BOX, BOX]), torch.tensor([0, 1])
    terms = recipe(out, batch)
    gauss = box_gaussian()
    masks = [[[2.0 * g for g in row] for row in gauss], gauss]

    def masked(student: list, teacher: list, mask: list) -> float:
        """sum_bxy m sum_c (T - S)^2 / max(1, sum m), over lists."""
        num = den = 0.0
        for b in range(2):
            for i, row in enumerate(mask[b]):
                for j, m in enumerate(row):
                    pairs = zip(student[b], teacher[b], strict=True)
                    err = sum((tc[i][j] - sc[i][j]) ** 2 for sc, tc in pairs)
                    num, den = num + m * err, den + m
        return num / max(1.0, den)

    tg = batch.targets.fields
    s1 = masked(out.features["bev"][:, 2:4].tolist(), tg["lidar_bev"].tolist(), masks)
    # stride 2: bilinear at exactly half size (align_corners False) is each 2x2 block's mean
    halves = [
        [[sum(m[2 * i + a][2 * j + c] for a in (0, 1) for c in (0, 1)) / 4 for j in range(W // 2)]
         for i in range(H // 2)]
        for m in masks
    ]  # fmt: skip
    s2 = masked(out.features["bev_s2"][:, 4:8].tolist(), tg["lidar_bev_s2"].tolist(), halves)
    close(terms["kd_lidar"], s1 + s2)


def test_response_terms_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = LabelDistill(ld_cfg())
    heat = torch.zeros(2, K, H, W)
    heat[0, 0, 3, 5], heat[0, 0, 3, 4], heat[1, 2, 8, 8] = 1.0, 0.5, 1.0
    centres = torch.zeros(2, H, W, dtype=torch.bool)
    centres[0, 3, 5] = centres[1, 8, 8] = True
    monkeypatch.setattr(recipe, "gt_heatmaps", lambda _: heat)
    monkeypatch.setattr(recipe, "gt_centres", lambda _: centres)
    out, tg = zero_output(2), zero_targets(2)
    logits = out.head.heatmap
    logits.fill_(-2.0)
    logits[0, 0, 3, 5], logits[1, 2, 8, 8], logits[0, 0, 3, 4] = 1.0, 0.5, 0.3
    tg.fields["heatmap"][0, 0, 3, 4] = 0.8  # target 0.8 x 0.5 = 0.4
    tg.fields["heatmap"][0, 1, 10, 10] = 0.9  # no GT there: target 0
    tg.fields["heatmap"][0, 0, 3, 5] = 0.6  # a GT centre: target 1 whatever the teacher says
    reg, teacher_reg = out.head.regression, tg.fields["box_regression"]
    reg[0, :, 3, 5] = 1.0
    teacher_reg[0, :, 3, 5] = torch.tensor([2.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 6.0, 1.0])
    teacher_reg[1, 0, 8, 8] = -0.5
    teacher_reg[0, :, 0, 0] = 100.0  # not a centre
    terms = recipe(leaves(out), make_batch([True, True], tg))

    def pos(z: float) -> float:
        return -math.log(sigmoid(z)) * (1 - sigmoid(z)) ** 2

    def neg(z: float, target: float) -> float:
        return -math.log(1 - sigmoid(z)) * sigmoid(z) ** 2 * (1 - target) ** 4

    background = 2 * K * H * W - 3
    focal = pos(1.0) + pos(0.5) + neg(0.3, 0.4) + background * neg(-2.0, 0.0)
    close(terms["kd_heatmap"], focal / 2)  # two positives
    # |1-2| + |1-1| + |1-0| + 5 x 0 + 0.2 x |1-6| + 0.2 x 0 at (0,3,5); |0+0.5| at (1,8,8)
    close(terms["kd_regression"], (1 + 0 + 1 + 0.2 * 5 + 0.5) / 2)


def test_weights_scale_their_terms_and_default_to_the_papers() -> None:
    out, batch = random_output(2), make_batch([True, False], random_targets(2))
    torch.manual_seed(0)
    unit = LabelDistill(ld_cfg()).eval()
    names = ("kd_lidar", "kd_label", "kd_heatmap", "kd_regression")
    base = unit(out, batch)
    assert all(base[n].item() > 0 for n in names)
    weights = {"kd_lidar": 2.0, "kd_label": 3.0, "kd_heatmap": 0.5, "kd_regression": 4.0}
    scaled = LabelDistill(
        ld_cfg(
            "distill.bev_weight=2",
            "distill.label_weight=3",
            "distill.heatmap_weight=0.5",
            "distill.regression_weight=4",
        )
    )
    scaled.load_state_dict(unit.state_dict())
    got = scaled.eval()(out, batch)
    for name, weight in weights.items():
        close(got[name], weight * base[name].item())
    for name in ("gt_heatmap", "gt_regression", "depth"):
        assert torch.equal(got[name], base[name]), name
    # No weight set: the recipe's own defaults, the paper's 0.3, 0.3, 1, 0.25 (not CMKD's).
    paper = LabelDistill(
        small_cfg("student.recipe=labeldistill", f"student.bev_channels={CS}",
                  f"model.bev_channels={CT}", "distill.bev_scales=[1, 2]")
    )  # fmt: skip
    paper.load_state_dict(unit.state_dict())
    got = paper.eval()(out, batch)
    for name, weight in zip(names, (0.3, 0.3, 1.0, 0.25), strict=True):
        close(got[name], weight * base[name].item())


def test_mode_kd_drops_only_the_gt_terms() -> None:
    out, batch = random_output(2), make_batch([True, False], random_targets(2))
    assert set(LabelDistill(ld_cfg())(out, batch)) == {
        "gt_heatmap", "gt_regression", "depth", "kd_lidar", "kd_label", "kd_heatmap",
        "kd_regression",
    }  # fmt: skip
    assert set(LabelDistill(ld_cfg("distill.mode=kd"))(out, batch)) == {
        "depth", "kd_lidar", "kd_label", "kd_heatmap", "kd_regression",
    }  # fmt: skip


# ------------------------------------------------------------------------------------------
# Unlabelled frames and absent fields
# ------------------------------------------------------------------------------------------


def test_an_unlabelled_frame_gets_lidar_feature_kd_under_the_teachers_heatmap() -> None:
    recipe = identity_adaptors(LabelDistill(ld_cfg("distill.bev_scales=[1]")))
    out, tg = zero_output(1), zero_targets(1, absent={0: ("label_bev",)})
    out.features["bev"][0, 2:4, 3, 5] = torch.tensor([1.0, 2.0])
    tg.fields["lidar_bev"][0, :, 3, 5] = torch.tensor([3.0, 0.0])  # error 8
    tg.fields["lidar_bev"][0, :, 9, 9] = 10.0  # error 200, under the threshold
    tg.fields["lidar_bev"][0, :, 12, 1] = 1.0  # error 2
    tg.fields["heatmap"][0, 0, 3, 5], tg.fields["heatmap"][0, 4, 3, 5] = 0.6, 0.7  # max 0.7
    tg.fields["heatmap"][0, 2, 9, 9] = 0.2  # cut at distill.unlabelled_mask_threshold, 0.3
    tg.fields["heatmap"][0, 1, 12, 1] = 0.5
    tg.fields["label_bev"][0] = 5.0  # zero-filled in a real batch; never read here anyway
    terms = recipe(leaves(out), make_batch([False], tg))
    close(terms["kd_lidar"], (0.7 * 8 + 0.5 * 2) / 1.2)
    for name in ("kd_label", "kd_heatmap", "kd_regression"):
        assert terms[name].item() == 0.0, name


def test_unlabelled_frames_get_no_label_or_response_kd_and_their_gradients_show_it() -> None:
    recipe = LabelDistill(ld_cfg())
    out = random_output(2)
    tg = random_targets(2)
    tg.present["label_bev"][1] = tg.present["label_bev_s2"][1] = False
    tg.fields["label_bev"][1] = tg.fields["label_bev_s2"][1] = 0.0
    batch = make_batch([True, False], tg)
    terms = recipe(out, batch)
    alone = recipe(*frame_of(out, batch, 0))
    for name in ("kd_label", "kd_heatmap", "kd_regression"):
        close(terms[name], alone[name].item())
    for name in ("kd_label", "kd_heatmap", "kd_regression"):
        for v in [*out.features.values(), out.head.heatmap, out.head.regression]:
            v.grad = None
        terms[name].backward(retain_graph=True)
        for v in [out.features["bev"], out.features["bev_s2"], out.head.heatmap,
                  out.head.regression]:  # fmt: skip
            if v.grad is not None:
                assert torch.count_nonzero(v.grad[1]) == 0, name
    for v in out.features.values():
        v.grad = None
    terms["kd_lidar"].backward()
    for feature, n in (("bev", 2), ("bev_s2", 4)):
        grad = out.features[feature].grad
        assert grad is not None
        assert torch.count_nonzero(grad[1, n : 2 * n]) > 0, feature  # the LiDAR third learns
        assert torch.count_nonzero(grad[:, :n]) == 0 and torch.count_nonzero(grad[:, 2 * n :]) == 0


def frame_of(out: StudentOutput, batch: StudentBatch, i: int) -> tuple[StudentOutput, StudentBatch]:
    sl = slice(i, i + 1)
    one = StudentOutput({k: v[sl] for k, v in out.features.items()},
                        HeadOutput(out.head.heatmap[sl], out.head.regression[sl]),
                        out.depth_logits[sl])  # fmt: skip
    tg = batch.targets
    targets = Targets({k: v[sl] for k, v in tg.fields.items()},
                      {k: v[sl] for k, v in tg.present.items()}, {})  # fmt: skip
    return one, make_batch([bool(batch.has_label[i])], targets)


def test_an_all_unlabelled_batch_keeps_every_adaptor_in_the_graph() -> None:
    recipe = LabelDistill(ld_cfg())
    tg = random_targets(2)
    for name in ("label_bev", "label_bev_s2"):  # no frame has it: collated as zeros, absent
        tg.fields[name].zero_()
        tg.present[name][:] = False
    terms = recipe(random_output(2), make_batch([False, False], tg))
    assert terms["kd_label"].item() == 0.0
    assert terms["kd_lidar"].item() > 0
    sum(terms.values()).backward()
    missing = [n for n, p in recipe.named_parameters() if p.grad is None]
    assert not missing, f"adaptor parameters outside the graph (DDP needs them): {missing}"


def test_absent_lidar_bev_drops_the_frame_from_kd_lidar() -> None:
    recipe = LabelDistill(ld_cfg("distill.bev_scales=[1]"))
    out, tg = random_output(2), random_targets(2)
    tg.present["lidar_bev"][1] = False
    batch = make_batch([True, True], tg)
    close(recipe(out, batch)["kd_lidar"], recipe(*frame_of(out, batch, 0))["kd_lidar"].item())


# ------------------------------------------------------------------------------------------
# Gradients, the fields it reads, training
# ------------------------------------------------------------------------------------------


def test_gradients_reach_the_student_and_the_adaptors_never_the_targets() -> None:
    recipe = LabelDistill(ld_cfg())
    out, tg = random_output(2), random_targets(2)
    terms = recipe(out, make_batch([True, False], tg))
    sum(terms[n] for n in ("kd_lidar", "kd_label", "kd_heatmap", "kd_regression")).backward()
    for name, value in tg.fields.items():
        assert not value.requires_grad and value.grad is None, name
    for v in [out.features["bev"], out.features["bev_s2"], out.head.heatmap, out.head.regression]:
        assert v.grad is not None and torch.count_nonzero(v.grad) > 0
    for name, param in recipe.named_parameters():
        assert param.grad is not None, name
    for adaptors in (recipe.lidar_adaptors, recipe.label_adaptors):
        for key, module in adaptors.items():
            assert any(torch.count_nonzero(p.grad) > 0 for p in module.parameters()), key


class ReadLog(dict):
    """A dict that records the keys read from it."""

    def __init__(self, data: dict, log: set[str]) -> None:
        super().__init__(data)
        self.log = log

    def __getitem__(self, key: str) -> Any:
        self.log.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.log.add(key)
        return super().get(key, default)


@pytest.mark.parametrize("scales", ["[1]", "[1, 2]"])
def test_expects_is_exactly_what_it_reads(scales: str) -> None:
    recipe = LabelDistill(ld_cfg(f"distill.bev_scales={scales}"))
    tg, read = random_targets(2), set()
    targets = Targets(ReadLog(tg.fields, read), ReadLog(tg.present, read), ReadLog({}, read))
    recipe(random_output(2), make_batch([True, False], targets))
    assert read == set(recipe.expects)


def test_a_few_optimizer_steps_lower_the_loss_of_a_real_student() -> None:
    torch.manual_seed(0)
    cfg = ld_cfg("distill.bev_weight=0.3", "distill.label_weight=0.3",
                 "distill.regression_weight=0.25")  # fmt: skip
    student, recipe = build_camera_student(cfg), LabelDistill(cfg)
    batch = make_batch([True, False], random_targets(2))
    params = [*student.parameters(), *recipe.parameters()]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    losses, kd = [], []
    for _ in range(6):
        terms = recipe(student(batch), batch)
        total = sum(terms.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
        kd.append(sum(v.item() for k, v in terms.items() if k.startswith("kd_")))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    assert kd[-1] < kd[0], kd  # the distillation terms themselves, not only GT and depth


# ------------------------------------------------------------------------------------------
# A real run: a cached tiny world, unlabelled frames, checkpoints a plain student loads
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("labeldistill_world")
    root, _, url = cached_world(tiny_nuscenes, base, "cache.splits=[train, val, unlabeled]")
    return {"root": root, "url": str(url)}


def _student(world: dict[str, Any], out: Path, *extra: str) -> Any:
    # The store's teachers have 16 BEV channels (stage_helpers); the student has 12, and the
    # label encoder's width differs from what it writes.
    return small_config(
        world["root"], "model.kind=camera", "student.recipe=labeldistill",
        f"student.store={world['url']}", "student.bev_channels=12", "model.bev_channels=16",
        "model.label_encoder_channels=8", "distill.bev_scales=[1, 2]", "distill.bev_weight=0.3",
        "distill.label_weight=0.3", "distill.heatmap_weight=1", "distill.regression_weight=0.25",
        "train.epochs=1",
        f"train.out_dir={out}", "train.log_every=1", *extra,
    )  # fmt: skip


def test_a_semi_supervised_run_saves_a_plain_student_and_the_adaptors_apart(
    world: dict[str, Any], tmp_path: Path
) -> None:
    import json

    from bevkd.models.camera_student import CameraStudent
    from bevkd.models.checkpoint import load_checkpoint, load_model
    from bevkd.stages import train_student

    out = tmp_path / "run"
    result = train_student.run(_student(world, out, "student.unlabeled=true"))
    assert result.steps == 3  # 3 labelled + 3 unlabelled frames, 2 per step
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "kd_lidar" in r]
    assert len(steps) == 3
    for name in ("kd_lidar", "kd_label", "kd_heatmap", "kd_regression"):
        assert all(math.isfinite(r[name]) for r in steps), name
    for name in ("best.pt", "last.pt"):  # what evaluation and inference load: the student
        model, _, _ = load_model(out / name)
        assert isinstance(model, CameraStudent), name
    last = load_checkpoint(out / "last.pt")
    assert not any("adaptor" in k for k in last["model"])
    assert any(k.startswith("recipe.lidar_adaptors.2.") for k in last["objective"])
    assert any(k.startswith("recipe.label_adaptors.1.") for k in last["objective"])


def test_a_store_of_other_teacher_channels_fails_at_start_up(
    world: dict[str, Any], tmp_path: Path
) -> None:
    from bevkd.stages import train_student
    from bevkd.storage.schema import ContractMismatch

    cfg = _student(world, tmp_path / "other", "model.bev_channels=8")
    with pytest.raises(ContractMismatch) as error:
        train_student.run(cfg)
    message = str(error.value)
    assert "'label_bev'" in message and "'lidar_bev_s2'" in message, message
    assert "(16, 64, 64)" in message and "(8, 64, 64)" in message, message
    assert not (tmp_path / "other").exists()
