"""Figures of 3D detections for ``bevkd evaluate``: a BEV view and the camera images (PNG).

Boxes are ``(N, 9)`` ego-frame rows ``(x, y, z, l, w, h, yaw, vx, vy)`` (x forward, y left,
z the box centre height), as :mod:`bevkd.pipeline.geometry` defines them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bevkd.datasets.augment import intrinsics_4x4
from bevkd.datasets.depth import project_points
from bevkd.pipeline.geometry import BOX_DIM, BEVGrid, box_corners
from bevkd.storage.show import draw_bev_boxes

if TYPE_CHECKING:
    from bevkd.datasets.frame import Frame

PREDICTION_COLOR = "deepskyblue"
GT_COLOR = "lime"
TEACHER_COLOR = "orange"
MIN_DEPTH = 0.1  # metres in front of the camera every corner must be, to be drawn
# The 12 edges of box_corners' order: front face 0-3, back face 4-7, then front to back.
_EDGES = [(f + i, f + (i + 1) % 4) for f in (0, 4) for i in range(4)] + [
    (i, i + 4) for i in range(4)
]


def draw_bev(out: str | Path, grid: BEVGrid, boxes: np.ndarray, scores: np.ndarray,
             gt_boxes: np.ndarray | None = None,
             teacher_boxes: np.ndarray | None = None, score_threshold: float = 0.3,
             heatmap: np.ndarray | None = None, title: str = "") -> Path:  # fmt: skip
    """Write a top-down PNG of one frame and return its path (parent folders are created).

    ``boxes``: (N, 9) predictions, ``scores``: (N,); one colour per source (the class is not
    shown in BEV), and only predictions with score >= ``score_threshold`` are drawn. ``gt_boxes``: (M, >=9), green.
    ``teacher_boxes``: (T, 11) store rows (9 box values, score, label), orange, thresholded too.
    ``heatmap``: (H, W) drawn underneath over the grid's extent (rows along y, columns x).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    shown = []  # drawn in this order: predictions last, on top
    if gt_boxes is not None:
        shown.append((GT_COLOR, _as_boxes(gt_boxes), "GT"))
    if teacher_boxes is not None:
        rows = np.asarray(teacher_boxes, np.float64).reshape(-1, 11)
        rows = rows[rows[:, 9] >= score_threshold]
        shown.append((TEACHER_COLOR, rows[:, :BOX_DIM], f"teacher >= {score_threshold:g}"))
    keep = np.asarray(scores) >= score_threshold
    shown.append((PREDICTION_COLOR, _as_boxes(boxes)[keep], f"prediction >= {score_threshold:g}"))
    extent = (grid.x_min, grid.x_max, grid.y_min, grid.y_max)
    fig, ax = plt.subplots(figsize=(7, 7))
    if heatmap is not None:
        image = ax.imshow(heatmap, origin="lower", extent=extent, cmap="magma")
        fig.colorbar(image, ax=ax, fraction=0.046, label="heatmap")
    for color, drawn, _ in shown:
        draw_bev_boxes(ax, drawn, color)
    handles = [Line2D([], [], color=c, label=f"{name}: {len(b)}") for c, b, name in shown]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.set_xlim(grid.x_min, grid.x_max)  # boxes beyond the grid would stretch the axes
    ax.set_ylim(grid.y_min, grid.y_max)
    ax.set_aspect("equal")
    ax.set_xlabel("x forward (m)")
    ax.set_ylabel("y left (m)")
    ax.set_title(title, fontsize=10)
    return _save(fig, out)


