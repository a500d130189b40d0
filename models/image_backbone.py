"""A small ResNet-style image backbone with an FPN-style fusion to one output stride.

Written with plain ``torch.nn`` (torchvision is not a dependency). It serves the camera BEV
branch of the fusion teacher and of the camera students, so it must never import spconv.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """conv(kernel, stride, 'same' padding, no bias) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus a (projected) skip, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.skip(x), inplace=True)


class ImageBackbone(nn.Module):
    """ResNet-like encoder (stem at stride 2, then one stride-2 stage per entry of
    ``channels``) and an FPN-style top-down fusion of every stage at stride >= ``out_stride``.

    Input ``(N, 3, H, W)``; output ``(N, out_channels, H / out_stride, W / out_stride)``.
    ``H`` and ``W`` must be multiples of the deepest stage's stride.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        out_channels: int = 64,
        out_stride: int = 8,
        blocks_per_stage: int = 1,
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        strides = [2 ** (i + 2) for i in range(len(channels))]  # stage i sits at stride 4 * 2^i
        if out_stride not in strides:
            raise ValueError(
                f"image backbone: out_stride {out_stride} is not one of the stage strides "
                f"{strides} of channels {channels}; change data.depth_stride or "
                "model.image_backbone_channels"
            )
        self.out_stride = out_stride
        self.max_stride = strides[-1]
        self.stem = conv_bn_relu(3, channels[0], 3, stride=2)
        stages = []
        cin = channels[0]
        for cout in channels:
            blocks = [BasicBlock(cin, cout, stride=2)]
            blocks += [BasicBlock(cout, cout) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        # Only the stages at or below the output resolution feed the fusion.
        self.first_fused = strides.index(out_stride)
        self.lateral = nn.ModuleList(
            nn.Conv2d(c, out_channels, 1) for c in channels[self.first_fused :]
        )
        self.smooth = conv_bn_relu(out_channels, out_channels, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (N, 3, H, W) -> features (N, out_channels, H/s, W/s)."""
        height, width = images.shape[-2:]
        if height % self.max_stride or width % self.max_stride:
            raise ValueError(
                f"image backbone: input size {height}x{width} is not a multiple of "
                f"{self.max_stride}; set data.image_size to a multiple of it"
            )
        x = self.stem(images)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        fused = feats[self.first_fused :]
        # Top-down: upsample the coarser sum and add each finer lateral (FPN).
        out = self.lateral[-1](fused[-1])
        for lateral, feat in zip(reversed(self.lateral[:-1]), reversed(fused[:-1]), strict=True):
            out = lateral(feat) + F.interpolate(out, size=feat.shape[-2:], mode="nearest")
        return self.smooth(out)
