"""The pseudo_label recipe (distill/pseudo_label.py), ``a+b`` recipes (distill/recipes.py
``Combined``) and the label budget (datasets/budget.py).

Pseudo targets of a real cached frame are checked against its raw store boxes moved by hand
with the frame's own flip and rotation; the threshold is applied by hand; the soft loss is
written out with :mod:`math` on a tiny grid (never with the torch functions under test);
gradients, ``cmkd+pseudo_label``, the label budget, no GT-derived field on a frame whose
labels were hidden, and a real ``train-student`` run that records the frames it kept.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stage_helpers import cached_world, small_config
from test_distill_losses import C, H, W, close, cmkd_targets, fake_output, make_batch, small_cfg

from bevkd.datasets import budget
from bevkd.datasets.cached import CachedTargets
from bevkd.datasets.dataset import FrameDataset, load_frames
from bevkd.datasets.student_batch import StudentBatch, Targets, collate_student
from bevkd.distill.cmkd import CMKD
from bevkd.distill.pseudo_label import PseudoLabel, select_pseudo_boxes, soft_detection_loss
from bevkd.distill.recipes import Combined, build_recipe
from bevkd.models.camera_student import StudentOutput, build_camera_student
from bevkd.models.outputs import HeadOutput
from bevkd.models.targets import build_targets, detection_loss
from bevkd.pipeline.config import ConfigError
from bevkd.pipeline.distributed import DistInfo
from bevkd.pipeline.geometry import transform_boxes
from bevkd.stages import train_student
from bevkd.storage.reader import open_store

K = 10  # the default nuScenes classes; car 0, truck 1


def row(x: float, y: float, score: float, label: int, yaw: float = 0.3, l_: float = 0.8,
        w: float = 0.6, vx: float = 0.5, vy: float = -0.25) -> list[float]:  # fmt: skip
    """A store box row (x, y, z, l, w, h, yaw, vx, vy, score, label); boxes of about one cell
    on the 0.8 m grid of ``small_cfg``, so CenterPoint's gaussian radius is head.min_radius."""
    return [x, y, -0.5, l_, w, 1.5, yaw, vx, vy, score, float(label)]


def rows(*boxes: list[float]) -> torch.Tensor:
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 11)


def box_batch(has_label: list[bool], frames: list[torch.Tensor], **fields: Any) -> StudentBatch:
    """A ``make_batch`` of len(has_label) frames whose store ``boxes`` are ``frames``."""
    return make_batch(has_label, Targets(fields, {}, {"boxes": frames}))


def hand_targets(frames: list[torch.Tensor], threshold: float = 0.3) -> tuple[list, list]:
    """Boxes (N, 9) and labels of the rows scoring at least ``threshold``, filtered in Python."""
    boxes, labels = [], []
    for frame in frames:
        kept = [r for r in frame.tolist() if r[9] >= np.float32(threshold)]
        boxes.append(torch.tensor([r[:9] for r in kept], dtype=torch.float32).reshape(-1, 9))
        labels.append(torch.tensor([int(r[10]) for r in kept], dtype=torch.long))
    return boxes, labels


def head_of(out: StudentOutput, frames: list[int]) -> HeadOutput:
    sel = torch.tensor(frames)
    return HeadOutput(out.head.heatmap[sel], out.head.regression[sel])


# ------------------------------------------------------------------------------------------
# Thresholds: boxes below them add nothing
# ------------------------------------------------------------------------------------------


def test_select_keeps_rows_at_or_above_their_class_threshold() -> None:
    thresholds = torch.full((K,), 0.3)
    thresholds[1] = 0.6  # truck
    frame = rows(
        row(1.0, 1.0, 0.5, 0),  # car above 0.3: kept
        row(2.0, 1.0, 0.3, 0),  # car at 0.3: kept (at or above)
        row(3.0, 1.0, 0.29, 0),  # car below: dropped
        row(1.0, 2.0, 0.5, 1),  # truck 0.5 under its 0.6: dropped
        row(2.0, 2.0, 0.7, 1),  # truck above 0.6: kept
        row(3.0, 2.0, 0.9, -1),  # no class: dropped
        row(4.0, 2.0, 0.9, K),  # no class either
    )
    boxes, labels, scores = select_pseudo_boxes(frame, thresholds)
    assert torch.equal(boxes, frame[[0, 1, 4], :9])
    assert labels.tolist() == [0, 0, 1] and labels.dtype == torch.long
    assert scores.tolist() == pytest.approx([0.5, 0.3, 0.7])


