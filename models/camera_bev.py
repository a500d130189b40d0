"""Camera BEV branch (Lift-Splat-Shoot with BEVDepth-style depth supervision).

Per feature pixel the depth net predicts a categorical depth distribution over D bins and C
context channels; their outer product is lifted to a frustum of 3D points, moved to the ego
frame with ``cam2ego @ cam2img^-1`` and sum-pooled ("splatted") into the cells of the
:class:`~bevkd.pipeline.geometry.BEVGrid` by one vectorised ``index_add_``.

Pixel convention: the network input pixel k spans ``[k, k + 1)``; the feature (and LiDAR
depth map) cell ``(r, c)`` at stride ``s`` covers input pixels ``[c*s, (c+1)*s)``, and its
ray goes through ``((c + 0.5) s, (r + 0.5) s)``. Depth bin i spans
``[min + i*step, min + (i+1)*step)`` and is lifted at its centre.

The camera students reuse this module: it must never import spconv.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bevkd.models.image_backbone import ImageBackbone, conv_bn_relu
from bevkd.pipeline.config import Config
from bevkd.pipeline.geometry import BEVGrid

DepthBins = tuple[float, float, float]


def depth_bin_count(depth_bins: Sequence[float]) -> int:
    """Number of bins D of ``(min, max, step)``."""
    lo, hi, step = depth_bins
    return round((hi - lo) / step)


def depth_bin_centers(depth_bins: Sequence[float]) -> torch.Tensor:
    """(D,) depth in metres at which each bin is lifted."""
    lo, _, step = depth_bins
    return lo + (torch.arange(depth_bin_count(depth_bins), dtype=torch.float32) + 0.5) * step


def make_frustum(
    feature_size: tuple[int, int], stride: int, depth_bins: Sequence[float]
) -> torch.Tensor:
    """(D, h, w, 3) frustum points ``(u, v, depth)``: input pixels and metres."""
    h, w = feature_size
    depth = depth_bin_centers(depth_bins)
    v = (torch.arange(h, dtype=torch.float32) + 0.5) * stride
    u = (torch.arange(w, dtype=torch.float32) + 0.5) * stride
    d_, v_, u_ = torch.meshgrid(depth, v, u, indexing="ij")
    return torch.stack([u_, v_, d_], dim=-1)


def frustum_to_ego(
    frustum: torch.Tensor, cam2img: torch.Tensor, cam2ego: torch.Tensor
) -> torch.Tensor:
    """Frustum (D, h, w, 3) of every camera -> ego points (B, K, D, h, w, 3).

    ``cam2img`` (B, K, 4, 4): intrinsics of the network input (image augmentation folded in);
    ``cam2ego`` (B, K, 4, 4): camera -> (augmented) ego.
    """
    uvd = frustum.to(cam2img)
    depth = uvd[..., 2:3]
    # Homogeneous image point (u d, v d, d, 1) maps back through the full 4x4 intrinsics, so a
    # projection with a translation column (KITTI's P2) is inverted exactly too.
    img = torch.cat([uvd[..., :2] * depth, depth, torch.ones_like(depth)], dim=-1)
    # fp32 even under autocast: in fp16 the products u*d (~10^4) keep only ~8 units of precision.
    with torch.autocast(device_type=cam2img.device.type, enabled=False):
        img2ego = cam2ego.float() @ torch.linalg.inv(cam2img.float())  # (B, K, 4, 4)
        return torch.einsum("bkij,dhwj->bkdhwi", img2ego[..., :3, :], img.float())


@dataclass
class PoolIndex:
    """Where the kept frustum points of a batch land; computed once per batch, no gradient.

    ``point``: (M,) flat index of each kept point into the (B, K, D, h, w) frustum;
    ``cell``: (M,) flat index ``b*H*W + row*W + col`` of its BEV cell.
    """

    point: torch.Tensor
    cell: torch.Tensor
    batch_size: int
    grid_shape: tuple[int, int]


@torch.no_grad()
def bev_pool_index(points: torch.Tensor, grid: BEVGrid, z_range: tuple[float, float]) -> PoolIndex:
    """Index the ego points (B, K, D, h, w, 3) into ``grid``; points outside the grid's x-y
    range or ``z_range`` are dropped (as LSS, one cell spans the whole height)."""
    batch = points.shape[0]
    flat = points.reshape(-1, 3)
    col = torch.floor((flat[:, 0] - grid.x_min) / grid.cell).long()
    row = torch.floor((flat[:, 1] - grid.y_min) / grid.cell).long()
    keep = (col >= 0) & (col < grid.W) & (row >= 0) & (row < grid.H)
    keep &= (flat[:, 2] >= z_range[0]) & (flat[:, 2] < z_range[1])
    point = keep.nonzero().squeeze(1)
    per_sample = flat.shape[0] // batch
    b = point // per_sample
    cell = (b * grid.H + row[point]) * grid.W + col[point]
    return PoolIndex(point=point, cell=cell, batch_size=batch, grid_shape=(grid.H, grid.W))


def bev_pool(depth: torch.Tensor, context: torch.Tensor, index: PoolIndex) -> torch.Tensor:
    """Splat ``depth`` (B, K, D, h, w) x ``context`` (B, K, C, h, w) into (B, C, H, W).

    Each kept frustum point adds ``depth[b,k,d,v,u] * context[b,k,:,v,u]`` to its cell; only
    the kept points' products are formed.
    """
    b, _, d, h, w = depth.shape
    channels = context.shape[2]
    height, width = index.grid_shape
    # Frustum point n = ((b*K + k)*D + d)*h*w + pixel, so its image pixel is recovered without
    # materialising the (B, K, D, h, w, C) outer product.
    pixel = (index.point // (d * h * w)) * (h * w) + index.point % (h * w)
    ctx = context.permute(0, 1, 3, 4, 2).reshape(-1, channels)
    values = depth.reshape(-1)[index.point, None] * ctx[pixel]
    out = values.new_zeros(b * height * width, channels)  # the product's dtype (mixed under AMP)
    out.index_add_(0, index.cell, values)
    return out.view(b, height, width, channels).permute(0, 3, 1, 2).contiguous()


def depth_targets(
    lidar_depth: torch.Tensor, depth_bins: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """LiDAR depth (...) in metres (0 = no return) -> (bin index (...) long, valid mask (...))."""
    lo, _, step = depth_bins
    bins = torch.floor((lidar_depth - lo) / step).long()
    valid = (lidar_depth > 0) & (bins >= 0) & (bins < depth_bin_count(depth_bins))
    return bins.clamp(0, depth_bin_count(depth_bins) - 1), valid


def depth_loss(
    depth_logits: torch.Tensor, lidar_depth: torch.Tensor, depth_bins: Sequence[float]
) -> torch.Tensor:
    """BEVDepth's depth loss: BCE between the softmax depth distribution and the one-hot bin
    of the LiDAR depth, summed over bins, averaged over pixels that have an in-range return.

    ``depth_logits`` (N, D, h, w); ``lidar_depth`` (N, h, w) or (B, K, h, w) with B*K = N.
    Returns a scalar (0 with a gradient path when no pixel has depth).
    """
    n, num_bins, h, w = depth_logits.shape
    target_depth = lidar_depth.reshape(-1, *lidar_depth.shape[-2:])
    if target_depth.shape != (n, h, w):
        raise ValueError(
            f"depth_loss: LiDAR depth of shape {tuple(lidar_depth.shape)} does not match depth "
            f"logits (N, h, w) = {(n, h, w)}; data.depth_stride must equal the image feature stride"
        )
    bins, valid = depth_targets(target_depth, depth_bins)
    logits = depth_logits.float().permute(0, 2, 3, 1)[valid]  # (P, D)
    if logits.numel() == 0:
        return depth_logits.sum() * 0.0
    target = F.one_hot(bins[valid], num_bins).float()
    probs = logits.softmax(dim=-1)
    bce = F.binary_cross_entropy(probs, target, reduction="sum")
    return bce / max(1, int(valid.sum()))


@dataclass
class CameraBEVOutput:
    """``bev``: (B, C, H, W) camera BEV; ``depth_logits``: (B*K, D, h, w) for depth_loss."""

    bev: torch.Tensor
    depth_logits: torch.Tensor


class CameraBEV(nn.Module):
    """Images of K cameras -> camera BEV on ``grid`` (LSS) plus depth logits."""

    def __init__(
        self,
        grid: BEVGrid,
        z_range: tuple[float, float],
        depth_bins: DepthBins,
        backbone_channels: Sequence[int],
        bev_channels: int,
        feature_stride: int,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.z_range = z_range
        self.depth_bins = depth_bins
        self.num_bins = depth_bin_count(depth_bins)
        self.bev_channels = bev_channels
        self.feature_stride = feature_stride
        self.backbone = ImageBackbone(backbone_channels, bev_channels, out_stride=feature_stride)
        # Splatting leaves sparse, ray-shaped footprints; the refine conv spreads them over cells.
        self.depth_net, self.bev_refine = self.make_view_transform()

    def forward(
        self, images: torch.Tensor, cam2img: torch.Tensor, cam2ego: torch.Tensor
    ) -> CameraBEVOutput:
        """``images`` (B, K, 3, H, W); ``cam2img``/``cam2ego`` (B, K, 4, 4)."""
        return self.lift(self.image_features(images), cam2img, cam2ego)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K, 3, H, W) -> backbone features (B*K, C, h, w)."""
        return self.backbone(images.flatten(0, 1))  # type: ignore[no-any-return]

    def lift(
        self,
        feats: torch.Tensor,
        cam2img: torch.Tensor,
        cam2ego: torch.Tensor,
        depth_net: nn.Module | None = None,
        refine: nn.Module | None = None,
    ) -> CameraBEVOutput:
        """Lift backbone features (B*K, C, h, w) of the cameras in ``cam2img`` (B, K, 4, 4) to
        the BEV grid, through this branch's depth net and refine conv, or another pair of the
        same shapes (a second view transform over the same image features)."""
        depth_net = self.depth_net if depth_net is None else depth_net
        refine = self.bev_refine if refine is None else refine
        b, k = cam2img.shape[:2]
        out = depth_net(feats)
        depth_logits = out[:, : self.num_bins]
        context = out[:, self.num_bins :]
        h, w = feats.shape[-2:]
        frustum = make_frustum((h, w), self.feature_stride, self.depth_bins).to(feats.device)
        points = frustum_to_ego(frustum, cam2img, cam2ego)
        index = bev_pool_index(points, self.grid, self.z_range)
        depth = depth_logits.softmax(dim=1).view(b, k, self.num_bins, h, w)
        bev = bev_pool(depth, context.view(b, k, self.bev_channels, h, w), index)
        return CameraBEVOutput(bev=refine(bev), depth_logits=depth_logits)

    def make_view_transform(self) -> tuple[nn.Module, nn.Module]:
        """A fresh (depth net, refine conv) pair shaped like this branch's, for :meth:`lift`."""
        depth_net = nn.Sequential(
            conv_bn_relu(self.bev_channels, self.bev_channels, 3),
            nn.Conv2d(self.bev_channels, self.num_bins + self.bev_channels, 1),
        )
        return depth_net, conv_bn_relu(self.bev_channels, self.bev_channels, 3)


def build_camera_bev(cfg: Config) -> CameraBEV:
    """The camera branch of ``cfg``: grid from ``cfg.grid``; feature stride = data.depth_stride
    so depth logits line up with the dataset's LiDAR depth maps."""
    grid = cfg.grid.bev_grid
    pcr = cfg.grid.point_cloud_range
    return CameraBEV(
        grid=grid,
        z_range=(pcr[2], pcr[5]),
        depth_bins=cfg.model.depth_bins,
        backbone_channels=cfg.model.image_backbone_channels,
        bev_channels=cfg.model.camera_bev_channels,
        feature_stride=cfg.data.depth_stride,
    )
