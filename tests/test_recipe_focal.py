"""The FocalDistiller recipe (distill/focal.py): box footprints, grid_sample coordinates and
box points against hand-made grids and maps; kd_mgd and kd_points against hand arithmetic;
unlabelled and box-less frames; gradients; the fields it reads; a few optimizer steps of a
real student; and a real ``train-student`` run whose best.pt loads as a plain student.

Expected values are cell lists and point coordinates written out by hand, summed with Python
floats, never with the functions under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from stage_helpers import cached_world, small_config
from test_distill_losses import C, H, W, close, fake_output, frame_of, make_batch, small_cfg, t

from bevkd.datasets.student_batch import StudentBatch, Targets, collate_targets
from bevkd.distill.focal import (
    FocalDistiller,
    box_points,
    cell_keep_mask,
    footprint_mask,
    grid_coords,
    point_l1,
    sample_points,
)
from bevkd.distill.recipes import build_recipe
from bevkd.models.camera_student import StudentOutput, build_camera_student
from bevkd.pipeline.config import load_config
from bevkd.pipeline.geometry import BEVGrid

# A non-square grid (W 5, H 4) whose cell centres are whole metres: x -2..2, y -1..2.
# Cell (row i, col j) has its centre at x = j - 2, y = i - 1.
GRID = BEVGrid(-2.5, -1.5, 2.5, 2.5, 1.0)


def row(x: float, y: float, length: float, width: float, yaw: float,
        score: float = 0.9) -> list[float]:  # fmt: skip
    """A store box row (x, y, z, l, w, h, yaw, vx, vy, score, label)."""
    return [x, y, 0.0, length, width, 1.5, yaw, 0.0, 0.0, score, 0.0]


def cells(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in mask.nonzero().tolist()}


# ------------------------------------------------------------------------------------------
# Geometry: footprints, points, grid_sample coordinates
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        # x in [-0.1, 2.1] -> centres x 0, 1, 2 (cols 2-4); y in [0.6, 1.4] -> y 1 (row 2)
        (row(1.0, 1.0, 2.2, 0.8, 0.0), {(2, 2), (2, 3), (2, 4)}),
        # yaw 90 deg: the length runs along y: y 0, 1, 2 (rows 1-3) at x 1 (col 3)
        (row(1.0, 1.0, 2.2, 0.8, math.pi / 2), {(1, 3), (2, 3), (3, 3)}),
        # yaw +45 deg: the long axis on the (1, 1) diagonal: (0,0), (1,1), (-1,-1) metres
        (row(0.0, 0.0, 3.2, 1.0, math.pi / 4), {(1, 2), (2, 3), (0, 1)}),
        # yaw -45 deg: the (1, -1) diagonal: (0,0), (1,-1), (-1,1) metres
        (row(0.0, 0.0, 3.2, 1.0, -math.pi / 4), {(1, 2), (0, 3), (2, 1)}),
        # smaller than a cell, no centre inside: the cell holding its centre (1.3, -0.8)
        (row(1.3, -0.8, 0.3, 0.3, 0.0), {(0, 3)}),
        (row(10.0, 10.0, 2.0, 2.0, 0.0), set()),  # off the grid
    ],
)
def test_footprint_mask_marks_the_cells_whose_centres_the_rotated_box_covers(
    box: list[float], expected: set[tuple[int, int]]
) -> None:
    mask = footprint_mask(t([box]), GRID)
    assert mask.shape == (4, 5) and mask.dtype == torch.bool
    assert cells(mask) == expected


def test_footprint_mask_of_several_boxes_is_their_union_and_none_is_empty() -> None:
    both = footprint_mask(t([row(1.0, 1.0, 2.2, 0.8, 0.0), row(1.3, -0.8, 0.3, 0.3, 0.0)]), GRID)
    assert cells(both) == {(2, 2), (2, 3), (2, 4), (0, 3)}
    assert not footprint_mask(torch.zeros(0, 11), GRID).any()


def test_box_points_are_corners_centre_and_edge_midpoints_rotated_by_yaw() -> None:
    # l 4 along the box x, w 2 along its y; at yaw 90 deg box x is ego +y, box y is ego -x.
    points = box_points(t([row(1.0, -2.0, 4.0, 2.0, 0.0), row(1.0, -2.0, 4.0, 2.0, math.pi / 2)]))
    assert points.shape == (2, 9, 2)
    # (+l/2, +w/2), (+,-), (-,-), (-,+), centre, (+l/2, 0), (0, +w/2), (-l/2, 0), (0, -w/2)
    yaw0 = [[3, -1], [3, -3], [-1, -3], [-1, -1], [1, -2], [3, -2], [1, -1], [-1, -2], [1, -3]]
    yaw90 = [[0, 0], [2, 0], [2, -4], [0, -4], [1, -2], [1, 0], [0, -2], [1, -4], [2, -2]]
    torch.testing.assert_close(points[0], t(yaw0), atol=1e-5, rtol=0)
    torch.testing.assert_close(points[1], t(yaw90), atol=1e-5, rtol=0)


def test_grid_coords_put_each_cell_centre_on_its_pixel_centre() -> None:
    # align_corners=False: pixel j of W spans [2j/W - 1, 2(j+1)/W - 1]; its centre (2j+1)/W - 1.
    centres = t([[j - 2.0, i - 1.0] for i in range(4) for j in range(5)])
    g = grid_coords(centres, GRID)
    expected = [[(2 * j + 1) / 5 - 1, (2 * i + 1) / 4 - 1] for i in range(4) for j in range(5)]
    torch.testing.assert_close(g, t(expected), atol=1e-6, rtol=0)
    edges = grid_coords(t([[-2.5, -1.5], [2.5, 2.5]]), GRID)  # the grid's outer corners
    torch.testing.assert_close(edges, t([[-1.0, -1.0], [1.0, 1.0]]))


def test_sample_points_reads_a_hand_made_map_at_ego_points() -> None:
    # f[i, j] = 10 i + j is linear, so bilinear sampling is exact between cell centres: at
    # ego (x, y) it reads 10 (y + 1) + (x + 2) (row i sits at y = i - 1, col j at x = j - 2).
    f = torch.tensor([[[10.0 * i + j for j in range(5)] for i in range(4)]]).unsqueeze(0)
    f = torch.cat([f, -f], dim=1)  # a second channel, negated
    xy = t([[[-2.0, -1.0], [0.0, 0.0], [2.0, 2.0], [0.5, 0.5], [-1.25, 1.75], [2.4, 0.0]]])
    by_hand = [0.0, 12.0, 34.0, 17.5, 10 * 2.75 + 0.75]
    by_hand.append(14.0)  # past the last column's centre: the border value of row 1, col 4
    got = sample_points(f, xy, GRID)
    assert got.shape == (1, 6, 2)
    assert got[0, :, 0].tolist() == pytest.approx(by_hand, abs=1e-5)
    assert got[0, :, 1].tolist() == pytest.approx([-v for v in by_hand], abs=1e-5)


def test_point_l1_is_the_mean_over_valid_points_and_channels() -> None:
    s = t([[[1.0, 2.0], [0.0, -1.0], [5.0, 5.0]]])  # (B 1, P 3, C 2)
    tch = t([[[0.5, 2.0], [1.0, 1.0], [-9.0, 9.0]]])
    valid = torch.tensor([[True, True, False]])  # the third point is off the grid
    close(point_l1(s, tch, valid), (0.5 + 0.0 + 1.0 + 2.0) / (2 * 2))
    close(point_l1(s, tch, torch.zeros(1, 3, dtype=torch.bool)), 0.0)


def test_cell_keep_mask_is_seeded_bernoulli_per_cell() -> None:
    like = torch.zeros(2, 3, 64, 64)
    torch.manual_seed(7)
    a = cell_keep_mask(like, 0.65)
    torch.manual_seed(7)
    assert torch.equal(a, cell_keep_mask(like, 0.65))
    assert a.shape == (2, 1, 64, 64) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert 1 - a.mean().item() == pytest.approx(0.65, abs=0.03)  # 8192 cells
    assert not torch.equal(a, cell_keep_mask(like, 0.65))  # a fresh draw differs
    assert cell_keep_mask(like, 0.0).min().item() == 1.0


# ------------------------------------------------------------------------------------------
# The recipe on the 16x16, 0.8 m grid of small_cfg: cell (i, j) centre x = 0.8 j - 6, y = 0.8 i - 6
# ------------------------------------------------------------------------------------------

FOCAL = ("student.recipe=focal", f"model.bev_channels={C}")


def focal_targets(boxes: list[list[list[float]]], seed: int = 1, channels: int = C,
                  drop_bev: tuple[int, ...] = ()) -> Targets:  # fmt: skip
    """Two frames' lidar_bev (random) and boxes, collated like the loader does."""
    g = torch.Generator().manual_seed(seed)
    frames = []
    for i, rows in enumerate(boxes):
        frame = {"boxes": t(rows).reshape(-1, 11)}
        if i not in drop_bev:
            frame["lidar_bev"] = torch.rand(channels, H, W, generator=g)
        frames.append(frame)
    return collate_targets(frames)


