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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bevkd.datasets.augment import intrinsics_4x4
from bevkd.datasets.depth import project_points
from bevkd.pipeline.geometry import BEVGrid
from bevkd.storage.schema import StoreContract, field_grid

MIN_DEPTH = 0.5  # metres in front of the camera; nearer points are behind its near plane


def visible(
    xy: np.ndarray, cam2img: np.ndarray, cam2ego: np.ndarray, widths: Sequence[int]
) -> np.ndarray:
    """``(N,)`` bool: ground points ``xy`` (N, 2) seen by at least one camera.

    ``cam2img``: (K, 3, 3) or (K, 4, 4) intrinsics of images ``widths[k]`` pixels wide;
    ``cam2ego``: (K, 4, 4) camera -> ego (OpenCV camera axes: z forward), projected as the
    depth maps are (:func:`bevkd.datasets.depth.project_points`)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    seen = np.zeros(len(xy), dtype=bool)
    for intrinsics, extrinsic, width in zip(cam2img, cam2ego, widths, strict=True):
        extrinsic = np.asarray(extrinsic, np.float64)
        at_camera_height = np.column_stack([xy, np.full(len(xy), extrinsic[2, 3])])
        u, _, depth = project_points(at_camera_height, extrinsic, intrinsics_4x4(intrinsics)).T
        seen |= (depth >= MIN_DEPTH) & (u >= 0) & (u < width)
    return seen


def cell_mask(
    grid: BEVGrid, cam2img: np.ndarray, cam2ego: np.ndarray, widths: Sequence[int]
) -> np.ndarray:
    """``(H, W)`` bool: the cells of ``grid`` whose centre some camera sees."""
    centres = grid.cell_centers().reshape(-1, 2)
    return visible(centres, cam2img, cam2ego, widths).reshape(grid.shape)


def cell_masks(
    grids: Mapping[str, BEVGrid], cam2img: np.ndarray, cam2ego: np.ndarray, widths: Sequence[int]
) -> dict[str, np.ndarray]:
    """:func:`cell_mask` of every named grid, projecting each distinct grid once."""
    by_grid: dict[BEVGrid, np.ndarray] = {}
    for grid in grids.values():
        if grid not in by_grid:
            by_grid[grid] = cell_mask(grid, cam2img, cam2ego, widths)
    return {name: by_grid[grid] for name, grid in grids.items()}


def mask_targets(
    targets: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    grids: Mapping[str, BEVGrid],
    cam2img: np.ndarray,
    cam2ego: np.ndarray,
    widths: Sequence[int],
    logits: Iterable[str] = (),
) -> dict[str, np.ndarray]:
    """The teacher's targets of one frame (already moved by its BEV augmentation) masked to the
    cameras' view: outside it, heatmaps hold background (each channel's minimum for the fields
    named in ``logits``, stored as logits; else probability 0), features, embeddings and box
    regressions 0, and ``boxes`` rows (x, y first) are dropped. ``kinds``: field -> kind;
    ``grids``: field -> the grid a spatial field lives on."""
    logits = frozenset(logits)
    spatial = {name: grids[name] for name in targets if kinds[name] != "boxes"}
    inside = cell_masks(spatial, cam2img, cam2ego, widths)
    out: dict[str, np.ndarray] = {}
    for name, value in targets.items():
        if kinds[name] == "boxes":
            out[name] = value[visible(value[:, :2], cam2img, cam2ego, widths)]
            continue
        if kinds[name] == "heatmap" and name in logits:
            fill = value.reshape(value.shape[0], -1).min(axis=1)[:, None, None]
        else:
            fill = np.zeros((value.shape[0], 1, 1), value.dtype)
        out[name] = np.where(inside[name][None], value, fill).astype(value.dtype, copy=False)
    return out


@dataclass(frozen=True)
class TargetView:
    """How a store's fields are masked to a camera view, read once from its contract: each
    field's kind, the grid a spatial field lives on, and the heatmaps stored as logits."""

    kinds: Mapping[str, str]
    grids: Mapping[str, BEVGrid]
    logits: frozenset[str]

    @classmethod
    def of(cls, contract: StoreContract, names: Iterable[str]) -> TargetView:
        specs = {name: contract.field(name) for name in names}
        return cls(
            kinds={name: spec.kind for name, spec in specs.items()},
            grids={n: field_grid(contract.grid, s) for n, s in specs.items() if s.kind != "boxes"},
            logits=frozenset(
                n for n, s in specs.items()
                if s.kind == "heatmap" and (s.heatmap_activation or "logits") == "logits"
            ),
        )  # fmt: skip

    def mask(self, targets: Mapping[str, np.ndarray], cam2img: np.ndarray, cam2ego: np.ndarray,
             widths: Sequence[int]) -> dict[str, np.ndarray]:  # fmt: skip
        """:func:`mask_targets` of one frame's fields."""
        return mask_targets(targets, self.kinds, self.grids, cam2img, cam2ego, widths, self.logits)
