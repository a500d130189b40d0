"""CenterPoint's module tree as OpenPCDet's constructors build it, for cross-checks in tests.

A second, independent transcription (OpenPCDet commit 8cacccec11db6f59bf6934600c9a175dae254806):
where ``openpcdet_state`` and ``openpcdet_networks`` restate the model as a key list and
functions, this rebuilds the ``nn.Module`` tree class by class, so ``state_dict()`` yields the
names, order and shapes torch and spconv themselves produce, and its modules can be run (the
2D parts directly, the sparse 3D part read densely with torch's conv3d). It constructs spconv
modules for their weight layout but never runs spconv.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from .openpcdet_config import CenterPointConfig


def openpcdet_skeleton(cfg: CenterPointConfig) -> Any:
    """CenterPoint's module tree transcribed from OpenPCDet's constructors (no forward):
    spconv_backbone.py 8-49 and 184-234, base_bev_backbone.py 26-69, center_head.py 12-39
    and 74-97, detector3d_template.py 21-26 (global_step first, then module_topology)."""
    import spconv.pytorch as spconv
    from torch import nn

    norm1d = partial(nn.BatchNorm1d, eps=1e-3, momentum=0.01)

    class SparseBasicBlock(spconv.SparseModule):  # type: ignore[misc]
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv1 = spconv.SubMConv3d(
                c, c, kernel_size=3, stride=1, padding=1, bias=True, indice_key="r"
            )
            self.bn1 = norm1d(c)
            self.relu = nn.ReLU()
            self.conv2 = spconv.SubMConv3d(
                c, c, kernel_size=3, stride=1, padding=1, bias=True, indice_key="r"
            )
            self.bn2 = norm1d(c)

    def block(cin: int, cout: int, padding: object) -> nn.Module:
        conv = spconv.SparseConv3d(cin, cout, 3, stride=2, padding=padding, bias=False)
        return spconv.SparseSequential(conv, norm1d(cout), nn.ReLU())

    c1, c2, c3, c4 = cfg.sparse_channels
    b3 = nn.Module()
    b3.conv_input = spconv.SparseSequential(
        spconv.SubMConv3d(5, c1, 3, padding=1, bias=False), norm1d(c1), nn.ReLU()
    )
    b3.conv1 = spconv.SparseSequential(SparseBasicBlock(c1), SparseBasicBlock(c1))
    b3.conv2 = spconv.SparseSequential(block(c1, c2, 1), SparseBasicBlock(c2), SparseBasicBlock(c2))
    b3.conv3 = spconv.SparseSequential(block(c2, c3, 1), SparseBasicBlock(c3), SparseBasicBlock(c3))
    b3.conv4 = spconv.SparseSequential(
        block(c3, c4, (0, 1, 1)), SparseBasicBlock(c4), SparseBasicBlock(c4)
    )
    b3.conv_out = spconv.SparseSequential(
        spconv.SparseConv3d(
            c4, cfg.sparse_out_channels, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False
        ),
        norm1d(cfg.sparse_out_channels),
        nn.ReLU(),
    )

    b2 = nn.Module()
    b2.blocks, b2.deblocks = nn.ModuleList(), nn.ModuleList()
    c_in = [cfg.num_bev_features, *cfg.num_filters[:-1]]
    for i, n in enumerate(cfg.num_filters):
        layers = [
            nn.ZeroPad2d(1),
            nn.Conv2d(c_in[i], n, 3, stride=cfg.layer_strides[i], padding=0, bias=False),
            nn.BatchNorm2d(n, eps=1e-3, momentum=0.01),
            nn.ReLU(),
        ]
        for _ in range(cfg.layer_nums[i]):
            layers += [
                nn.Conv2d(n, n, 3, padding=1, bias=False),
                nn.BatchNorm2d(n, eps=1e-3, momentum=0.01),
                nn.ReLU(),
            ]
        b2.blocks.append(nn.Sequential(*layers))
        s, up = cfg.upsample_strides[i], cfg.num_upsample_filters[i]
        b2.deblocks.append(
            nn.Sequential(
                nn.ConvTranspose2d(n, up, s, stride=s, bias=False),
                nn.BatchNorm2d(up, eps=1e-3, momentum=0.01),
                nn.ReLU(),
            )
        )

    c = cfg.shared_conv_channel
    norm2d = partial(nn.BatchNorm2d, eps=1e-5, momentum=0.1)
    head = nn.Module()
    head.shared_conv = nn.Sequential(
        nn.Conv2d(sum(cfg.num_upsample_filters), c, 3, stride=1, padding=1, bias=True),
        norm2d(c),
        nn.ReLU(),
    )
    head.heads_list = nn.ModuleList()
    for names in cfg.class_names_each_head:
        sep = nn.Module()
        for name, out in [
            ("center", 2),
            ("center_z", 1),
            ("dim", 3),
            ("rot", 2),
            ("vel", 2),
            ("hm", len(names)),
        ]:
            inner = nn.Sequential(
                nn.Conv2d(c, c, 3, stride=1, padding=1, bias=True), norm2d(c), nn.ReLU()
            )
            setattr(
                sep,
                name,
                nn.Sequential(inner, nn.Conv2d(c, out, 3, stride=1, padding=1, bias=True)),
            )
        head.heads_list.append(sep)

    model = nn.Module()
    model.register_buffer("global_step", torch.LongTensor(1).zero_())
    model.vfe, model.backbone_3d, model.map_to_bev_module = nn.Module(), b3, nn.Module()
    model.backbone_2d, model.dense_head = b2, head
    return model.eval()


def dense_backbone_3d(b3: Any, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """VoxelResBackBone8x.forward (spconv_backbone.py lines 243-271) on the skeleton's modules,
    read densely: x (C, D, H, W) zero off the present sites ``mask`` (D, H, W); a submanifold
    conv keeps the sites, a regular conv's sites are those its window reaches."""
    from torch import nn

    def run(m: Any, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(m, "conv1"):  # SparseBasicBlock.forward, lines 51-67
            out, _ = run(m.conv1, x, mask)
            out, _ = run(m.relu, *run(m.bn1, out, mask))
            out, _ = run(m.bn2, *run(m.conv2, out, mask))
            return run(m.relu, out + x, mask)
        if isinstance(m, nn.BatchNorm1d):  # per channel, on present sites only
            c = x.shape[0]
            return m(x.reshape(c, -1).T).T.reshape(x.shape) * mask, mask
        if isinstance(m, nn.ReLU):
            return torch.relu(x), mask
        if hasattr(m, "subm"):
            w = m.weight.permute(0, 4, 1, 2, 3)
            if m.subm:
                pad = [k // 2 for k in m.kernel_size]
                return F.conv3d(x[None], w, m.bias, padding=pad)[0] * mask, mask
            y = F.conv3d(x[None], w, m.bias, stride=m.stride, padding=m.padding)[0]
            ones = torch.ones(1, 1, *m.kernel_size, dtype=x.dtype)
            hit = (
                F.conv3d(mask[None, None].to(x.dtype), ones, stride=m.stride, padding=m.padding)[
                    0, 0
                ]
                > 0
            )
            return y * hit, hit
        for child in m.children():  # SparseSequential
            x, mask = run(child, x, mask)
        return x, mask

    for name in ("conv_input", "conv1", "conv2", "conv3", "conv4", "conv_out"):
        x, mask = run(getattr(b3, name), x, mask)
    return x
