"""A teacher that is exactly covariant with BEV augmentation, for the online/cached equivalence
tests.

A learned CNN is not equivariant to flips or rotations (its kernels are not symmetric), so
"warp the cached output" and "run the teacher on the moved input" differ by the teacher's own
asymmetry, whatever the warp does. This oracle removes that term: it reads the frame's GT
boxes (moved with the points by the sample's ``bev_aug``) and draws

- ``lidar_bev`` (C, H, W) and ``heatmap`` (K, H, W, logits of probabilities peaking at
  ``HEATMAP_PEAK``): per class, the sum of isotropic gaussians at the box centres with ``sigma = SIGMA_PER_SIZE * sqrt(l * w)`` (metres, so it
  scales with the boxes); feature channel ``c`` is class ``c % K`` with sigma times
  ``1 + c // K``. ``lidar_bev_s2`` is the same on the half-resolution grid.
- ``box_regression`` (10, H, W): at every cell within ``REGION_SIGMAS`` sigmas of a box centre,
  that box (the nearest such) encoded as CenterPoint regression: offsets to its centre from
  the cell, z, log sizes, sin/cos yaw, velocity; zeros elsewhere.
- boxes: the real CenterPoint decoder (``bevkd.models.box_coder.decode``) on that head.

Every one of these is a function of the scene geometry only: moving the input by ``A`` gives
the output of the unmoved input read at ``A^-1 p``. So on a flip or right-angle rotation the
online output equals the permuted cached one exactly, and on any other angle or scale the two
differ only by the store's bilinear resampling (:func:`heatmap_bound`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bevkd.datasets.frame import Batch
from bevkd.models import box_coder
from bevkd.models.outputs import HeadOutput, TeacherOutput
from bevkd.pipeline.config import HeadConfig
from bevkd.pipeline.geometry import BEVGrid

SIGMA_PER_SIZE = 1.0
REGION_SIGMAS = 2.0
# Heatmap gaussians peak at this probability: sums of overlapping ones stay below 1 (a clamp
# there would not be smooth, and the resampling bound needs smooth), and scores of different
# boxes stay apart (no clamp
# at 1 making ties that NMS would break by cell order, which a flip reverses).
HEATMAP_PEAK = 0.2
EPS = 1e-6


class OracleTeacher(nn.Module):
    def __init__(self, grid: BEVGrid, num_classes: int, channels: int, head_cfg: HeadConfig) -> None:  # fmt: skip
        super().__init__()
        self.grid, self.num_classes, self.channels, self.head_cfg = (
            grid,
            num_classes,
            channels,
            head_cfg,
        )
        self.register_buffer("anchor", torch.zeros(()))  # so .to(device) has something to move
        self.eval()

    def forward(self, batch: Batch, decode: bool = False) -> TeacherOutput:
        half = BEVGrid(self.grid.x_min, self.grid.y_min, self.grid.x_max, self.grid.y_max, self.grid.cell * 2)  # fmt: skip
        heat, feat, feat2, reg = [], [], [], []
        for boxes, labels in zip(batch.gt_boxes, batch.gt_labels, strict=True):
            boxes, labels = boxes.double(), labels.long()
            heat.append(HEATMAP_PEAK * self._gaussians(boxes, labels, self.grid, self.num_classes))
            feat.append(self._gaussians(boxes, labels, self.grid, self.channels))
            feat2.append(self._gaussians(boxes, labels, half, 2 * self.channels))
            reg.append(self._regression(boxes))
        prob = torch.stack(heat).clamp(EPS, 1 - EPS)
        head = HeadOutput(torch.log(prob / (1 - prob)).float(), torch.stack(reg).float())
        features = {
            "lidar_bev": torch.stack(feat).float(),
            "lidar_bev_s2": torch.stack(feat2).float(),
        }
        detections = box_coder.decode(head, self.grid, self.head_cfg) if decode else []
        return TeacherOutput(features, head, detections)

    def _gaussians(self, boxes: torch.Tensor, labels: torch.Tensor, grid: BEVGrid, channels: int) -> torch.Tensor:  # fmt: skip
        xy = torch.as_tensor(grid.cell_centers(), dtype=torch.float64)  # (H, W, 2)
        out = torch.zeros((channels, *grid.shape), dtype=torch.float64)
        sigma = SIGMA_PER_SIZE * torch.sqrt(boxes[:, 3] * boxes[:, 4])
        for c in range(channels):
            k, widen = c % self.num_classes, 1 + c // self.num_classes
            for b in torch.nonzero(labels == k).flatten().tolist():
                d2 = ((xy - boxes[b, :2]) ** 2).sum(-1)
                out[c] += torch.exp(-d2 / (2 * (widen * sigma[b]) ** 2))
        return out

    def _regression(self, boxes: torch.Tensor) -> torch.Tensor:
        grid = self.grid
        xy = torch.as_tensor(grid.cell_centers(), dtype=torch.float64)
        reg = torch.zeros((10, *grid.shape), dtype=torch.float64)
        if len(boxes) == 0:
            return reg
        d = torch.sqrt(((xy[None] - boxes[:, None, None, :2]) ** 2).sum(-1))  # (N, H, W)
        reach = REGION_SIGMAS * SIGMA_PER_SIZE * torch.sqrt(boxes[:, 3] * boxes[:, 4])
        scaled = torch.where(d < reach[:, None, None], d / reach[:, None, None], math.inf)
        nearest = scaled.argmin(0)
        inside = torch.isfinite(scaled.min(0).values)
        rows, cols = torch.meshgrid(torch.arange(grid.H), torch.arange(grid.W), indexing="ij")
        b = boxes[nearest]  # (H, W, 9)
        values = [
            (b[..., 0] - grid.x_min) / grid.cell - cols,
            (b[..., 1] - grid.y_min) / grid.cell - rows,
            b[..., 2], torch.log(b[..., 3]), torch.log(b[..., 4]), torch.log(b[..., 5]),
            torch.sin(b[..., 6]), torch.cos(b[..., 6]),
            torch.nan_to_num(b[..., 7]), torch.nan_to_num(b[..., 8]),
        ]  # fmt: skip
        for ch, value in enumerate(values):
            reg[ch] = torch.where(inside, value, 0.0)
        return reg

    def region(self, boxes: torch.Tensor) -> torch.Tensor:
        """(H, W) cells that hold a box's regression (zeros elsewhere mean "no box", which no
        augmentation moves: the warp turns an offset of 0 into 1 under a flip)."""
        xy = torch.as_tensor(self.grid.cell_centers(), dtype=torch.float64)
        boxes = boxes.double()
        d = torch.sqrt(((xy[None] - boxes[:, None, None, :2]) ** 2).sum(-1))
        reach = REGION_SIGMAS * SIGMA_PER_SIZE * torch.sqrt(boxes[:, 3] * boxes[:, 4])
        return (d < reach[:, None, None]).any(0)

    def region_core(self, boxes: torch.Tensor, margin_cells: float) -> torch.Tensor:
        """(H, W) cells more than ``margin_cells`` inside one box's regression region and
        outside every other's reach: where a bilinear read touches only that box's values."""
        xy = torch.as_tensor(self.grid.cell_centers(), dtype=torch.float64)
        boxes = boxes.double()
        if len(boxes) == 0:
            return torch.zeros(self.grid.shape, dtype=torch.bool)
        d = torch.sqrt(((xy[None] - boxes[:, None, None, :2]) ** 2).sum(-1))
        reach = REGION_SIGMAS * SIGMA_PER_SIZE * torch.sqrt(boxes[:, 3] * boxes[:, 4])
        margin = margin_cells * self.grid.cell
        core = d < (reach[:, None, None] - margin)
        near = d < (reach[:, None, None] + margin)
        return core.any(0) & (near.sum(0) == 1)


def heatmap_bound(boxes: torch.Tensor, labels: torch.Tensor, grid: BEVGrid, channels: int,
                  num_classes: int, peak: float = 1.0, scale: float = 1.0) -> torch.Tensor:  # fmt: skip
    """(channels, H, W) bound on |bilinear read - exact value| of :meth:`OracleTeacher._gaussians`.

    Bilinear interpolation on a cell of side h is linear interpolation along each axis, whose
    error is at most ``h^2 / 8 * max |f''|`` per axis. For ``g = exp(-r^2 / (2 s^2))``,
    ``d2g/dx2 = g (x^2 / s^2 - 1) / s^2`` and ``|d2g/dx2| <= 1 / s^2`` everywhere (the maximum,
    at the centre; ``x^2 e^{-x^2/2}`` never exceeds ``2/e < 1``). With s in cells the bound of a
    sum of gaussians is the sum over the gaussians of ``2 * 1 / (8 s^2) = 1 / (4 s^2)``; a
    gaussian whose centre is more than 6 s from the cell contributes ``36 e^{-18} / s^2`` at
    most, counted as 1e-6. ``boxes`` are in the frame the values are compared in, moved by an
    augmentation of BEV ``scale``: the interpolation runs on the *input* grid, where sigma in
    cells is the moved one divided by ``scale``. ``peak``: the gaussians' height (the
    heatmap's is :data:`HEATMAP_PEAK`)."""
    xy = torch.as_tensor(grid.cell_centers(), dtype=torch.float64)
    out = torch.full((channels, *grid.shape), 0.0, dtype=torch.float64)
    boxes = boxes.double()
    sigma = SIGMA_PER_SIZE * torch.sqrt(boxes[:, 3] * boxes[:, 4]) / (grid.cell * scale)
    for c in range(channels):
        k, widen = c % num_classes, 1 + c // num_classes
        for b in torch.nonzero(labels == k).flatten().tolist():
            s = widen * sigma[b]
            d = torch.sqrt(((xy - boxes[b, :2]) ** 2).sum(-1)) / (grid.cell * scale)
            out[c] += torch.where(d < 6 * s + 2, 1.0 / (4 * s * s), 1e-6)
    return peak * out