def test_per_class_thresholds_come_from_the_config_and_unknown_classes_are_refused() -> None:
    recipe = build_recipe(
        small_cfg(
            "student.recipe=pseudo_label", "distill.pseudo_threshold=0.4",
            "distill.pseudo_class_thresholds=[[truck, 0.6], [pedestrian, 0.2]]",
        )
    )  # fmt: skip
    assert isinstance(recipe, PseudoLabel) and recipe.expects == {"boxes": None}
    expected = [0.4] * K
    expected[1], expected[8] = 0.6, 0.2  # truck, pedestrian
    assert recipe.thresholds.tolist() == pytest.approx(expected)
    with pytest.raises(ConfigError, match=r"pseudo_class_thresholds.*\['lorry'\]"):
        build_recipe(
            small_cfg(
                "student.recipe=pseudo_label", "distill.pseudo_class_thresholds=[[lorry, 0.5]]"
            )
        )
    with pytest.raises(ConfigError, match="pseudo_boxes"):
        small_cfg("distill.pseudo_boxes=label_bev")


@pytest.mark.parametrize("soft", [False, True])
def test_boxes_below_their_threshold_add_nothing(soft: bool) -> None:
    cfg = small_cfg(
        "student.recipe=pseudo_label", f"distill.pseudo_soft={str(soft).lower()}",
        "distill.pseudo_class_thresholds=[[car, 0.6]]",
    )  # fmt: skip
    recipe, out = build_recipe(cfg), fake_output()
    kept = [rows(row(1.0, -2.0, 0.9, 0)), rows(row(-3.0, 3.0, 0.5, 1))]
    below = [
        rows(row(1.0, -2.0, 0.9, 0), row(-3.0, 3.0, 0.5, 0), row(4.0, 4.0, 0.59, 0)),  # cars < 0.6
        rows(row(-3.0, 3.0, 0.5, 1), row(1.0, 1.0, 0.29, 1), row(2.0, -4.0, 0.1, 3)),  # < 0.3
    ]
    plain = recipe.kd_terms(out, box_batch([False, False], kept))
    padded = recipe.kd_terms(out, box_batch([False, False], below))
    assert set(plain) == {"pseudo_heatmap", "pseudo_regression"}
    for name, value in plain.items():
        assert value.item() > 0 and torch.equal(padded[name], value), name
    # A frame whose boxes are all below threshold is a frame of background, as one without rows.
    none = recipe.kd_terms(out, box_batch([False, False], [rows(), rows()]))
    weak = recipe.kd_terms(out, box_batch([False, False], [below[0][2:], below[1][1:]]))
    for name, value in none.items():
        assert torch.equal(weak[name], value), name
    assert none["pseudo_regression"].item() == 0.0 and none["pseudo_heatmap"].item() > 0


# ------------------------------------------------------------------------------------------
# The losses: hard is CenterPoint's; soft by hand
# ------------------------------------------------------------------------------------------


def cell_box(col: float, row_: float, score: float, label: int, **kw: float) -> list[float]:
    """A store row whose centre sits at fractional cell ``(col, row_)`` of small_cfg's grid
    (16 x 16 cells of 0.8 m from -6.4 m): ``row(-6.4 + 0.8 * col, -6.4 + 0.8 * row_, ...)``."""
    return row(-6.4 + 0.8 * col, -6.4 + 0.8 * row_, score, label, **kw)


def saturated_output(positives: dict[tuple[int, int, int, int], float]) -> StudentOutput:
    """A head of logit -30 everywhere (its focal negatives add ~1e-39 a cell) but ``logit`` at
    (frame, class, row, col) in ``positives``, and a zero box map: CenterPoint's loss is then
    sum_pos (1 - s)^2 (-log s) / #pos plus ~0, and the L1 the targets' own magnitudes."""
    out = fake_output()
    with torch.no_grad():
        out.head.heatmap.fill_(-30.0)
        for (b, k, i, j), logit in positives.items():
            out.head.heatmap[b, k, i, j] = logit
        out.head.regression.zero_()
    return out


def focal_pos(z: float) -> float:
    """CenterPoint's focal loss at a positive (target 1) of logit ``z``: (1 - s)^2 (-log s)."""
    s = 1.0 / (1.0 + math.exp(-z))
    return (1.0 - s) ** 2 * -math.log(s)


def l1_target(dx: float, dy: float, yaw: float) -> float:
    """sum_c code_weight_c |target_c| of a ``row`` box (z -0.5, l 0.8, w 0.6, h 1.5, v (0.5,
    -0.25)) at cell offsets (dx, dy) against a zero box map; code weights 1 x 8, 0.2 x 2."""
    sizes = abs(math.log(0.8)) + abs(math.log(0.6)) + abs(math.log(1.5))
    return dx + dy + 0.5 + sizes + abs(math.sin(yaw)) + abs(math.cos(yaw)) + 0.2 * (0.5 + 0.25)


