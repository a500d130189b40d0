"""What a camera student can see: the BEV cells and boxes inside its cameras' horizontal field
of view (``data.fov_only``).

A student with fewer cameras than the LiDAR covers (Waymo's front camera: CMKD #12) cannot
detect what no camera sees, so with ``data.fov_only`` the GT boxes outside the field of view
are dropped, the teacher's cached targets are masked to it, and evaluation scores only the
boxes inside it (GT and detections alike).

A ground point ``(x, y)`` is seen by a camera when the point ``(x, y, h)``, at the camera's own
height ``h`` in the ego frame, lies in front of the camera (depth >= ``MIN_DEPTH``) and
projects inside the image's columns: that is the camera's horizontal wedge, whatever its pitch.
It works in the augmented ego frame too (``cam2ego`` already holds the BEV augmentation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bevkd.pipeline.geometry import BEVGrid

MIN_DEPTH = 0.5  # metres in front of the camera; nearer points are behind its near plane


def visible(
    xy: np.ndarray, cam2img: np.ndarray, cam2ego: np.ndarray, widths: Sequence[int]
) -> np.ndarray:
    """``(N,)`` bool: ground points ``xy`` (N, 2) seen by at least one camera.

    ``cam2img``: (K, 3, 3) or (K, 4, 4) intrinsics of images ``widths[k]`` pixels wide;
    ``cam2ego``: (K, 4, 4) camera -> ego (OpenCV camera axes: z forward)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    seen = np.zeros(len(xy), dtype=bool)
    for intrinsics, extrinsic, width in zip(
        np.asarray(cam2img, np.float64), np.asarray(cam2ego, np.float64), widths, strict=True
    ):
        ego = np.column_stack([xy, np.full(len(xy), extrinsic[2, 3]), np.ones(len(xy))])
        cam = (ego @ np.linalg.inv(extrinsic).T)[:, :3]
        depth = cam[:, 2]
        front = depth >= MIN_DEPTH
        u = (cam @ intrinsics[:3, :3].T)[:, 0] / np.where(front, depth, 1.0)
        seen |= front & (u >= 0) & (u < width)
    return seen


def cell_mask(
    grid: BEVGrid, cam2img: np.ndarray, cam2ego: np.ndarray, widths: Sequence[int]
) -> np.ndarray:
    """``(H, W)`` bool: the cells of ``grid`` whose centre some camera sees."""
    centres = grid.cell_centers().reshape(-1, 2)
    return visible(centres, cam2img, cam2ego, widths).reshape(grid.shape)


def mask_targets(
    targets: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    grids: Mapping[str, BEVGrid],
    cam2img: np.ndarray,
    cam2ego: np.ndarray,
    widths: Sequence[int],
    logits: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """The teacher's targets of one frame (already moved by its BEV augmentation) masked to the
    cameras' view: outside it, heatmaps hold background (each channel's minimum for the fields
    named in ``logits``, stored as logits; else probability 0), features, embeddings and box
    regressions 0, and ``boxes`` rows (x, y first) are dropped. ``kinds``: field -> kind;
    ``grids``: field -> the grid a spatial field lives on."""
    out: dict[str, np.ndarray] = {}
    masks: dict[tuple[int, int], np.ndarray] = {}
    for name, value in targets.items():
        if kinds[name] == "boxes":
            out[name] = value[visible(value[:, :2], cam2img, cam2ego, widths)]
            continue
        grid = grids[name]
        if grid.shape not in masks:
            masks[grid.shape] = cell_mask(grid, cam2img, cam2ego, widths)
        inside = masks[grid.shape]
        if kinds[name] == "heatmap" and name in logits:
            fill = value.reshape(value.shape[0], -1).min(axis=1)[:, None, None]
        else:
            fill = np.zeros((value.shape[0], 1, 1), value.dtype)
        out[name] = np.where(inside[None], value, fill).astype(value.dtype, copy=False)
    return out
