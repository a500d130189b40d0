"""``show``: draw one frame of a store (feature energy, heatmaps, cached boxes over GT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bevkd.pipeline.geometry import bev_corners
from bevkd.storage.reader import TeacherStore
from bevkd.storage.schema import StoreError, field_grid


def render_frame(store: TeacherStore, frame: int | str, out: str | Path, gt_boxes: np.ndarray | None = None,
                 score_threshold: float = 0.3) -> Path:  # fmt: skip
    """Write a PNG: one panel per spatial field (feature energy = channel RMS; heatmaps as the
    max class probability), cached boxes (score >= threshold, orange) and GT (N, 9+) in green."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    i = store.index_of(frame) if isinstance(frame, str) else int(frame)
    data = store.read_frame(i)
    contract = store.contract
    panels = [
        s
        for s in contract.fields
        if s.name in data and s.kind in ("bev_feature", "embedding", "heatmap")
    ]
    box_rows = [data[s.name] for s in contract.fields if s.kind == "boxes" and s.name in data]
    cached = np.concatenate(box_rows) if box_rows else np.zeros((0, 11), np.float32)
    cached = cached[cached[:, 9] >= score_threshold]
    if not panels:
        raise StoreError(f"{store.url}: frame {i} has no BEV field to draw")
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, spec in zip(axes.flat, panels, strict=False):
        value = data[spec.name]
        if spec.kind == "heatmap":
            probs = 1 / (1 + np.exp(-value)) if spec.heatmap_activation == "logits" else value
            image, label = probs.max(axis=0), "max class probability"
        else:
            image, label = np.sqrt((value.astype(np.float64) ** 2).mean(axis=0)), "channel RMS"
        g = field_grid(contract.grid, spec)
        shown = ax.imshow(
            image, origin="lower", extent=(g.x_min, g.x_max, g.y_min, g.y_max), cmap="magma"
        )
        fig.colorbar(shown, ax=ax, fraction=0.046, label=label)
        draw_bev_boxes(ax, cached[:, :9], "orange")
        if gt_boxes is not None and len(gt_boxes):
            draw_bev_boxes(ax, np.asarray(gt_boxes, np.float64)[:, :9], "lime")
        ax.set_xlim(g.x_min, g.x_max)  # GT beyond the grid would stretch the axes
        ax.set_ylim(g.y_min, g.y_max)
        ax.set_title(f"{spec.name} ({spec.kind})", fontsize=9)
        ax.set_xlabel("x forward (m)")
        ax.set_ylabel("y left (m)")
    fig.suptitle(
        f"frame {i} token {store.tokens[i]} split {store.splits[i]}: {len(cached)} cached boxes "
        f"(score >= {score_threshold}, orange)" + (", GT green" if gt_boxes is not None else ""),
        fontsize=10,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def draw_bev_boxes(ax: object, boxes: np.ndarray, color: str) -> None:
    """Footprint outlines of boxes (N, >=7) on a matplotlib axis, with a tick from the centre to
    the front edge (the heading)."""
    for corners in bev_corners(boxes):
        loop = np.vstack([corners, corners[:1]])
        ax.plot(loop[:, 0], loop[:, 1], color=color, linewidth=1.0)  # type: ignore[attr-defined]
        front = corners[[0, 3]].mean(axis=0)  # front edge midpoint: heading tick
        centre = corners.mean(axis=0)
        ax.plot([centre[0], front[0]], [centre[1], front[1]], color=color, linewidth=1.0)  # type: ignore[attr-defined]