def draw_cameras(out: str | Path, frame: Frame, boxes: np.ndarray, scores: np.ndarray,
                 labels: np.ndarray, classes: Sequence[str], gt_boxes: np.ndarray | None = None,
                 score_threshold: float = 0.3) -> Path:  # fmt: skip
    """Write one panel per camera of ``frame`` with the boxes projected into its image.

    ``boxes``: (N, 9) ego-frame predictions, ``scores``: (N,), ``labels``: (N,) ids into
    ``classes``; those with score >= ``score_threshold`` are drawn with class and score.
    ``gt_boxes``: (M, >=9), green. A box is drawn in a camera only if all 8 corners are at least
    :data:`MIN_DEPTH` in front of it and its projection overlaps the image.
    Raises :class:`~bevkd.pipeline.errors.DataError` naming an image that cannot be read.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bevkd.datasets.loading import describe, open_image

    keep = np.asarray(scores) >= score_threshold
    predictions = _as_boxes(boxes)[keep]
    texts = [
        f"{_class_name(classes, label)} {score:.2f}"
        for label, score in zip(np.asarray(labels)[keep], np.asarray(scores)[keep], strict=True)
    ]
    gt = _as_boxes(gt_boxes) if gt_boxes is not None else _as_boxes(np.zeros((0, BOX_DIM)))
    images = [open_image(cam.image_path, describe(frame)) for cam in frame.cameras]
    cols = min(len(images), 3) or 1
    rows = max(-(-len(images) // cols), 1)
    aspect = max((im.height / im.width for im in images), default=0.75)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.0 * cols, (4.0 * aspect + 0.4) * rows), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, cam, image in zip(axes.flat, frame.cameras, images, strict=False):
        ax.imshow(image)
        for drawn, color, captions in (
            (gt, GT_COLOR, None),
            (predictions, PREDICTION_COLOR, texts),
        ):
            pixels, depth = project_box_corners(drawn, cam.cam2ego, cam.cam2img)
            for i in np.flatnonzero(in_view(pixels, depth, image.width, image.height)):
                for a, b in _EDGES:
                    ax.plot(*pixels[i, [a, b]].T, color=color, linewidth=1.0)
                if captions is not None:
                    u, v = pixels[i, np.argmin(pixels[i, :, 1])]  # above the box's top corner
                    ax.text(u, v, captions[i], color=color, fontsize=6, clip_on=True)
        ax.set_xlim(0, image.width)
        ax.set_ylim(image.height, 0)
        ax.set_title(cam.name, fontsize=9)
    fig.suptitle(f"{describe(frame)}: {len(predictions)} predictions (score >= "
                 f"{score_threshold:g}, blue)" + (", GT green" if gt_boxes is not None else ""),
                 fontsize=9)  # fmt: skip
    return _save(fig, out)


def project_box_corners(
    boxes: np.ndarray, cam2ego: np.ndarray, cam2img: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Project the 8 corners of ego-frame boxes ``(N, >=9)`` into a camera.

    ``cam2ego``: 4x4, camera (x right, y down, z forward) -> ego. ``cam2img``: 3x3 intrinsics,
    or a 3x4 / 4x4 projection (padded to 4x4 with the identity). Returns ``(N, 8, 2)`` pixel
    (u, v) and ``(N, 8)`` depth (camera z, metres); pixels of corners behind are meaningless.
    """
    corners = box_corners(_as_boxes(boxes))  # (N, 8, 3)
    uvd = project_points(
        corners.reshape(-1, 3), np.asarray(cam2ego, np.float64), intrinsics_4x4(cam2img)
    )
    uvd = uvd.reshape(*corners.shape[:2], 3)
    return uvd[..., :2], uvd[..., 2]


def in_view(pixels: np.ndarray, depth: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(N,)`` bool: boxes whose 8 corners (``(N, 8, 2)`` pixels, ``(N, 8)`` depth) are all
    :data:`MIN_DEPTH` in front of the camera and whose projected extent overlaps the image."""
    if len(pixels) == 0:
        return np.zeros((0,), dtype=bool)
    front = (depth > MIN_DEPTH).all(axis=1)
    lo, hi = pixels.min(axis=1), pixels.max(axis=1)
    overlaps = (lo[:, 0] < width) & (hi[:, 0] >= 0) & (lo[:, 1] < height) & (hi[:, 1] >= 0)
    return front & overlaps


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    """``(N, >=9)`` -> ``(N, 9)`` float64 (GT and store rows carry extra columns)."""
    array = np.asarray(boxes, np.float64)
    return array.reshape(len(array), -1)[:, :BOX_DIM] if array.size else np.zeros((0, BOX_DIM))


def _class_name(classes: Sequence[str], label: int) -> str:
    return classes[int(label)] if 0 <= int(label) < len(classes) else f"class {int(label)}"


def _save(fig: Any, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
