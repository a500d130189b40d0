"""The sparse 3D encoder of an imported CenterPoint, on spconv: a flat list of layers
(:data:`bevkd.pipeline.config.SparseLayer`) that spells out mmdet3d's ``SparseEncoder`` and
OpenPCDet's ``VoxelBackBone8x`` / ``VoxelResBackBone8x`` alike, then the dense view
(B, C, D, H, W) -> (B, C*D, H, W) (mmdet3d's ``view``; OpenPCDet's ``HeightCompression``).

Every conv is followed by BatchNorm1d over the active voxels and ReLU; a ``basic`` layer is a
residual block of two submanifold convs (conv-BN-ReLU, conv-BN, + input, ReLU).

This module imports spconv (and applies the CPU fix) on import: LiDAR-teacher code only.
"""

from __future__ import annotations

from collections.abc import Sequence

import spconv.pytorch as spconv
import torch
from torch import nn

from bevkd.models import spconv_cpu
from bevkd.pipeline.config import SparseLayer

spconv_cpu.apply()


class SparseConvBlock(nn.Module):
    """conv -> BatchNorm1d -> ReLU on a sparse tensor (``conv``, ``bn``)."""

    def __init__(self, conv: nn.Module, channels: int, eps: float) -> None:
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm1d(channels, eps=eps, momentum=0.01)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        x = self.conv(x)
        return x.replace_feature(torch.relu(self.bn(x.features)))


class SparseBasicBlock(nn.Module):
    """Two 3x3x3 submanifold convs with BatchNorm1d and a residual connection."""

    def __init__(self, channels: int, bias: bool, eps: float, key: str) -> None:
        super().__init__()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=bias, indice_key=key)
        self.bn1 = nn.BatchNorm1d(channels, eps=eps, momentum=0.01)
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=bias, indice_key=key)
        self.bn2 = nn.BatchNorm1d(channels, eps=eps, momentum=0.01)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x.features
        out = self.conv1(x)
        out = out.replace_feature(torch.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(torch.relu(self.bn2(out.features) + identity))


def _layer(spec: SparseLayer, eps: float, level: int) -> nn.Module:
    kind, cin, cout, pz, py, px, bias = spec
    # Submanifold convs at one resolution share their rulebook (same active set, same kernel).
    key = f"subm{level}"
    if kind == "subm":
        conv = spconv.SubMConv3d(
            cin, cout, 3, padding=(pz, py, px), bias=bool(bias), indice_key=key
        )
        return SparseConvBlock(conv, cout, eps)
    if kind == "basic":
        if cin != cout:
            raise ValueError(f"a basic sparse block keeps its width; got {cin} -> {cout}")
        return SparseBasicBlock(cout, bool(bias), eps, key)
    if kind == "down":
        conv = spconv.SparseConv3d(cin, cout, 3, stride=2, padding=(pz, py, px), bias=bool(bias))
        return SparseConvBlock(conv, cout, eps)
    if kind == "out":
        conv = spconv.SparseConv3d(
            cin, cout, (3, 1, 1), stride=(2, 1, 1), padding=(pz, py, px), bias=bool(bias)
        )
        return SparseConvBlock(conv, cout, eps)
    raise ValueError(f"unknown sparse layer kind {kind!r}")


class CenterPointSparseEncoder(nn.Module):
    """Voxel features (V, F) at coords (V, 4) (batch, z, y, x) -> dense BEV (B, C*D, H, W)."""

    def __init__(
        self, layers: Sequence[SparseLayer], sparse_shape: Sequence[int], eps: float = 1e-3
    ) -> None:
        super().__init__()
        self.sparse_shape = [int(v) for v in sparse_shape]
        modules = []
        level = 0
        for spec in layers:
            if spec[0] in ("down", "out"):
                level += 1
            modules.append(_layer(spec, eps, level))
        self.layers = nn.ModuleList(modules)

    def forward(
        self, features: torch.Tensor, coords: torch.Tensor, batch_size: int
    ) -> torch.Tensor:
        x = spconv.SparseConvTensor(
            features, coords.int().contiguous(), self.sparse_shape, batch_size
        )
        for layer in self.layers:
            x = layer(x)
        dense = x.dense()  # (B, C, D, H, W)
        b, c, d, h, w = dense.shape
        return dense.reshape(b, c * d, h, w)
