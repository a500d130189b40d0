"""BEV augmentation of cached fields against an exactly equivariant toy teacher, analytic
values for other angles, and the meaning of every box-regression channel."""

from __future__ import annotations

import numpy as np
import pytest

from bevkd.pipeline.geometry import (
    BEVGrid,
    bev_transform,
    transform_boxes,
    transform_points,
    wrap_angle,
)
from bevkd.storage.augment import transform_boxes_rows, transform_field
from bevkd.storage.schema import REGRESSION_CHANNELS

GRID = BEVGrid(-8.0, -8.0, 8.0, 8.0, 0.5)  # 32 x 32, centred on the ego origin
CH = {name: k for k, name in enumerate(REGRESSION_CHANNELS)}

EXACT = {
    "flip_y": bev_transform(flip_y=True),
    "flip_x": bev_transform(flip_x=True),
    "rot90": bev_transform(rotation=np.pi / 2),
    "rot180": bev_transform(rotation=np.pi),
    "rot270_flip": bev_transform(rotation=-np.pi / 2, flip_y=True),
}


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    points = np.c_[rng.uniform(-7.9, 7.9, (400, 2)), rng.uniform(-1, 1, 400)]
    boxes = np.zeros((5, 9))
    boxes[:, :2] = rng.uniform(-6, 6, (5, 2))
    boxes[:, 2] = rng.uniform(-1, 1, 5)
    boxes[:, 3:6] = rng.uniform([3, 1.5, 1.4], [5, 2, 1.9], (5, 3))
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, 5)
    boxes[:, 7:9] = rng.normal(0, 3, (5, 2))
    return points, boxes


def toy_teacher(points: np.ndarray, boxes: np.ndarray, grid: BEVGrid = GRID, spread: int = 0):
    """Pure per-cell rasterisation: a point-count feature, a Gaussian heatmap (logits) and a
    CenterPoint regression written at each box's centre cell (and ``spread`` cells around it,
    each encoding the same centre relative to itself)."""
    ij = grid.xy_to_ij(points[:, :2])
    rows, cols = np.floor(ij[:, 0]).astype(int), np.floor(ij[:, 1]).astype(int)
    feature = np.zeros((2, grid.H, grid.W), np.float32)
    np.add.at(feature[0], (rows, cols), 1.0)
    np.add.at(feature[1], (rows, cols), points[:, 2].astype(np.float32))
    centres = grid.cell_centers()
    d2 = ((centres[None] - boxes[:, None, None, :2]) ** 2).sum(-1).min(axis=0)
    prob = 0.9 * np.exp(-d2 / (2 * 1.0**2)) + 1e-4
    heatmap = np.log(prob / (1 - prob))[None].astype(np.float32)
    regression = np.zeros((len(REGRESSION_CHANNELS), grid.H, grid.W), np.float32)
    for box in boxes:
        r_c, c_c = grid.xy_to_ij(box[:2])
        for r in range(int(np.floor(r_c)) - spread, int(np.floor(r_c)) + spread + 1):
            for c in range(int(np.floor(c_c)) - spread, int(np.floor(c_c)) + spread + 1):
                regression[:, r, c] = [c_c - c, r_c - r, box[2], *np.log(box[3:6]), np.sin(box[6]), np.cos(box[6]), box[7], box[8]]  # fmt: skip
    return feature, heatmap, regression


def decode_at(
    regression: np.ndarray, rows: np.ndarray, cols: np.ndarray, grid: BEVGrid = GRID
) -> np.ndarray:
    """(N, 9) boxes decoded from the regression at cells (rows, cols)."""
    reg = regression[:, rows, cols].astype(np.float64)
    x = grid.x_min + (cols + reg[CH["offset_x"]]) * grid.cell
    y = grid.y_min + (rows + reg[CH["offset_y"]]) * grid.cell
    size = np.exp(reg[[CH["log_l"], CH["log_w"], CH["log_h"]]])
    yaw = np.arctan2(reg[CH["sin_yaw"]], reg[CH["cos_yaw"]])
    return np.stack([x, y, reg[CH["z"]], *size, yaw, reg[CH["vx"]], reg[CH["vy"]]], axis=1)


def _centre_cells(boxes: np.ndarray, grid: BEVGrid = GRID) -> tuple[np.ndarray, np.ndarray]:
    ij = np.floor(grid.xy_to_ij(boxes[:, :2])).astype(int)
    return ij[:, 0], ij[:, 1]


def _assert_boxes_close(got: np.ndarray, want: np.ndarray, atol: float = 1e-4) -> None:
    np.testing.assert_allclose(
        got[:, [0, 1, 2, 3, 4, 5, 7, 8]], want[:, [0, 1, 2, 3, 4, 5, 7, 8]], atol=atol
    )
    np.testing.assert_allclose(wrap_angle(got[:, 6] - want[:, 6]), 0.0, atol=atol)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_flips_and_right_angles_equal_the_teacher_on_transformed_inputs(name: str) -> None:
    aug = EXACT[name]
    points, boxes = _scene()
    feature, heatmap, regression = toy_teacher(points, boxes)
    feature_t, heatmap_t, regression_t = toy_teacher(
        transform_points(points, aug), transform_boxes(boxes, aug)
    )
    np.testing.assert_array_equal(
        transform_field(feature, "bev_feature", aug, GRID), feature_t
    )  # bit-exact
    np.testing.assert_allclose(transform_field(heatmap, "heatmap", aug, GRID), heatmap_t, atol=1e-5)
    moved = transform_field(regression, "box_regression", aug, GRID, REGRESSION_CHANNELS)
    rows, cols = _centre_cells(transform_boxes(boxes, aug))
    for k, channel in enumerate(REGRESSION_CHANNELS):  # every channel, at every object cell
        np.testing.assert_allclose(
            moved[k, rows, cols], regression_t[k, rows, cols], atol=1e-5, err_msg=channel
        )
    _assert_boxes_close(decode_at(moved, rows, cols), transform_boxes(boxes, aug))