def test_hard_mode_is_centerpoints_detection_loss_on_the_kept_boxes() -> None:
    cfg = small_cfg("student.recipe=pseudo_label", "distill.pseudo_weight=2.0")
    frames = [
        rows(
            cell_box(9.25, 5.5, 0.9, 0),  # kept: car at cell (row 5, col 9), offsets .25, .5
            cell_box(6.5, 12.5, 0.2, 1),  # dropped (< 0.3)
            cell_box(3.5, 2.5, 0.35, 8),  # kept: pedestrian at (2, 3)
        ),
        rows(
            cell_box(11.5, 11.5, 0.31, 1, yaw=-2.0),  # kept: truck at (11, 11)
            cell_box(8.5, 8.5, 0.05, 0),  # dropped
        ),
    ]
    # The kept boxes' centres (in their class) get logits 0, 1 and -1; a dropped box, were it
    # kept, would be a positive of logit -30 there (a loss of about 30).
    out = saturated_output({(0, 0, 5, 9): 0.0, (0, 8, 2, 3): 1.0, (1, 1, 11, 11): -1.0})
    terms = build_recipe(cfg).kd_terms(out, box_batch([False, False], frames))
    # pseudo_weight 2 x head.heatmap_weight 1 x the focal loss over its 3 positives
    heatmap = 2.0 * 1.0 * (focal_pos(0.0) + focal_pos(1.0) + focal_pos(-1.0)) / 3
    close(terms["pseudo_heatmap"], heatmap)
    # pseudo_weight 2 x head.regression_weight 0.25 x the L1 per box
    boxes = l1_target(0.25, 0.5, 0.3) + l1_target(0.5, 0.5, 0.3) + l1_target(0.5, 0.5, -2.0)
    close(terms["pseudo_regression"], 2.0 * 0.25 * boxes / 3)


def softplus(z: float) -> float:
    """log(1 + e^z): -log(1 - sigmoid(z)) = softplus(z), -log(sigmoid(z)) = softplus(-z)."""
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def soft_by_hand(logits: torch.Tensor, reg: torch.Tensor, boxes: list[list[float]],
                 code_weights: tuple[float, ...]) -> tuple[float, float]:  # fmt: skip
    """The soft loss of one frame on the 16x16, 0.8 m grid of ``small_cfg`` (x, y from -6.4),
    for boxes of about one cell (gaussian radius 2, sigma 5/6) in distinct cells:
    ``(sum_pos s (1-p)^2 (-log p) + sum_neg (1-g)^4 p^2 (-log(1-p))) / max(1, sum s)`` and
    ``sum_b s_b sum_c w_c |pred_c - target_c| / max(1, sum s)``."""
    z, r = logits.tolist(), reg.tolist()
    sigma = 5.0 / 6.0
    g = [[[0.0] * W for _ in range(H)] for _ in range(K)]
    score_at, reg_sum = {}, 0.0
    for x, y, zc, length, width, height, yaw, vx, vy, s, label in boxes:
        col_f, row_f = (x + 6.4) / 0.8, (y + 6.4) / 0.8
        col, rw, k = math.floor(col_f), math.floor(row_f), int(label)
        for dr in range(-2, 3):
            for dc in range(-2, 3):
                if 0 <= rw + dr < H and 0 <= col + dc < W:
                    value = math.exp(-(dr * dr + dc * dc) / (2 * sigma * sigma))
                    g[k][rw + dr][col + dc] = max(g[k][rw + dr][col + dc], value)
        score_at[(k, rw, col)] = s
        target = [col_f - col, row_f - rw, zc, math.log(length), math.log(width),
                  math.log(height), math.sin(yaw), math.cos(yaw), vx, vy]  # fmt: skip
        pred = [r[c][rw][col] for c in range(10)]
        reg_sum += s * sum(
            w * abs(p - q) for w, p, q in zip(code_weights, pred, target, strict=True)
        )
    total = 0.0
    for k in range(K):
        for i in range(H):
            for j in range(W):
                zz = z[k][i][j]
                p = 1.0 / (1.0 + math.exp(-zz))
                if (k, i, j) in score_at:
                    total += score_at[(k, i, j)] * (1 - p) ** 2 * softplus(-zz)
                else:
                    total += (1 - g[k][i][j]) ** 4 * p**2 * softplus(zz)
    norm = max(1.0, sum(b[9] for b in boxes))
    return total / norm, reg_sum / norm


