"""SECOND-style sparse 3D encoder on spconv, with height compression to a dense BEV.

voxel means -> SubMConv3d input block -> per stage: strided SparseConv3d (x2 in x, y, z) +
SubMConv3d layers -> SparseConv3d (3, 1, 1) / (2, 1, 1) in z -> dense (B, C, D, H, W) ->
(B, C*D, H, W). The number of stages is log2(bev_stride), so the xy stride is bev_stride.

This module imports spconv (and applies the CPU fix) on import: only LiDAR-teacher code may
import it, never the camera/student side.
"""

from __future__ import annotations

from collections.abc import Sequence

import spconv.pytorch as spconv
import torch
from torch import nn

from bevkd.models import spconv_cpu
from bevkd.models.voxelize import voxelize

spconv_cpu.apply()


def _block(conv: nn.Module, out_channels: int) -> spconv.SparseSequential:
    # BatchNorm1d over the active voxels' features, as in SECOND / CenterPoint.
    return spconv.SparseSequential(
        conv, nn.BatchNorm1d(out_channels, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)
    )


def _subm(in_channels: int, out_channels: int, key: str) -> spconv.SparseSequential:
    return _block(
        spconv.SubMConv3d(in_channels, out_channels, 3, padding=1, bias=False, indice_key=key),
        out_channels,
    )


def compressed_depth(nz: int, stages: int) -> int:
    """Voxels left along z after ``stages`` stride-2 convs (pad 1) and the (3, 1, 1) / 2 conv."""
    for _ in range(stages):
        nz = (nz + 1) // 2
    depth = (nz - 3) // 2 + 1
    if depth < 1:
        raise ValueError(
            f"the voxel grid has too few z cells for {stages} downsampling stages; lower grid.voxel_size[2] or widen the z range"
        )
    return depth


class SparseEncoder(nn.Module):
    """Points (P, 1 + F) = (batch, x, y, z, features...) -> dense BEV (B, out_channels, H, W).

    ``channels``: input-block width, one width per stride-2 stage (log2(bev_stride) of
    them), then the width of the z-compressing output conv; ``out_channels`` is that last
    width times the z cells left. ``layers``: SubMConv3d layers after each strided conv.
    """

    def __init__(
        self,
        point_features: int,
        point_cloud_range: Sequence[float],
        voxel_size: Sequence[float],
        bev_stride: int,
        channels: Sequence[int],
        max_points_per_voxel: int,
        max_voxels: int,
        layers: int = 1,
    ) -> None:
        super().__init__()
        stages = bev_stride.bit_length() - 1
        if bev_stride != 2**stages:
            raise ValueError(f"grid.bev_stride must be a power of two, got {bev_stride}")
        channels = list(channels)
        if len(channels) != stages + 2:
            raise ValueError(
                f"model.sparse_channels must have log2(bev_stride) + 2 = {stages + 2} entries for bev_stride {bev_stride} "
                f"(input, one per stride-2 stage, output), got {channels}"
            )
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.max_points_per_voxel = max_points_per_voxel
        self.max_voxels = max_voxels
        self.input_block = _subm(point_features, channels[0], "subm0")
        self.stages = nn.ModuleList()
        for s in range(1, stages + 1):
            down = _block(
                spconv.SparseConv3d(
                    channels[s - 1],
                    channels[s],
                    3,
                    stride=2,
                    padding=1,
                    bias=False,
                    indice_key=f"down{s}",
                ),
                channels[s],
            )
            self.stages.append(
                spconv.SparseSequential(
                    down, *[_subm(channels[s], channels[s], f"subm{s}") for _ in range(layers)]
                )
            )
        self.output_block = _block(
            spconv.SparseConv3d(
                channels[stages], channels[-1], (3, 1, 1), stride=(2, 1, 1), bias=False
            ),
            channels[-1],
        )
        nz = round((self.point_cloud_range[5] - self.point_cloud_range[2]) / self.voxel_size[2])
        self.out_channels = channels[-1] * compressed_depth(nz, stages)

    def forward(self, points: torch.Tensor, batch_size: int) -> torch.Tensor:
        vox = voxelize(
            points,
            batch_size,
            self.point_cloud_range,
            self.voxel_size,
            self.max_points_per_voxel,
            self.max_voxels,
        )
        # spconv ignores strides: indices must be contiguous int32 (batch, z, y, x)
        x = spconv.SparseConvTensor(
            vox.features, vox.coords.contiguous(), list(vox.spatial_shape), batch_size
        )
        x = self.input_block(x)
        for stage in self.stages:
            x = stage(x)
        dense = self.output_block(x).dense()  # (B, C, D, H, W): spatial order z, y, x
        b, c, d, h, w = dense.shape
        return dense.reshape(b, c * d, h, w)
