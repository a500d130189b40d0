"""CenterPoint training targets and the detection loss.

Targets live on the BEV grid of :class:`bevkd.pipeline.geometry.BEVGrid` (rows along y,
columns along x). Each GT box puts a peak of 1 at the cell holding its centre, in the channel
of its class, spread by a gaussian whose radius follows CenterNet's ``gaussian_radius`` of
the box footprint in cells; its regression target (see
:data:`bevkd.models.outputs.REGRESSION_CHANNELS`) sits at that cell. Everything is
vectorised torch and runs on the device of the boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bevkd.models.outputs import REGRESSION_CHANNELS, HeadOutput
from bevkd.pipeline.config import HeadConfig
from bevkd.pipeline.geometry import BEVGrid


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the term."""


@dataclass
class HeadTargets:
    """Dense CenterPoint targets for a batch on an (H, W) grid.

    ``heatmap``: (B, K, H, W) in [0, 1], exactly 1 at box centres.
    ``regression``: (B, 10, H, W) in REGRESSION_CHANNELS order, valid where ``mask``.
    ``mask``: (B, H, W) bool, the centre cells that carry a regression target.
    """

    heatmap: torch.Tensor
    regression: torch.Tensor
    mask: torch.Tensor


def gaussian_radius(length: torch.Tensor, width: torch.Tensor, min_overlap: float) -> torch.Tensor:
    """CenterNet/CornerNet radius (in cells) of a box footprint of ``length`` x ``width`` cells.

    The smallest of the three cases (both corners inside, both outside, one of each) at
    which a shifted box still overlaps the GT by ``min_overlap`` IoU. Shapes broadcast.
    """
    h, w, o = length, width, min_overlap
    b1 = h + w
    c1 = w * h * (1 - o) / (1 + o)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - o) * w * h
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * o
    b3 = -2 * o * (h + w)
    c3 = (o - 1) * w * h
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def _centre_cells(
    boxes: torch.Tensor, labels: torch.Tensor, grid: BEVGrid, num_classes: int
) -> tuple[torch.Tensor, ...]:
    """Continuous (col, row), integer (col, row) and a validity mask of box centres."""
    col_f = (boxes[:, 0] - grid.x_min) / grid.cell
    row_f = (boxes[:, 1] - grid.y_min) / grid.cell
    col, row = torch.floor(col_f).long(), torch.floor(row_f).long()
    valid = (
        (col >= 0)
        & (col < grid.W)
        & (row >= 0)
        & (row < grid.H)
        & (labels >= 0)
        & (labels < num_classes)
    )
    return col_f, row_f, col, row, valid


def _draw(
    boxes: torch.Tensor, labels: torch.Tensor, grid: BEVGrid, num_classes: int, head_cfg: HeadConfig
) -> torch.Tensor:
    """(K, H, W) max over boxes of their class gaussians, for one sample."""
    heat = torch.zeros((num_classes, grid.H * grid.W), dtype=torch.float32, device=boxes.device)
    _, _, col, row, valid = _centre_cells(boxes, labels, grid, num_classes)
    if not bool(valid.any()):
        return heat.view(num_classes, grid.H, grid.W)
    boxes, labels, col, row = boxes[valid], labels[valid], col[valid], row[valid]
    radius = gaussian_radius(
        boxes[:, 3].float() / grid.cell, boxes[:, 4].float() / grid.cell, head_cfg.gaussian_overlap
    )
    radius = torch.clamp(
        torch.floor(radius), min=head_cfg.min_radius
    )  # CenterPoint: max(min, int(r))
    sigma = (2 * radius + 1) / 6
    rows = torch.arange(grid.H, device=boxes.device)
    cols = torch.arange(grid.W, device=boxes.device)
    dr = (rows[None, :] - row[:, None]).float()  # (N, H)
    dc = (cols[None, :] - col[:, None]).float()  # (N, W)
    gr = torch.exp(-(dr**2) / (2 * sigma[:, None] ** 2)) * (dr.abs() <= radius[:, None])
    gc = torch.exp(-(dc**2) / (2 * sigma[:, None] ** 2)) * (dc.abs() <= radius[:, None])
    gauss = (gr[:, :, None] * gc[:, None, :]).view(len(boxes), -1)  # separable: exp(a+b)
    heat.scatter_reduce_(0, labels.long()[:, None].expand_as(gauss), gauss, reduce="amax")
    return heat.view(num_classes, grid.H, grid.W)


def gaussian_heatmaps(
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    grid: BEVGrid,
    num_classes: int,
    head_cfg: HeadConfig,
) -> torch.Tensor:
    """(B, K, H, W) CenterPoint gaussian heatmaps of per-sample boxes (N_b, 9) and labels (N_b,).

    Boxes whose centre is off the grid, and labels outside [0, K), draw nothing.
    """
    return torch.stack(
        [
            _draw(b, lab, grid, num_classes, head_cfg)
            for b, lab in zip(gt_boxes, gt_labels, strict=True)
        ]
    )


