"""PointPillars-style encoder: a pillar feature net scattered to a pseudo-image, then strided
2D convs down to the BEV grid. Pure torch, same output contract as the sparse encoder.

Pillars are voxels spanning the whole z range at the voxel grid's x-y size. Each point gets
its raw features, its offset from the pillar's point mean and its offset from the pillar
centre; a shared Linear + BatchNorm1d + ReLU maps them to C channels and a max over the
pillar's points gives the pillar feature (a scatter max, so no padding to a fixed count).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bevkd.models.head import conv_bn_relu
from bevkd.models.voxelize import voxelize


class PillarEncoder(nn.Module):
    """Points (P, 1 + F) = (batch, x, y, z, features...) -> dense BEV (B, out_channels, H, W).

    ``channels``: PFN width first, then one entry per stride-2 stage; the stages number
    log2(``bev_stride``), and the last entry is the output width.
    """

    def __init__(
        self,
        point_features: int,
        point_cloud_range: Sequence[float],
        voxel_size: Sequence[float],
        bev_stride: int,
        channels: Sequence[int],
        max_points_per_pillar: int = 32,
        max_pillars: int = 40000,
    ) -> None:
        super().__init__()
        stages = bev_stride.bit_length() - 1
        if bev_stride != 2**stages:
            raise ValueError(f"grid.bev_stride must be a power of two, got {bev_stride}")
        channels = list(channels)
        if len(channels) < stages + 1:
            raise ValueError(
                f"model.sparse_channels needs >= {stages + 1} entries for bev_stride {bev_stride}, got {channels}"
            )
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.pillar_size = (
            float(voxel_size[0]),
            float(voxel_size[1]),
            self.point_cloud_range[5] - self.point_cloud_range[2],
        )
        self.max_points_per_pillar = max_points_per_pillar
        self.max_pillars = max_pillars
        # raw features + 3 offsets from the pillar mean + 2 offsets from the pillar centre
        self.pfn = nn.Sequential(
            nn.Linear(point_features + 5, channels[0], bias=False),
            nn.BatchNorm1d(channels[0]),
            nn.ReLU(inplace=True),
        )
        widths = [channels[0], *channels[1 : stages + 1]]
        self.downsample = nn.Sequential(
            *[
                nn.Sequential(
                    conv_bn_relu(widths[i], widths[i + 1], 2),
                    conv_bn_relu(widths[i + 1], widths[i + 1]),
                )
                for i in range(stages)
            ]
        )
        self.out_conv = (
            conv_bn_relu(widths[-1], channels[-1])
            if channels[-1] != widths[-1] or stages == 0
            else nn.Identity()
        )
        self.out_channels = channels[-1]

    def forward(self, points: torch.Tensor, batch_size: int) -> torch.Tensor:
        vox = voxelize(
            points,
            batch_size,
            self.point_cloud_range,
            self.pillar_size,
            self.max_points_per_pillar,
            self.max_pillars,
        )
        keep = vox.point_voxel >= 0
        pid = vox.point_voxel[keep]
        pts = points[keep, 1:]
        coords = vox.coords.long()
        x0, y0 = self.point_cloud_range[0], self.point_cloud_range[1]
        centre_x = (coords[pid, 3].to(pts.dtype) + 0.5) * self.pillar_size[0] + x0
        centre_y = (coords[pid, 2].to(pts.dtype) + 0.5) * self.pillar_size[1] + y0
        augmented = torch.cat(
            [
                pts,
                pts[:, :3] - vox.features[pid, :3],
                (pts[:, 0] - centre_x)[:, None],
                (pts[:, 1] - centre_y)[:, None],
            ],
            dim=1,
        )
        point_feats = self.pfn(augmented)
        pillar = torch.zeros(
            (len(coords), point_feats.shape[1]), dtype=point_feats.dtype, device=points.device
        )
        pillar = pillar.scatter_reduce(
            0, pid[:, None].expand_as(point_feats), point_feats, reduce="amax", include_self=False
        )
        _, ny, nx = vox.spatial_shape
        canvas = torch.zeros(
            (batch_size, ny * nx, pillar.shape[1]), dtype=pillar.dtype, device=points.device
        )
        canvas = canvas.index_put((coords[:, 0], coords[:, 2] * nx + coords[:, 3]), pillar)
        image = canvas.view(batch_size, ny, nx, -1).permute(
            0, 3, 1, 2
        )  # rows along y, columns along x
        return self.out_conv(self.downsample(image))