def test_identity_and_image_space_augmentation_leave_fields_unchanged() -> None:
    feature, _, regression = toy_teacher(*_scene())
    assert transform_field(feature, "bev_feature", np.eye(4), GRID) is feature
    assert transform_field(regression, "box_regression", np.eye(4), GRID) is regression


@pytest.mark.parametrize(
    "aug", [bev_transform(rotation=0.3), bev_transform(rotation=-1.1, scale=1.08, flip_y=True)]
)
def test_other_angles_resample_linear_fields_exactly_inside(aug: np.ndarray) -> None:
    centres = GRID.cell_centers()
    field = np.stack(
        [0.3 * centres[..., 0] - 0.2 * centres[..., 1] + 1.0, np.full(GRID.shape, 2.5)]
    ).astype(np.float32)
    out = transform_field(field, "bev_feature", aug, GRID)
    source = transform_points(
        np.c_[centres.reshape(-1, 2), np.zeros(GRID.H * GRID.W)], np.linalg.inv(aug)
    )[:, :2]
    want = (0.3 * source[:, 0] - 0.2 * source[:, 1] + 1.0).reshape(GRID.shape)
    ij = GRID.xy_to_ij(source).reshape(*GRID.shape, 2) - 0.5
    inside = np.all((ij >= 0) & (ij <= GRID.H - 1), axis=-1)  # bilinear is exact for linear fields
    outside = np.any((ij < -1) | (ij > GRID.H), axis=-1)
    assert inside.sum() > 300 and outside.sum() > 20
    np.testing.assert_allclose(out[0][inside], want[inside], atol=1e-4)
    np.testing.assert_allclose(out[1][inside], 2.5, atol=1e-5)
    assert np.all(out[:, outside] == 0)  # features read nothing outside the grid


def test_heatmap_logits_fill_with_background_not_zero() -> None:
    _, heatmap, _ = toy_teacher(*_scene())
    out = transform_field(
        heatmap, "heatmap", bev_transform(rotation=0.5), GRID, heatmap_activation="logits"
    )
    corner = out[0, 0, 0]  # the rotated grid's corner reads outside the input
    assert corner == pytest.approx(heatmap.min())
    probs = np.exp(heatmap) / (1 + np.exp(heatmap))
    out_p = transform_field(
        probs, "heatmap", bev_transform(rotation=0.5), GRID, heatmap_activation="probabilities"
    )
    assert out_p[0, 0, 0] == 0.0


@pytest.mark.parametrize(
    "aug",
    [
        bev_transform(rotation=0.37),
        bev_transform(rotation=2.0, scale=0.93),
        bev_transform(rotation=-0.6, scale=1.1, flip_x=True),
    ],
)
def test_regression_channels_decode_to_the_transformed_boxes_at_any_angle(aug: np.ndarray) -> None:
    points, boxes = _scene(3)
    # Centres well apart (their 5x5 regression neighbourhoods must not overlap) and well inside.
    angles = np.linspace(0, 2 * np.pi, 5, endpoint=False) + 0.2
    boxes[:, :2] = 4.6 * np.c_[np.cos(angles), np.sin(angles)] + [0.13, -0.21]
    _, _, regression = toy_teacher(points, boxes, spread=2)
    moved = transform_field(regression, "box_regression", aug, GRID, REGRESSION_CHANNELS)
    want = transform_boxes(boxes, aug)
    rows, cols = _centre_cells(want)
    got = decode_at(moved, rows, cols)
    _assert_boxes_close(got, want, atol=1e-4)
    offsets = moved[[CH["offset_x"], CH["offset_y"]]][:, rows, cols]
    assert np.all((offsets >= -1e-5) & (offsets < 1 + 1e-5))  # the centre cell holds the centre


def test_box_rows_move_with_boxes_and_keep_score_and_label() -> None:
    _, boxes = _scene()
    rows = np.c_[boxes, np.linspace(0.1, 0.9, 5), np.arange(5)].astype(np.float32)
    aug = bev_transform(rotation=0.4, scale=1.05, flip_y=True)
    out = transform_boxes_rows(rows, aug)
    _assert_boxes_close(out[:, :9].astype(np.float64), transform_boxes(boxes, aug), atol=1e-4)
    np.testing.assert_array_equal(out[:, 9:], rows[:, 9:])
    np.testing.assert_array_equal(transform_field(rows, "boxes", aug, GRID), out)


def test_coarser_scale_fields_use_their_own_grid() -> None:
    coarse = GRID.scaled(2)
    feature, _, _ = toy_teacher(*_scene(), grid=coarse)
    aug = bev_transform(flip_y=True)
    points, boxes = _scene()
    want, _, _ = toy_teacher(
        transform_points(points, aug), transform_boxes(boxes, aug), grid=coarse
    )
    np.testing.assert_array_equal(transform_field(feature, "bev_feature", aug, coarse), want)