def _regression_one(
    boxes: torch.Tensor, labels: torch.Tensor, grid: BEVGrid, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(10, H, W) regression map and (H, W) mask for one sample."""
    reg = torch.zeros(
        (len(REGRESSION_CHANNELS), grid.H * grid.W), dtype=torch.float32, device=boxes.device
    )
    mask = torch.zeros(grid.H * grid.W, dtype=torch.bool, device=boxes.device)
    col_f, row_f, col, row, valid = _centre_cells(boxes, labels, grid, num_classes)
    idx = torch.nonzero(valid).squeeze(1)
    if idx.numel() == 0:
        return reg.view(-1, grid.H, grid.W), mask.view(grid.H, grid.W)
    cell = row[idx] * grid.W + col[idx]
    # Two centres in one cell: the later box wins, decided explicitly so it is deterministic.
    winner = torch.full((grid.H * grid.W,), -1, dtype=torch.long, device=boxes.device)
    winner.scatter_reduce_(0, cell, idx, reduce="amax")
    idx = idx[winner[cell] == idx]
    cell = row[idx] * grid.W + col[idx]
    b = boxes[idx].float()
    velocity = torch.nan_to_num(b[:, 7:9], nan=0.0)  # nuScenes leaves some velocities NaN
    values = torch.stack(
        [
            col_f[idx].float() - col[idx],
            row_f[idx].float() - row[idx],
            b[:, 2],
            torch.log(b[:, 3]),
            torch.log(b[:, 4]),
            torch.log(b[:, 5]),
            torch.sin(b[:, 6]),
            torch.cos(b[:, 6]),
            velocity[:, 0],
            velocity[:, 1],
        ]
    )
    reg[:, cell] = values
    mask[cell] = True
    return reg.view(-1, grid.H, grid.W), mask.view(grid.H, grid.W)


def build_targets(
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    grid: BEVGrid,
    num_classes: int,
    head_cfg: HeadConfig,
) -> HeadTargets:
    """Encode per-sample GT boxes (N_b, 9) and labels (N_b,) as dense :class:`HeadTargets`."""
    heatmap = gaussian_heatmaps(gt_boxes, gt_labels, grid, num_classes, head_cfg)
    regs, masks = zip(
        *(
            _regression_one(b, lab, grid, num_classes)
            for b, lab in zip(gt_boxes, gt_labels, strict=True)
        ),
        strict=True,
    )
    return HeadTargets(heatmap, torch.stack(regs), torch.stack(masks))


def gaussian_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, gamma: float = 4.0
) -> torch.Tensor:
    """CenterNet focal loss of heatmap ``logits`` against gaussian ``target`` (same shape).

    Positives are the cells where ``target == 1``; the sum is divided by max(1, #positives).
    Computed from logits with ``logsigmoid`` so saturated logits stay finite.
    """
    prob = torch.sigmoid(logits)
    pos = target.eq(1).float()
    pos_loss = -F.logsigmoid(logits) * (1 - prob) ** alpha * pos
    neg_loss = -F.logsigmoid(-logits) * prob**alpha * (1 - target) ** gamma * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def regression_l1(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, code_weights: Sequence[float]
) -> torch.Tensor:
    """Weighted L1 of (B, 10, H, W) maps at the (B, H, W) ``mask`` cells, per box."""
    weights = torch.tensor(code_weights, dtype=pred.dtype, device=pred.device)
    if weights.numel() != pred.shape[1]:
        raise ValueError(
            f"head.code_weights has {weights.numel()} values; the regression has {pred.shape[1]} channels ({', '.join(REGRESSION_CHANNELS)})"
        )
    m = mask.unsqueeze(1).to(pred.dtype)
    err = (pred - target).abs() * m * weights.view(1, -1, 1, 1)
    return err.sum() / m.sum().clamp(min=1.0)


def check_finite(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raise :class:`NonFiniteLossError` naming the first NaN/inf term; return ``terms``."""
    for name, value in terms.items():
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteLossError(
                f"loss term '{name}' is {value.item()}: lower the learning rate or check the inputs of this batch"
            )
    return terms


def detection_loss(
    output: HeadOutput, targets: HeadTargets, head_cfg: HeadConfig
) -> dict[str, torch.Tensor]:
    """CenterPoint loss: ``heatmap`` (gaussian focal) and ``regression`` (L1), each weighted.

    The total is the sum of the returned terms.
    """
    terms = {
        "heatmap": head_cfg.heatmap_weight
        * gaussian_focal_loss(output.heatmap.float(), targets.heatmap),
        "regression": head_cfg.regression_weight
        * regression_l1(
            output.regression.float(), targets.regression, targets.mask, head_cfg.code_weights
        ),
    }
    return check_finite(terms)


def labelled_detection_loss(
    head: HeadOutput,
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    has_label: torch.Tensor,
    tokens: Sequence[str],
    grid: BEVGrid,
    num_classes: int,
    head_cfg: HeadConfig,
    allow_unlabelled: bool = False,
) -> dict[str, torch.Tensor]:
    """:func:`detection_loss` over the labelled samples of a batch only: unlabelled samples
    carry no GT, and their empty box lists would otherwise teach "nothing here". Their
    outputs are not selected, so they get exactly zero gradient from these terms.

    A batch with no labelled sample raises, unless ``allow_unlabelled`` (semi-supervised
    students), where both terms are a zero that keeps the head in the graph (DDP needs every
    parameter to take part in every step)."""
    labelled = [i for i in range(len(tokens)) if bool(has_label[i])]
    if not labelled and allow_unlabelled:
        zero = head.heatmap.sum() * 0.0 + head.regression.sum() * 0.0
        return {"heatmap": zero, "regression": zero.clone()}
    if not labelled:
        raise ValueError(
            f"batch {list(tokens)} has no labelled frames: teachers train on labelled splits only"
        )
    sel = torch.tensor(labelled, device=head.heatmap.device)
    chosen = HeadOutput(head.heatmap.index_select(0, sel), head.regression.index_select(0, sel))
    tgt = build_targets(
        [gt_boxes[i] for i in labelled],
        [gt_labels[i] for i in labelled],
        grid,
        num_classes,
        head_cfg,
    )
    return detection_loss(chosen, tgt, head_cfg)