def identity_generator(recipe: FocalDistiller, shift: int = 0) -> None:
    """conv3x3 delta kernels: on a non-negative input, generator(x) = x; with ``shift`` 1 the
    first conv reads the next column, so generator(x)[..., j] = x[..., j + 1]."""
    with torch.no_grad():
        for k, conv in enumerate((recipe.generator[0], recipe.generator[2])):
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[:, :, 1, 1 + (shift if k == 0 else 0)] = torch.eye(conv.weight.shape[0])


def output_with_bev(bev: torch.Tensor) -> StudentOutput:
    out = fake_output()
    out.features["bev"] = bev.detach().clone().requires_grad_(True)
    return out


# Frame 0: (0.4, 0.4) l 2.5 w 0.9 yaw 0 -> row 8, cols 7-9; a 0.2-score box is ignored.
# Frame 1: (-3.6, 2.0) yaw 90 deg -> rows 9-11, col 3; a 0.3 m box at (4.1, -4.1) -> (2, 13).
MGD_BOXES = [
    [row(0.4, 0.4, 2.5, 0.9, 0.0), row(-4.0, -4.0, 3.0, 3.0, 0.0, score=0.2)],
    [row(-3.6, 2.0, 2.5, 0.9, math.pi / 2), row(4.1, -4.1, 0.3, 0.3, 0.0, score=0.5)],
]
MGD_CELLS = [(0, 8, 7), (0, 8, 8), (0, 8, 9), (1, 9, 3), (1, 10, 3), (1, 11, 3), (1, 2, 13)]