@pytest.mark.parametrize(
    "boxes",
    [
        [row(1.0, -2.0, 0.6, 0)],  # one box of score 0.6: both terms scaled by it
        [row(1.0, -2.0, 0.6, 0), row(-3.0, 3.0, 0.8, 1, yaw=-2.5)],  # scores sum to 1.4
    ],
)
def test_soft_mode_by_hand(boxes: list[list[float]]) -> None:
    cfg = small_cfg(
        "student.recipe=pseudo_label", "distill.pseudo_soft=true", "distill.pseudo_weight=2.0",
        "distill.pseudo_threshold=0.5",
    )  # fmt: skip
    out = fake_output()
    terms = build_recipe(cfg).kd_terms(out, box_batch([False, True], [rows(*boxes), rows()]))
    heat, reg = soft_by_hand(
        out.head.heatmap[0].detach(), out.head.regression[0].detach(), boxes, cfg.head.code_weights
    )
    close(terms["pseudo_heatmap"], 2.0 * cfg.head.heatmap_weight * heat)
    close(terms["pseudo_regression"], 2.0 * cfg.head.regression_weight * reg)


def test_soft_mode_with_every_score_1_is_hard_mode() -> None:
    cfg = small_cfg()
    out = fake_output()
    boxes = [
        torch.tensor([[1.0, -2.0, -0.5, 4.0, 1.8, 1.5, 0.3, 0.5, 0.0],
                      [-3.0, 3.0, 0.0, 0.8, 0.6, 1.5, -2.5, 0.0, 1.0],
                      [-5.0, 2.0, 0.0, 0.5, 0.5, 1.7, 1.0, 0.0, 0.0]]),
        torch.tensor([[2.5, 2.5, -0.2, 10.0, 2.5, 3.0, 2.0, -1.0, 0.3]]),
    ]  # fmt: skip
    labels = [torch.tensor([0, 1, 8]), torch.tensor([3])]
    soft = soft_detection_loss(out.head, boxes, labels, [torch.ones(3), torch.ones(1)], cfg)
    hard = detection_loss(
        out.head, build_targets(boxes, labels, cfg.grid.bev_grid, K, cfg.head), cfg.head
    )
    for name in ("heatmap", "regression"):
        torch.testing.assert_close(soft[name], hard[name], rtol=1e-6, atol=1e-7)
    half = soft_detection_loss(out.head, boxes, labels, [torch.full((3,), 0.5), torch.ones(1)], cfg)
    assert half["regression"].item() != pytest.approx(hard["regression"].item())


def test_a_box_off_the_grid_does_not_take_the_score_of_an_edge_box_in_soft_mode() -> None:
    # (6.0, -6.0) is in the corner cell (row 0, col 15); (8.0, -8.0) is off the grid, and a
    # clamped index would put its score on that corner cell.
    cfg = small_cfg()
    out = fake_output()
    edge = torch.tensor([[6.0, -6.0, 0.0, 0.8, 0.6, 1.5, 0.0, 0.0, 0.0]])
    off = torch.tensor([[8.0, -8.0, 0.0, 0.8, 0.6, 1.5, 0.0, 0.0, 0.0]])
    head = head_of(out, [0])
    alone = soft_detection_loss(head, [edge], [torch.tensor([0])], [torch.tensor([0.4])], cfg)
    both = soft_detection_loss(
        head, [torch.cat([edge, off])], [torch.tensor([0, 0])], [torch.tensor([0.4, 0.9])], cfg
    )
    for name in ("heatmap", "regression"):
        assert torch.equal(both[name], alone[name]), name


# ------------------------------------------------------------------------------------------
# Which frames: unlabelled ones, labelled ones only when asked
# ------------------------------------------------------------------------------------------


def test_a_labelled_frame_uses_teacher_boxes_only_with_pseudo_on_labelled() -> None:
    teacher = [rows(cell_box(9.25, 5.5, 0.9, 0)), rows(cell_box(3.5, 12.5, 0.8, 1))]
    batch = box_batch([True, False], teacher)  # frame 0 has GT and teacher boxes
    # Teacher centres: frame 0 car at (5, 9) with logit 0.5; frame 1 truck at (12, 3), 1.5.
    out = saturated_output({(0, 0, 5, 9): 0.5, (1, 1, 12, 3): 1.5})
    recipe = build_recipe(small_cfg("student.recipe=pseudo_label"))
    boxes, labels, scores = recipe.pseudo_targets(batch)
    assert [len(b) for b in boxes] == [0, 1] and len(labels[0]) == len(scores[0]) == 0
    terms = recipe.kd_terms(out, batch)
    # frame 1 alone: one positive; its box at offsets (0.5, 0.5)
    close(terms["pseudo_heatmap"], focal_pos(1.5))
    close(terms["pseudo_regression"], 0.25 * l1_target(0.5, 0.5, 0.3))
    # The GT terms still see frame 0's GT.
    assert recipe(out, batch)["gt_heatmap"].item() > 0

    asked = build_recipe(
        small_cfg("student.recipe=pseudo_label", "distill.pseudo_on_labelled=true")
    )
    boxes, labels, _ = asked.pseudo_targets(batch)
    assert [len(b) for b in boxes] == [1, 1] and torch.equal(boxes[0], teacher[0][:, :9])
    terms = asked.kd_terms(out, batch)
    close(terms["pseudo_heatmap"], (focal_pos(0.5) + focal_pos(1.5)) / 2)
    both = l1_target(0.25, 0.5, 0.3) + l1_target(0.5, 0.5, 0.3)
    close(terms["pseudo_regression"], 0.25 * both / 2)


