"""BEV augmentation of cached teacher fields, by kind.

A sample's ``bev_aug`` (4x4, ego -> augmented ego, :func:`bevkd.pipeline.geometry.bev_transform`)
moves every cached field the same way the student's inputs moved:

- Flips and 90-degree rotations on a grid centred on the ego origin are pure index
  permutations (``np.flip`` / transpose): bit-exact.
- Other angles, scales and translations resample: the output cell centre ``p'`` reads the
  input at ``A^-1 p'`` bilinearly. Cells that read outside the grid get 0 (features,
  embeddings, probability heatmaps, regression) or the channel minimum (heatmap logits:
  background, not the 0.5 that logit 0 would mean).
- ``box_regression`` channels are transformed, not only moved: offsets become absolute box
  centres, which are transformed and re-expressed relative to the output cell (so decoded
  centres land where the transformed boxes are; after resampling an offset may leave
  [0, 1) when the centre lies in a neighbouring cell); (cos, sin) of yaw and (vx, vy) are
  rotated/reflected (velocity also scaled); log l/w gain log(scale); z and log h follow the
  transform's z scale.

Image-space augmentation is not in ``bev_aug``, so it leaves every field unchanged.
"""

from __future__ import annotations

import numpy as np

from bevkd.pipeline.geometry import BEVGrid, transform_boxes
from bevkd.storage.schema import BOX_ROW_CHANNELS, REGRESSION_CHANNELS, StoreError

_EPS = 1e-6


def transform_field(
    array: np.ndarray,
    kind: str,
    bev_aug: np.ndarray,
    grid: BEVGrid,
    channel_map: tuple[str, ...] = (),
    heatmap_activation: str = "logits",
) -> np.ndarray:
    """Apply ``bev_aug`` (4x4) to one frame's field ``(C, H, W)`` living on ``grid``."""
    aug = np.asarray(bev_aug, dtype=np.float64)
    if kind == "boxes":
        return transform_boxes_rows(array, aug)
    if np.allclose(aug, np.eye(4), atol=_EPS):
        return array
    if array.shape[1:] != grid.shape:
        raise StoreError(
            f"a {kind} of spatial shape {array.shape[1:]} is not on the grid {grid.shape}"
        )
    exact = _exact_permutation(aug, grid)
    if kind == "box_regression":
        return _transform_regression(array, aug, grid, channel_map or REGRESSION_CHANNELS, exact)
    if exact is not None:
        return _permute(array, *exact)
    if kind == "heatmap" and heatmap_activation == "logits":
        cval = array.reshape(array.shape[0], -1).min(axis=1)
    else:
        cval = np.zeros(array.shape[0], np.float32)
    return _resample(array, aug, grid, cval)


def transform_boxes_rows(rows: np.ndarray, bev_aug: np.ndarray) -> np.ndarray:
    """``(N, 11)`` box rows (9 box values, score, label): boxes moved, score/label kept."""
    rows = np.asarray(rows, dtype=np.float32).reshape(-1, len(BOX_ROW_CHANNELS))
    out = rows.copy()
    out[:, :9] = transform_boxes(rows[:, :9].astype(np.float64), np.asarray(bev_aug, np.float64))
    return out


# ------------------------------------------------------------------------------------------
# Exact path: signed permutations of the x-y axes on an origin-centred grid
# ------------------------------------------------------------------------------------------


def _exact_permutation(aug: np.ndarray, grid: BEVGrid) -> tuple[bool, int, int] | None:
    """(swap x/y, sign of the new x, sign of the new y) if ``aug`` permutes cells exactly."""
    lin = aug[:2, :2]
    if np.abs(aug[:2, 3]).max() > _EPS or abs(aug[2, 2] - 1) > _EPS or abs(aug[2, 3]) > _EPS:
        return None
    if (
        not np.allclose(np.abs(lin), np.round(np.abs(lin)), atol=_EPS)
        or abs(abs(np.linalg.det(lin)) - 1) > _EPS
    ):
        return None
    centred = abs(grid.x_min + grid.x_max) < _EPS and abs(grid.y_min + grid.y_max) < _EPS
    if not centred:
        return None
    swap = abs(lin[0, 0]) < 0.5
    if swap and grid.H != grid.W:
        return None
    if swap:  # x' = a*y, y' = b*x
        return True, int(np.sign(lin[0, 1])), int(np.sign(lin[1, 0]))
    return False, int(np.sign(lin[0, 0])), int(np.sign(lin[1, 1]))


def _permute(array: np.ndarray, swap: bool, sign_x: int, sign_y: int) -> np.ndarray:
    """Output cell (i', j') <- input cell under x' = sx*x, y' = sy*y (or the swapped form)."""
    if not swap:
        return np.ascontiguousarray(array[:, ::sign_y, ::sign_x])
    # x' = a*y, y' = b*x: output column j' reads input row r(j'), output row i' input column s(i').
    return np.ascontiguousarray(array.swapaxes(1, 2)[:, ::sign_y, ::sign_x])


# ------------------------------------------------------------------------------------------
# Resampling path
# ------------------------------------------------------------------------------------------