def squared_error_by_hand(
    s: torch.Tensor, tch: torch.Tensor, at: list[tuple[int, int, int]]
) -> float:
    num = sum(
        (s[b, c, i, j].item() - tch[b, c, i, j].item()) ** 2 for b, i, j in at for c in range(C)
    )
    return num / (C * len(at))


def test_focal_expects_the_teacher_bev_and_its_boxes() -> None:
    recipe = build_recipe(small_cfg(*FOCAL))
    assert isinstance(recipe, FocalDistiller)
    assert recipe.expects == {"lidar_bev": (C, H, W), "boxes": None}
    assert isinstance(recipe.align, torch.nn.Identity)  # student channels = teacher's
    fusion = FocalDistiller(small_cfg("distill.teacher=fusion", "model.bev_channels=4"))
    assert fusion.expects == {"fused_bev": (4, H, W), "fusion_boxes": None}
    assert isinstance(fusion.align, torch.nn.Conv2d) and fusion.align.weight.shape == (4, C, 1, 1)
    off = FocalDistiller(small_cfg(*FOCAL, "distill.mgd_weight=0", "distill.point_weight=0"))
    assert off.expects == {}


def test_kd_mgd_by_hand_in_the_teacher_box_footprints() -> None:
    recipe = FocalDistiller(small_cfg(*FOCAL, "distill.mgd_mask_ratio=0", "distill.mgd_weight=2"))
    identity_generator(recipe)
    targets = focal_targets(MGD_BOXES)
    bev = torch.rand(2, C, H, W, generator=torch.Generator().manual_seed(3))
    terms = recipe(output_with_bev(bev), make_batch([True, False], targets))
    expected = squared_error_by_hand(bev, targets.fields["lidar_bev"], MGD_CELLS)
    close(terms["kd_mgd"], 2 * expected)