# ------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("soft", [False, True])
def test_pseudo_gradients_reach_only_the_selected_frames_never_the_targets(soft: bool) -> None:
    recipe = build_recipe(
        small_cfg("student.recipe=pseudo_label", f"distill.pseudo_soft={str(soft).lower()}")
    )
    out = fake_output()
    teacher = [rows(row(1.0, -2.0, 0.9, 0)), rows(row(-3.0, 3.0, 0.8, 1))]
    batch = box_batch([False, True], teacher)  # frame 1 is labelled: not selected
    sum(recipe.kd_terms(out, batch).values()).backward()
    for grad in (out.head.heatmap.grad, out.head.regression.grad):
        assert grad is not None
        assert grad[0].abs().sum() > 0 and torch.equal(grad[1], torch.zeros_like(grad[1]))
    for frame in batch.targets.boxes["boxes"]:
        assert not frame.requires_grad and frame.grad is None


def test_a_batch_without_pseudo_frames_is_a_zero_that_keeps_the_head_in_the_graph() -> None:
    torch.manual_seed(0)
    cfg = small_cfg("student.recipe=pseudo_label")
    student, recipe = build_camera_student(cfg), build_recipe(cfg)
    teacher = [rows(row(1.0, -2.0, 0.9, 0)), rows(row(-3.0, 3.0, 0.8, 1))]
    terms = recipe.kd_terms(
        student(box_batch([True, True], teacher)), box_batch([True, True], teacher)
    )
    assert {k: v.item() for k, v in terms.items()} == {
        "pseudo_heatmap": 0.0,
        "pseudo_regression": 0.0,
    }
    sum(terms.values()).backward()
    head = [(n, p) for n, p in student.named_parameters() if n.startswith("head.")]
    assert head and all(p.grad is not None and p.grad.abs().sum() == 0 for _, p in head)
    # The same student on an unlabelled frame: the pseudo terms move the head.
    student.zero_grad(set_to_none=True)
    batch = box_batch([False, True], teacher)
    sum(recipe.kd_terms(student(batch), batch).values()).backward()
    assert any(p.grad.abs().sum() > 0 for _, p in head)


# ------------------------------------------------------------------------------------------
# cmkd+pseudo_label
# ------------------------------------------------------------------------------------------