def _source_ij(aug: np.ndarray, grid: BEVGrid) -> np.ndarray:
    """``(H, W, 2)`` continuous input (row, col) read by each output cell (centres at .5)."""
    inv = np.linalg.inv(aug)
    xy = grid.cell_centers()  # output cell centres, augmented frame
    src = xy @ inv[:2, :2].T + inv[:2, 3]
    return grid.xy_to_ij(src)


def _resample(array: np.ndarray, aug: np.ndarray, grid: BEVGrid, cval: np.ndarray) -> np.ndarray:
    """Bilinear read of every channel at the inverse-mapped output cell centres."""
    ij = _source_ij(aug, grid) - 0.5  # integer = input cell centre
    return _bilinear(array, ij[..., 0], ij[..., 1], np.asarray(cval, array.dtype))


def _bilinear(
    array: np.ndarray, rows: np.ndarray, cols: np.ndarray, cval: np.ndarray
) -> np.ndarray:
    channels, height, width = array.shape
    r0, c0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    flat = array.reshape(channels, -1)
    out = np.zeros((channels, *rows.shape), np.result_type(array.dtype, np.float32))
    fr, fc = (rows - r0).astype(out.dtype), (cols - c0).astype(out.dtype)
    for dr, dc, weight in (
        (0, 0, (1 - fr) * (1 - fc)),
        (0, 1, (1 - fr) * fc),
        (1, 0, fr * (1 - fc)),
        (1, 1, fr * fc),
    ):
        r, c = r0 + dr, c0 + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        idx = np.where(inside, r, 0) * width + np.where(inside, c, 0)
        values = flat[:, idx.reshape(-1)].reshape(channels, *rows.shape)
        values = np.where(inside[None], values, cval[:, None, None])
        out += weight[None] * values
    return out


# ------------------------------------------------------------------------------------------
# Box regression: channels with geometric meaning
# ------------------------------------------------------------------------------------------


def _transform_regression(array: np.ndarray, aug: np.ndarray, grid: BEVGrid, channel_map: tuple[str, ...],
                          exact: tuple[bool, int, int] | None) -> np.ndarray:  # fmt: skip
    ch = {name: k for k, name in enumerate(channel_map)}
    if missing := [n for n in REGRESSION_CHANNELS if n not in ch]:
        raise StoreError(f"box_regression channel map lacks {missing}; it has {list(channel_map)}")
    work = np.array(array, dtype=np.float64, copy=True)  # absolute centres need float64
    # Offsets -> absolute centres (metres) in the input grid, which move as points do.
    rows, cols = np.meshgrid(np.arange(grid.H), np.arange(grid.W), indexing="ij")
    work[ch["offset_x"]] = grid.x_min + (cols + array[ch["offset_x"]]) * grid.cell
    work[ch["offset_y"]] = grid.y_min + (rows + array[ch["offset_y"]]) * grid.cell
    coverage = None
    if exact is not None:
        moved = _permute(work, *exact)
    else:
        # Renormalise by how much of each bilinear footprint fell inside the input grid, so
        # border cells are not pulled towards 0 (an absolute centre of 0 m means nothing).
        with_ones = np.concatenate([work, np.ones((1, grid.H, grid.W))])
        resampled = _resample(with_ones, aug, grid, np.zeros(len(with_ones)))
        coverage = resampled[-1]
        moved = resampled[:-1] / np.maximum(coverage, _EPS)[None]
    lin = aug[:2, :2]
    scale = float(np.sqrt(abs(np.linalg.det(lin))))
    out = moved.copy()
    x, y = moved[ch["offset_x"]], moved[ch["offset_y"]]
    cx = lin[0, 0] * x + lin[0, 1] * y + aug[0, 3]
    cy = lin[1, 0] * x + lin[1, 1] * y + aug[1, 3]
    out_rows, out_cols = np.meshgrid(np.arange(grid.H), np.arange(grid.W), indexing="ij")
    out[ch["offset_x"]] = (cx - grid.x_min) / grid.cell - out_cols
    out[ch["offset_y"]] = (cy - grid.y_min) / grid.cell - out_rows
    out[ch["z"]] = aug[2, 2] * moved[ch["z"]] + aug[2, 3]
    out[ch["log_l"]] = moved[ch["log_l"]] + np.log(scale)
    out[ch["log_w"]] = moved[ch["log_w"]] + np.log(scale)
    out[ch["log_h"]] = moved[ch["log_h"]] + np.log(abs(aug[2, 2]))
    rot = lin / scale  # rotation or reflection: directions keep unit length
    cos, sin = moved[ch["cos_yaw"]], moved[ch["sin_yaw"]]
    out[ch["cos_yaw"]] = rot[0, 0] * cos + rot[0, 1] * sin
    out[ch["sin_yaw"]] = rot[1, 0] * cos + rot[1, 1] * sin
    vx, vy = moved[ch["vx"]], moved[ch["vy"]]
    out[ch["vx"]] = lin[0, 0] * vx + lin[0, 1] * vy
    out[ch["vy"]] = lin[1, 0] * vx + lin[1, 1] * vy
    if coverage is not None:
        out[:, coverage < _EPS] = 0.0  # read entirely outside the input: no prediction there
    return out.astype(np.float32)