def test_kd_mgd_drops_student_cells_with_torch_rng() -> None:
    recipe = FocalDistiller(small_cfg(*FOCAL, "distill.mode=kd", "distill.mgd_mask_ratio=0.5"))
    identity_generator(recipe, shift=1)  # so masking before the generator differs from after
    targets = focal_targets(MGD_BOXES)
    bev = torch.rand(2, C, H, W, generator=torch.Generator().manual_seed(3)) + 0.5
    out, batch = output_with_bev(bev), make_batch([True, False], targets)
    torch.manual_seed(11)
    first = recipe(out, batch)["kd_mgd"]
    torch.manual_seed(11)
    assert torch.equal(recipe(out, batch)["kd_mgd"], first)
    torch.manual_seed(11)
    keep = torch.rand(2, 1, H, W) >= 0.5  # the draw the recipe made
    generated = torch.zeros_like(bev)
    generated[..., :-1] = (bev * keep)[..., 1:]  # the masked student, one column over
    expected = squared_error_by_hand(generated, targets.fields["lidar_bev"], MGD_CELLS)
    assert 0 < keep.float().mean() < 1
    close(first, expected)


def test_kd_points_by_hand_on_linear_maps() -> None:
    # Linear maps, so bilinear sampling is exact: with r = (y + 6.4) / 0.8 - 0.5 and
    # q = (x + 6.4) / 0.8 - 0.5 (fractional row, col), S_c = (c + 1) r + 0.5 q, T_c = 0.3 c q - r.
    i = torch.arange(H, dtype=torch.float32).view(H, 1)
    j = torch.arange(W, dtype=torch.float32).view(1, W)
    bev = torch.stack([(c + 1) * i + 0.5 * j for c in range(C)]).expand(2, C, H, W)
    teacher = torch.stack([0.3 * c * j - i for c in range(C)]).expand(2, C, H, W)
    boxes = [
        # its 9 points: x in {-1, 1, 3} x y in {-3, -2, -1}
        [row(1.0, -2.0, 4.0, 2.0, 0.0), row(0.0, 0.0, 9.0, 9.0, 0.0, score=0.1)],
        # yaw 90 deg: x in {-2.5, -2, -1.5} x y in {0.5, 2, 3.5}; then x in {5, 6, 7} x
        # y in {-0.5, 0, 0.5}, whose x = 7 points lie off the grid (x_max 6.4)
        [row(-2.0, 2.0, 3.0, 1.0, math.pi / 2), row(6.0, 0.0, 2.0, 1.0, 0.0, score=0.8)],
    ]
    targets = focal_targets(boxes)
    targets.fields["lidar_bev"] = teacher.clone()
    recipe = FocalDistiller(small_cfg(*FOCAL, "distill.point_weight=3"))
    terms = recipe(output_with_bev(bev), make_batch([True, False], targets))
    points = [(x, y) for x in (-1.0, 1.0, 3.0) for y in (-3.0, -2.0, -1.0)]
    points += [(x, y) for x in (-2.5, -2.0, -1.5) for y in (0.5, 2.0, 3.5)]
    points += [(x, y) for x in (5.0, 6.0) for y in (-0.5, 0.0, 0.5)]
    total = 0.0
    for x, y in points:
        r, q = (y + 6.4) / 0.8 - 0.5, (x + 6.4) / 0.8 - 0.5
        total += sum(abs((c + 1) * r + 0.5 * q - (0.3 * c * q - r)) for c in range(C))
    close(terms["kd_points"], 3 * total / (C * len(points)))


