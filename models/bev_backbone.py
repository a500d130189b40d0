"""2D SECOND backbone at two scales and the SECONDFPN-style neck.

The backbone's two outputs are the distillable LiDAR BEV features: ``lidar_bev``
(B, C, H, W) at stride 1 of the BEV grid and ``lidar_bev_s2`` (B, 2C, H/2, W/2) at stride 2,
the two scales LabelDistill distills. Its input, the encoder's dense map-to-BEV output, is
``lidar_bev_pre`` (:data:`MAP_TO_BEV_NAME`): the layer CMKD distills. The neck is a separate module so that features made
elsewhere (the label encoder) with the same names and shapes can run through a frozen
teacher's neck and head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bevkd.models.head import conv_bn_relu

FEATURE_NAMES: tuple[str, str] = ("lidar_bev", "lidar_bev_s2")
# The backbone's input as a named feature: the LiDAR encoder's map-to-BEV output.
MAP_TO_BEV_NAME = "lidar_bev_pre"


def _block(in_channels: int, out_channels: int, stride: int, layers: int) -> nn.Sequential:
    """A strided conv then ``layers`` 3x3 convs, each with BatchNorm + ReLU."""
    return nn.Sequential(
        conv_bn_relu(in_channels, out_channels, stride),
        *[conv_bn_relu(out_channels, out_channels) for _ in range(layers)],
    )


class SECONDBackbone(nn.Module):
    """(B, C_in, H, W) -> {``lidar_bev``: (B, C, H, W), ``lidar_bev_s2``: (B, 2C, H/2, W/2)}."""

    def __init__(self, in_channels: int, bev_channels: int, layers: Sequence[int] = (3, 3)) -> None:
        super().__init__()
        if len(layers) != 2:
            raise ValueError(
                f"model.bev_backbone_layers must have 2 entries (one per scale), got {tuple(layers)}"
            )
        self.bev_channels = bev_channels
        self.block1 = _block(in_channels, bev_channels, 1, layers[0])
        self.block2 = _block(bev_channels, 2 * bev_channels, 2, layers[1])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s1 = self.block1(x)
        return {"lidar_bev": s1, "lidar_bev_s2": self.block2(s1)}


class SECONDFPN(nn.Module):
    """Neck: both scales to stride 1 and concatenated -> (B, 2 * up_channels, H, W)."""

    def __init__(self, bev_channels: int, up_channels: int) -> None:
        super().__init__()
        self.out_channels = 2 * up_channels
        self.deblock1 = nn.Sequential(
            nn.Conv2d(bev_channels, up_channels, 1, bias=False),
            nn.BatchNorm2d(up_channels),
            nn.ReLU(inplace=True),
        )
        self.deblock2 = nn.Sequential(
            nn.ConvTranspose2d(2 * bev_channels, up_channels, 2, stride=2, bias=False),
            nn.BatchNorm2d(up_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [n for n in FEATURE_NAMES if n not in features]
        if missing:
            raise KeyError(
                f"the neck needs features {FEATURE_NAMES}; missing {missing} (got {sorted(features)})"
            )
        return torch.cat(
            [self.deblock1(features["lidar_bev"]), self.deblock2(features["lidar_bev_s2"])], dim=1
        )