def test_cmkd_plus_pseudo_label_has_the_gt_terms_once_and_both_parts_terms() -> None:
    cfg = small_cfg("student.recipe=cmkd+pseudo_label", "distill.bev_weight=1")
    recipe = build_recipe(cfg)
    assert isinstance(recipe, Combined)
    cmkd, pseudo = recipe.parts
    assert isinstance(cmkd, CMKD) and isinstance(pseudo, PseudoLabel)
    assert recipe.expects == {**CMKD(cfg).expects, "boxes": None}
    targets = cmkd_targets()
    targets.boxes["boxes"] = [rows(row(1.0, -2.0, 0.9, 0)), rows(row(-3.0, 3.0, 0.8, 1))]
    out, batch = fake_output(), make_batch([True, False], targets)
    terms = recipe(out, batch)
    assert set(terms) == {
        "gt_heatmap", "gt_regression", "depth", "kd_bev", "kd_heatmap", "kd_regression",
        "pseudo_heatmap", "pseudo_regression",
    }  # fmt: skip
    alone = {**CMKD(cfg)(out, batch), **PseudoLabel(cfg)(out, batch)}
    assert set(alone) == set(terms)
    for name, value in alone.items():
        assert torch.equal(terms[name], value), name
    # distill.mode kd drops the GT terms of the whole
    assert set(build_recipe(small_cfg("student.recipe=cmkd+pseudo_label", "distill.mode=kd"))(
        out, batch
    )) == set(terms) - {"gt_heatmap", "gt_regression"}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("cmkd+nope", "unknown"),
        ("cmkd+", "unknown"),
        ("pseudo_label+pseudo_label", "twice"),
        ("cmkd+pseudo_label+cmkd", "twice"),
    ],
)
def test_unknown_or_repeated_recipe_names_are_config_errors(name: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_recipe(small_cfg(f"student.recipe={name}"))


def test_parts_that_clash_on_a_field_shape_or_a_term_are_refused() -> None:
    cfg = small_cfg("student.recipe=cmkd+pseudo_label")
    wide = CMKD(small_cfg("student.bev_channels=16"))
    with pytest.raises(
        ConfigError, match=r"'lidar_bev' at shapes \(8, 16, 16\) and \(16, 16, 16\)"
    ):
        Combined(cfg, [CMKD(cfg), wide])
    twice = Combined(cfg, [PseudoLabel(cfg), PseudoLabel(cfg)])
    batch = box_batch([False, False], [rows(), rows()])
    with pytest.raises(ConfigError, match="pseudo_heatmap"):
        twice(fake_output(), batch)


def test_combined_bind_hands_each_part_its_fields() -> None:
    from bevkd.storage.fields import (
        bev_feature_field,
        box_regression_field,
        boxes_field,
        heatmap_field,
    )

    recipe = build_recipe(small_cfg("student.recipe=cmkd+pseudo_label"))
    fields = {
        "lidar_bev": bev_feature_field("lidar_bev", C, H, W),
        "heatmap": heatmap_field("heatmap", K, H, W, activation="logits"),
        "box_regression": box_regression_field("box_regression", H, W),
        "boxes": boxes_field("boxes"),
    }
    recipe.bind(fields)
    assert recipe.parts[0].heatmap_activation == {"heatmap": "logits"}
    assert recipe.heatmap_activation == {"heatmap": "logits"}
    assert recipe.parts[1].heatmap_activation == {}


# ------------------------------------------------------------------------------------------
# The label budget
# ------------------------------------------------------------------------------------------


def test_labeled_fraction_must_be_in_0_1() -> None:
    for bad in ("0", "1.5", "-0.2"):
        with pytest.raises(ConfigError, match="labeled_fraction"):
            small_cfg(f"data.labeled_fraction={bad}")


# ------------------------------------------------------------------------------------------
# A real cached tiny world
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("pseudo_label_world")
    root, _, url = cached_world(tiny_nuscenes, base, "cache.splits=[train, val, unlabeled]")
    return {"root": root, "url": str(url)}


def _student(world: dict[str, Any], *extra: str) -> Any:
    return small_config(
        world["root"], "model.kind=camera", "student.recipe=pseudo_label",
        f"student.store={world['url']}", "student.bev_channels=8", *extra,
    )  # fmt: skip


def _moved_frame(world: dict[str, Any], labelled: bool) -> tuple[Any, dict, np.ndarray]:
    """A training sample (labelled or not) whose BEV augmentation mirrors and turns, its
    cached targets, and its raw store box rows."""
    cfg = small_config(world["root"])
    frames = load_frames(cfg, "train") + load_frames(cfg, "unlabeled")
    samples = FrameDataset(frames, cfg.data, train=True, seed=0)
    dataset = CachedTargets(samples, world["url"], fields=["boxes"])
    for key in [(e, i) for e in range(4) for i, f in enumerate(frames) if f.has_label == labelled]:
        aug = samples[key].bev_aug.double().numpy()
        if np.linalg.det(aug[:2, :2]) < 0 and abs(aug[0, 1]) > 0.1:  # a mirror and > 5 deg
            sample, targets = dataset[key]
            raw = open_store(world["url"]).read_frame(sample.token, ["boxes"])["boxes"]
            return sample, targets, raw
    raise AssertionError("no training draw mirrors and turns a frame")


def bev_points_by_hand(boxes: np.ndarray) -> np.ndarray:
    """(N, 5, 2): the four BEV corners and the front-centre point of (N, 9) boxes."""
    x, y, length, width, yaw = boxes[:, 0], boxes[:, 1], boxes[:, 3], boxes[:, 4], boxes[:, 6]
    c, s = np.cos(yaw), np.sin(yaw)
    out = []
    for u, v in ((0.5, 0.5), (0.5, -0.5), (-0.5, -0.5), (-0.5, 0.5), (0.5, 0.0)):
        dx, dy = u * length, v * width
        out.append(np.stack([x + c * dx - s * dy, y + s * dx + c * dy], axis=1))
    return np.stack(out, axis=1)


def test_transform_boxes_moves_corners_heading_and_velocity_with_the_augmentation(
    world: dict[str, Any],
) -> None:
    sample, _, raw = _moved_frame(world, labelled=False)
    aug = sample.bev_aug.double().numpy()
    boxes = raw[:, :9].astype(np.float64)
    moved = transform_boxes(boxes, aug)
    a, t = aug[:2, :2], aug[:2, 3]
    # corners and the front point, moved as points, are the moved box's
    expected = bev_points_by_hand(boxes) @ a.T + t
    got = bev_points_by_hand(moved)
    for i in range(len(boxes)):  # a mirror reverses the corners' order, not the set
        np.testing.assert_allclose(
            sorted(map(tuple, got[i, :4].round(4))), sorted(map(tuple, expected[i, :4].round(4))),
            atol=2e-4,
        )  # fmt: skip
    np.testing.assert_allclose(got[:, 4], expected[:, 4], atol=1e-6)  # the heading
    # a velocity is a displacement per second: it turns, mirrors and scales with the block
    ahead = transform_boxes(np.concatenate([boxes[:, :2] + boxes[:, 7:9], boxes[:, 2:]], 1), aug)
    np.testing.assert_allclose(moved[:, 7:9], ahead[:, :2] - moved[:, :2], rtol=1e-3, atol=1e-9)
    assert np.abs(raw[:, 7:9]).max() > 0


def test_an_unlabelled_frames_pseudo_targets_are_its_cached_boxes_moved_like_its_inputs(
    world: dict[str, Any],
) -> None:
    sample, targets, raw = _moved_frame(world, labelled=False)
    aug = sample.bev_aug.double().numpy()
    assert not sample.has_label and len(sample.gt_boxes) == 0
    assert not np.allclose(aug, np.eye(4), atol=1e-3)
    # Thresholds inside the teacher's spread of scores: the frame's median, and for its most
    # frequent class that class's median, each a float32 score of the store.
    scores, classes = raw[:, 9], raw[:, 10].astype(int)
    common = int(np.bincount(classes).argmax())
    threshold = float(np.median(scores))
    own = float(np.quantile(scores[classes == common], 0.5, method="lower"))
    name = small_config(world["root"]).classes[common]
    cfg = _student(
        world, f"distill.pseudo_threshold={threshold!r}",
        f"distill.pseudo_class_thresholds=[[{name}, {own!r}]]", "distill.pseudo_weight=1.5",
    )  # fmt: skip
    recipe = build_recipe(cfg)
    batch = collate_student([(sample, targets)])
    boxes, labels, got_scores = recipe.pseudo_targets(batch)

    per_class = np.full(K, np.float32(threshold))
    per_class[common] = np.float32(own)
    keep = np.array([r[9] >= per_class[int(r[10])] for r in raw])
    assert 0 < keep.sum() < len(raw)
    assert 0 < (keep & (classes == common)).sum() < (classes == common).sum()
    assert (keep != (scores >= np.float32(threshold))).any()  # the class's own threshold counts
    expected = transform_boxes(raw[keep, :9].astype(np.float64), aug)
    got = boxes[0].double().numpy()
    np.testing.assert_allclose(got[:, [0, 1, 2, 3, 4, 5]], expected[:, :6], atol=1e-4)
    np.testing.assert_allclose(np.cos(got[:, 6]), np.cos(expected[:, 6]), atol=1e-5)
    np.testing.assert_allclose(np.sin(got[:, 6]), np.sin(expected[:, 6]), atol=1e-5)
    np.testing.assert_allclose(got[:, 7:9], expected[:, 7:9], rtol=1e-4, atol=1e-10)
    assert labels[0].tolist() == raw[keep, 10].astype(int).tolist()
    assert got_scores[0].tolist() == raw[keep, 9].tolist()

    # The CenterPoint targets of the hand-moved boxes are the recipe's.
    grid = cfg.grid.bev_grid
    hand = build_targets([torch.from_numpy(expected).float()], [labels[0]], grid, K, cfg.head)
    ours = build_targets(boxes, labels, grid, K, cfg.head)
    assert hand.mask.sum() > 0 and torch.equal(ours.mask, hand.mask)
    torch.testing.assert_close(ours.heatmap, hand.heatmap, atol=1e-5, rtol=0)
    m = hand.mask.unsqueeze(1).expand_as(hand.regression)
    torch.testing.assert_close(ours.regression[m], hand.regression[m], atol=1e-4, rtol=1e-4)
    # and the hard loss is CenterPoint's against them
    g = torch.Generator().manual_seed(0)
    head = HeadOutput(
        torch.randn(1, K, *grid.shape, generator=g), torch.randn(1, 10, *grid.shape, generator=g)
    )
    terms = recipe.kd_terms(StudentOutput({}, head, torch.zeros(1)), batch)
    det = detection_loss(head, hand, cfg.head)
    assert terms["pseudo_heatmap"].item() == pytest.approx(1.5 * det["heatmap"].item(), rel=1e-5)
    assert terms["pseudo_regression"].item() == pytest.approx(
        1.5 * det["regression"].item(), rel=1e-4
    )


def test_a_labelled_cached_frame_keeps_its_teacher_boxes_out_unless_asked(
    world: dict[str, Any],
) -> None:
    sample, targets, raw = _moved_frame(world, labelled=True)
    assert sample.has_label and len(targets["boxes"]) == len(raw) > 0
    batch = collate_student([(sample, targets)])
    cfg = _student(world, "distill.pseudo_threshold=0.0")
    boxes, _, _ = build_recipe(cfg).pseudo_targets(batch)
    assert boxes[0].shape == (0, 9)
    asked = build_recipe(
        _student(world, "distill.pseudo_threshold=0.0", "distill.pseudo_on_labelled=true")
    )
    boxes, _, _ = asked.pseudo_targets(batch)
    expected = transform_boxes(raw[:, :9].astype(np.float64), sample.bev_aug.double().numpy())
    np.testing.assert_allclose(boxes[0][:, :6].double().numpy(), expected[:, :6], atol=1e-4)


def test_training_frames_put_hidden_frames_in_the_pool_only_when_unlabeled(
    world: dict[str, Any],
) -> None:
    store = open_store(world["url"])
    cfg = _student(world, "data.labeled_fraction=0.5", "data.label_seed=4",
                   "student.teacher_saw_hidden_labels=true")  # fmt: skip
    train, unlabeled = load_frames(cfg, "train"), load_frames(cfg, "unlabeled")
    kept = list(budget.choose(cfg.data, train).kept)
    assert len(train) == 3 and len(kept) == 2  # round(1.5)
    said: list[str] = []
    only = train_student.training_frames(cfg, store, said.append)
    assert {f.token for f in only} == set(kept) and all(f.has_label for f in only)
    assert "label budget: 2 of 3 labelled train frames" in said[0] and "left out" in said[0], said
    semi = dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, unlabeled=True))
    pool = train_student.training_frames(semi, store, lambda _: None)
    # the labelled frames first, then the hidden one, then the unlabeled split
    labelled = [f.token for f in train if f.token in kept]
    hidden = [f.token for f in train if f.token not in kept]
    assert [f.token for f in pool] == labelled + hidden + [f.token for f in unlabeled]
    for f in pool:
        assert f.has_label == (f.token in kept) and (len(f.boxes) > 0) == f.has_label, f.token