def test_an_unlabelled_frame_gets_both_kd_terms_and_no_gt_gradient() -> None:
    recipe = FocalDistiller(small_cfg(*FOCAL))
    out = fake_output()
    out.features["bev"] = out.features["bev"].detach().abs().requires_grad_(True)
    out.head.heatmap.retain_grad()
    batch = make_batch([True, False], focal_targets(MGD_BOXES))
    terms = recipe(out, batch)
    assert set(terms) == {"gt_heatmap", "gt_regression", "depth", "kd_mgd", "kd_points"}
    (terms["kd_mgd"] + terms["kd_points"]).backward(retain_graph=True)
    grad = out.features["bev"].grad
    assert (
        grad is not None and torch.count_nonzero(grad[1]) > 0 and torch.count_nonzero(grad[0]) > 0
    )
    (terms["gt_heatmap"] + terms["gt_regression"]).backward()
    assert torch.count_nonzero(out.head.heatmap.grad[1]) == 0  # no GT on the unlabelled frame
    assert torch.count_nonzero(out.head.heatmap.grad[0]) > 0
    kd_only = FocalDistiller(small_cfg(*FOCAL, "distill.mode=kd"))(out, batch)
    assert set(kd_only) == {"depth", "kd_mgd", "kd_points"}


def frame_alone(
    out: StudentOutput, batch: StudentBatch, i: int
) -> tuple[StudentOutput, StudentBatch]:
    """Frame ``i`` alone, its boxes too (``frame_of`` slices the maps)."""
    one_out, one = frame_of(out, batch, i)
    one.targets.boxes = {k: v[i : i + 1] for k, v in batch.targets.boxes.items()}
    return one_out, one


@pytest.mark.parametrize(
    "frame1",
    ["no box above the score", "no boxes", "no cached bev"],
)
def test_a_frame_without_instances_adds_nothing(frame1: str) -> None:
    recipe = FocalDistiller(small_cfg(*FOCAL, "distill.mgd_mask_ratio=0"))
    second = {
        "no box above the score": [row(0.0, 0.0, 4.0, 2.0, 0.0, score=0.25)],  # region_score 0.3
        "no boxes": [],
        "no cached bev": MGD_BOXES[1],
    }[frame1]
    targets = focal_targets([MGD_BOXES[0], second], drop_bev=(1,) if "bev" in frame1 else ())
    out = fake_output()
    out.features["bev"].retain_grad()
    batch = make_batch([True, False], targets)
    terms = recipe(out, batch)
    alone = recipe(*frame_alone(out, batch, 0))
    close(terms["kd_mgd"], alone["kd_mgd"].item())
    close(terms["kd_points"], alone["kd_points"].item())
    (terms["kd_mgd"] + terms["kd_points"]).backward()
    grad = out.features["bev"].grad
    assert torch.count_nonzero(grad[1]) == 0 and torch.count_nonzero(grad[0]) > 0


def test_a_batch_without_instances_is_a_zero_that_keeps_every_parameter() -> None:
    recipe = FocalDistiller(small_cfg(*FOCAL, "model.bev_channels=4", "distill.mode=kd"))
    targets = focal_targets([[], [row(0.0, 0.0, 4.0, 2.0, 0.0, score=0.1)]], channels=4)
    out = fake_output()
    terms = recipe(out, make_batch([False, False], targets))
    assert terms["kd_mgd"].item() == 0.0 and terms["kd_points"].item() == 0.0
    (terms["kd_mgd"] + terms["kd_points"]).backward()
    for name, p in recipe.named_parameters():
        assert p.grad is not None, f"{name} is outside the graph (DDP would hang)"
    assert out.features["bev"].grad is not None


def test_gradients_reach_the_student_align_and_generator_never_the_targets() -> None:
    recipe = FocalDistiller(small_cfg(*FOCAL, "model.bev_channels=4"))
    targets = focal_targets(MGD_BOXES, channels=4)
    out = fake_output()
    terms = recipe(out, make_batch([True, False], targets))
    (terms["kd_mgd"] + terms["kd_points"]).backward()
    assert torch.count_nonzero(out.features["bev"].grad) > 0
    for name, p in recipe.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    for value in [*targets.fields.values(), *targets.boxes["boxes"]]:
        assert not value.requires_grad and value.grad is None


class Reads(dict):
    """A dict that records the keys read from it."""

    def __init__(self, data: dict, seen: set[str]) -> None:
        super().__init__(data)
        self.seen = seen

    def __getitem__(self, key: str) -> Any:
        self.seen.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)


