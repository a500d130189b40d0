"""CenterPoint head: a shared conv, then one small branch per output (CenterPoint's
``SeparateHead``): heatmap, offset, z, size, rotation, velocity.

All classes form one task, so the regression is one (B, 10, H, W) map in
:data:`bevkd.models.outputs.REGRESSION_CHANNELS` order, as the store and the students expect.
Pure torch: the camera students import this module, so it must never pull in spconv.
"""

from __future__ import annotations

import torch
from torch import nn

from bevkd.models.outputs import REGRESSION_CHANNELS, HeadOutput

# Branch name -> output channels, concatenated in REGRESSION_CHANNELS order.
REGRESSION_BRANCHES: tuple[tuple[str, int], ...] = (("offset", 2), ("z", 1), ("size", 3), ("rotation", 2), ("velocity", 2))
assert sum(n for _, n in REGRESSION_BRANCHES) == len(REGRESSION_CHANNELS)

# Initial heatmap bias: sigmoid(-2.19) ~ 0.1, the focal-loss prior that keeps early training stable.
HEATMAP_BIAS_INIT = -2.19


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias) + BatchNorm2d + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _branch(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(channels, channels), nn.Conv2d(channels, out_channels, 3, padding=1))


class CenterHead(nn.Module):
    """(B, C_in, H, W) BEV features -> :class:`HeadOutput` on the same (H, W) grid."""

    def __init__(self, in_channels: int, num_classes: int, head_channels: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.shared = conv_bn_relu(in_channels, head_channels)
        self.heatmap = _branch(head_channels, num_classes)
        self.regression = nn.ModuleDict({name: _branch(head_channels, n) for name, n in REGRESSION_BRANCHES})
        nn.init.constant_(self.heatmap[-1].bias, HEATMAP_BIAS_INIT)
        for branch in self.regression.values():
            # Small initial regressions: exp(size) starts near 1 m, offsets near the cell centre.
            nn.init.kaiming_normal_(branch[-1].weight, mode="fan_out")
            branch[-1].weight.data.mul_(0.1)
            nn.init.zeros_(branch[-1].bias)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        x = self.shared(features)
        regression = torch.cat([self.regression[name](x) for name, _ in REGRESSION_BRANCHES], dim=1)
        return HeadOutput(heatmap=self.heatmap(x), regression=regression)