def test_no_gt_derived_field_reaches_a_frame_whose_labels_were_hidden(
    world: dict[str, Any],
) -> None:
    # labeldistill reads the label encoder's label_bev(_s2), which encode GT (labelled only)
    cfg = small_config(
        world["root"], "model.kind=camera", "student.recipe=labeldistill",
        f"student.store={world['url']}", "student.bev_channels=12", "model.bev_channels=16",
        "model.label_encoder_channels=8", "distill.bev_scales=[1, 2]", "student.unlabeled=true",
        "data.labeled_fraction=0.5", "data.label_seed=4", "student.teacher_saw_hidden_labels=true",
    )  # fmt: skip
    _, dataset = train_student.build(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    assert isinstance(dataset, CachedTargets)
    assert {"label_bev", "label_bev_s2"} <= set(dataset.fields)
    assert open_store(world["url"]).contract.field("label_bev").labeled_only
    kept = budget.choose(cfg.data, load_frames(cfg, "train")).kept
    hidden = {f.token for f in load_frames(cfg, "train")} - set(kept)
    seen = {"hidden": 0, "kept": 0}
    items = [dataset[(0, i)] for i in range(len(dataset))]
    for sample, targets in items:
        if sample.token in hidden:
            seen["hidden"] += 1
            assert not sample.has_label and sample.gt_boxes.shape == (0, 9)
            assert len(sample.gt_labels) == 0
            assert not {"label_bev", "label_bev_s2"} & set(targets), sample.token
        elif sample.token in kept:  # the control: a labelled frame does get them
            seen["kept"] += 1
            assert sample.has_label and {"label_bev", "label_bev_s2"} <= set(targets)
    assert seen == {"hidden": 1, "kept": 2}
    batch = collate_student(items)
    for i, token in enumerate(batch.tokens):
        assert bool(batch.targets.present["label_bev"][i]) == (token in kept), token
        if token in hidden:
            assert batch.targets.field("label_bev")[i].abs().sum() == 0


def test_a_pseudo_label_run_records_the_frames_whose_labels_it_kept(
    world: dict[str, Any], tmp_path: Path
) -> None:
    from bevkd.models.checkpoint import load_checkpoint

    out = tmp_path / "run"
    cfg = _student(
        world, "student.unlabeled=true", "data.labeled_fraction=0.5",
        "student.teacher_saw_hidden_labels=true", "distill.pseudo_threshold=0.1", "train.epochs=1", f"train.out_dir={out}",
        "train.log_every=1",
    )  # fmt: skip
    result = train_student.run(cfg)
    assert result.steps == 3  # 2 labelled + 1 hidden + 3 unlabelled frames, 2 per step
    listed = (out / "labeled_frames.txt").read_text().splitlines()
    assert listed == list(budget.choose(cfg.data, load_frames(cfg, "train")).kept)
    assert len(listed) == 2
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(out / name)["labeled_tokens"] == listed, name
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "pseudo_heatmap" in r]
    assert len(steps) == 3 and any(r["pseudo_heatmap"] > 0 for r in steps)
    assert all(math.isfinite(r["pseudo_regression"]) for r in steps)