@pytest.mark.parametrize("teacher", ["lidar", "fusion"])
def test_the_recipe_reads_exactly_the_fields_it_expects(teacher: str) -> None:
    recipe = FocalDistiller(small_cfg(*FOCAL, f"distill.teacher={teacher}"))
    base = focal_targets(MGD_BOXES)
    store = {  # every field a store may hold, under both teachers' names
        name: base.fields["lidar_bev"] for name in ("lidar_bev", "fused_bev", "camera_bev")
    }
    present = {name: torch.tensor([True, True]) for name in store}
    boxes = {name: base.boxes["boxes"] for name in ("boxes", "fusion_boxes")}
    seen: set[str] = set()
    targets = Targets(Reads(store, seen), Reads(present, seen), Reads(boxes, seen))
    recipe(fake_output(), make_batch([True, False], targets))
    assert seen == set(recipe.expects)


def test_a_few_steps_of_a_real_student_lower_the_loss() -> None:
    cfg = small_cfg("student.recipe=focal", "model.bev_channels=4")
    torch.manual_seed(0)
    student, recipe = build_camera_student(cfg), build_recipe(cfg)
    batch = make_batch([True, False], focal_targets(MGD_BOXES, channels=4))
    params = [*student.parameters(), *recipe.parameters()]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    totals = []
    for _ in range(6):
        torch.manual_seed(1)  # the same cell mask every step: a fixed objective
        terms = recipe(student(batch), batch)
        total = sum(terms.values())
        totals.append(total.item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert totals[-1] < totals[0], totals


# ------------------------------------------------------------------------------------------
# Configs and a real run
# ------------------------------------------------------------------------------------------

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("student_file", "cache_file"),
    [("demo/student_focal.yaml", "demo/cache.yaml"), ("nuscenes/student_focal.yaml", "nuscenes/cache.yaml")],
)  # fmt: skip
def test_focal_configs_read_what_their_cache_writes(student_file: str, cache_file: str) -> None:
    student, cache = load_config(CONFIGS / student_file), load_config(CONFIGS / cache_file)
    assert student.model.kind == "camera" and student.student.recipe == "focal"
    assert student.student.store == cache.store.url and student.grid == cache.grid
    recipe = build_recipe(student)
    assert set(recipe.expects) == {"lidar_bev", "boxes"} and "lidar" in cache.cache.teachers
    teacher = load_config(CONFIGS.parent / dict(cache.cache.teacher_configs)["lidar"])
    assert recipe.expects["lidar_bev"] == (teacher.model.bev_channels, *cache.grid.bev_shape)


def test_train_student_runs_focal_semi_supervised_and_best_loads_as_a_plain_student(
    tiny_nuscenes: Path, tmp_path: Path
) -> None:
    from bevkd.models.camera_student import CameraStudent
    from bevkd.models.checkpoint import load_checkpoint, load_model
    from bevkd.stages import train_student

    root, _, url = cached_world(
        tiny_nuscenes, tmp_path / "world", "cache.teachers=[lidar]",
        "cache.splits=[train, val, unlabeled]",
    )  # fmt: skip
    out = tmp_path / "focal"
    cfg = small_config(
        root, "model.kind=camera", "student.recipe=focal", f"student.store={url}",
        "student.bev_channels=8", "student.unlabeled=true", "distill.region_score=0.05",
        "train.epochs=1", f"train.out_dir={out}", "train.log_every=1",
    )  # fmt: skip
    result = train_student.run(cfg)
    assert result.steps == 3  # 3 labelled + 3 unlabelled frames, 2 per step
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "kd_mgd" in r]
    assert steps and all(r["kd_mgd"] > 0 and r["kd_points"] > 0 for r in steps), steps
    # The align conv (8 -> the store's 16 channels) and the generator trained with the
    # student and resume from last.pt; best.pt is the student alone.
    rest = load_checkpoint(out / "last.pt")["objective"]
    assert {"recipe.align.weight", "recipe.generator.0.weight", "recipe.generator.2.weight"} <= set(
        rest
    )
    model, _, _ = load_model(out / "best.pt")
    assert isinstance(model, CameraStudent)
    assert not any(k.startswith("recipe.") for k in model.state_dict())
