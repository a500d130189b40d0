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
REGRESSION_BRANCHES: tuple[tuple[str, int], ...] = (
    ("offset", 2),
    ("z", 1),
    ("size", 3),
    ("rotation", 2),
    ("velocity", 2),
)
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
    """conv-BN-ReLU then a plain 3x3 conv (with bias) to ``out_channels``."""
    return nn.Sequential(
        conv_bn_relu(channels, channels), nn.Conv2d(channels, out_channels, 3, padding=1)
    )


def _init_last(branch: nn.Module, bias: float, weight_scale: float | None = None) -> None:
    """Set the bias (and optionally a scaled Kaiming weight) of a branch's final conv."""
    last = list(branch.children())[-1]
    assert isinstance(last, nn.Conv2d) and last.bias is not None
    if weight_scale is not None:
        nn.init.kaiming_normal_(last.weight, mode="fan_out")
        last.weight.data.mul_(weight_scale)
    nn.init.constant_(last.bias, bias)


class CenterHead(nn.Module):
    """(B, C_in, H, W) BEV features -> :class:`HeadOutput` on the same (H, W) grid."""

    def __init__(self, in_channels: int, num_classes: int, head_channels: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.shared = conv_bn_relu(in_channels, head_channels)
        self.heatmap = _branch(head_channels, num_classes)
        self.regression = nn.ModuleDict(
            {name: _branch(head_channels, n) for name, n in REGRESSION_BRANCHES}
        )
        # Initialised after all layers exist, so the default init draws the same random numbers.
        _init_last(self.heatmap, HEATMAP_BIAS_INIT)
        for branch in self.regression.values():
            # Small initial regressions: exp(size) starts near 1 m, offsets near the cell corner.
            _init_last(branch, 0.0, weight_scale=0.1)

    def forward(self, features: torch.Tensor) -> HeadOutput:
        x = self.shared(features)
        regression = torch.cat([self.regression[name](x) for name, _ in REGRESSION_BRANCHES], dim=1)
        return HeadOutput(heatmap=self.heatmap(x), regression=regression)
