"""OpenPCDet CenterPoint's networks as functions of an OpenPCDet ``model_state`` (eval mode).

Transcribed from OpenPCDet commit 8cacccec11db6f59bf6934600c9a175dae254806. Each function reads
the weights by the exact state-dict names the upstream modules register, so a wrong key name
is a KeyError here. BatchNorm layers are in eval mode: running statistics, no updates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .openpcdet_config import BACKBONE_BN_EPS, HEAD_BN_EPS, CenterPointConfig
from .sparse_conv import SparseVolume, sparse_conv3d, subm_conv3d, to_dense

State = Mapping[str, torch.Tensor]
# Called with (prefix, input) before each BatchNorm; only random_checkpoint's calibration uses it.
_BN_OBSERVERS: list[Callable[[str, torch.Tensor], None]] = []


@contextmanager
def observe_batch_norm(observer: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Within the block, ``observer(prefix, x)`` runs before every BatchNorm reads its state."""
    _BN_OBSERVERS.append(observer)
    try:
        yield
    finally:
        _BN_OBSERVERS.remove(observer)


def _bn(x: torch.Tensor, state: State, prefix: str, eps: float) -> torch.Tensor:
    """Eval-mode BatchNorm1d/2d (channels on dim 1) with the weights at ``prefix``."""
    for observer in _BN_OBSERVERS:
        observer(prefix, x)
    return F.batch_norm(
        x,
        state[f"{prefix}.running_mean"],
        state[f"{prefix}.running_var"],
        state[f"{prefix}.weight"],
        state[f"{prefix}.bias"],
        training=False,
        eps=eps,
    )


def _sparse_bn_relu(x: SparseVolume, state: State, prefix: str, relu: bool = True) -> SparseVolume:
    out = _bn(x.features, state, prefix, BACKBONE_BN_EPS)
    return x.with_features(F.relu(out) if relu else out)


def _post_act_block(
    x: SparseVolume, state: State, prefix: str, padding: tuple[int, int, int]
) -> SparseVolume:
    """spconv_backbone.py lines 8-27 (``post_act_block``, conv_type 'spconv'):
    SparseConv3d(k 3, stride 2, ``padding``, bias=False) -> BatchNorm1d -> ReLU,
    keys ``{prefix}.0.weight`` and ``{prefix}.1.*``."""
    x = sparse_conv3d(x, state[f"{prefix}.0.weight"], None, (2, 2, 2), padding)
    return _sparse_bn_relu(x, state, f"{prefix}.1")


def _basic_block(x: SparseVolume, state: State, prefix: str, bias: bool) -> SparseVolume:
    """spconv_backbone.py lines 30-67 (``SparseBasicBlock``): conv1 -> bn1 -> relu -> conv2 ->
    bn2 -> + identity -> relu. conv1/conv2 are SubMConv3d(k 3) and carry a bias when the
    block was built with bias=True (the nuScenes configs: see ``sparse_block_bias``)."""
    b1 = state[f"{prefix}.conv1.bias"] if bias else None
    out = subm_conv3d(x, state[f"{prefix}.conv1.weight"], b1)
    out = _sparse_bn_relu(out, state, f"{prefix}.bn1")
    b2 = state[f"{prefix}.conv2.bias"] if bias else None
    out = subm_conv3d(out, state[f"{prefix}.conv2.weight"], b2)
    out = _sparse_bn_relu(out, state, f"{prefix}.bn2", relu=False)
    return out.with_features(F.relu(out.features + x.features))  # downsample is None


def backbone_3d(
    features: torch.Tensor, coords: torch.Tensor, state: State, cfg: CenterPointConfig
) -> torch.Tensor:
    """VoxelResBackBone8x (spconv_backbone.py lines 184-295) -> encoded volume (C, D, H, W).

    features (M, F) from MeanVFE; coords (M, 3) (z, y, x) in ``cfg.sparse_shape``.
    """
    p = "backbone_3d"
    x = SparseVolume(features, coords.long(), cfg.sparse_shape)
    # lines 193-197: conv_input = SubMConv3d(F, 16, 3, bias=False) -> BN -> ReLU
    x = subm_conv3d(x, state[f"{p}.conv_input.0.weight"], None)
    x = _sparse_bn_relu(x, state, f"{p}.conv_input.1")
    # lines 200-203: conv1 = two SparseBasicBlocks at full resolution
    for j in range(2):
        x = _basic_block(x, state, f"{p}.conv1.{j}", cfg.sparse_block_bias)
    # lines 205-224: conv2..conv4 = strided post_act_block + two SparseBasicBlocks; conv4 does
    # not pad z (padding (0, 1, 1)), which takes D 11 -> 5
    for name, padding in (("conv2", (1, 1, 1)), ("conv3", (1, 1, 1)), ("conv4", (0, 1, 1))):
        x = _post_act_block(x, state, f"{p}.{name}.0", padding)
        for j in (1, 2):
            x = _basic_block(x, state, f"{p}.{name}.{j}", cfg.sparse_block_bias)
    # lines 226-234: conv_out = SparseConv3d(k (3,1,1), stride (2,1,1), padding last_pad=0)
    x = sparse_conv3d(x, state[f"{p}.conv_out.0.weight"], None, (2, 1, 1), (0, 0, 0))
    x = _sparse_bn_relu(x, state, f"{p}.conv_out.1")
    return to_dense(x)


def height_compression(encoded: torch.Tensor) -> torch.Tensor:
    """height_compression.py lines 20-24: dense (C, D, H, W) -> (C * D, H, W); BEV channel
    c * D + d holds channel c at height slice d."""
    c, d, h, w = encoded.shape
    return encoded.reshape(c * d, h, w)


def backbone_2d(
    spatial_features: torch.Tensor, state: State, cfg: CenterPointConfig
) -> torch.Tensor:
    """BaseBEVBackbone (base_bev_backbone.py lines 7-112): (C, H, W) -> (sum(up filters), H, W).

    Per level (lines 31-46): ZeroPad2d(1) [index 0, no weights] -> Conv2d(k 3, stride,
    padding 0, bias=False) [1] -> BN [2] -> ReLU [3], then ``layer_nums`` x (Conv2d(k 3,
    padding 1, bias=False) [4 + 3k] -> BN [5 + 3k] -> ReLU). Deblock (lines 47-58):
    ConvTranspose2d(k = stride = upsample stride, bias=False) [0] -> BN [1] -> ReLU.
    Levels are concatenated on channels (lines 102-103).
    """
    if any(s < 1 for s in cfg.upsample_strides) or len(cfg.upsample_strides) != len(cfg.layer_nums):
        raise ValueError("only upsample strides >= 1, one per level, are restated (as configured)")
    x = spatial_features[None]
    ups = []
    for i, (layers, stride) in enumerate(zip(cfg.layer_nums, cfg.layer_strides, strict=True)):
        b = f"backbone_2d.blocks.{i}"
        x = F.conv2d(F.pad(x, (1, 1, 1, 1)), state[f"{b}.1.weight"], stride=stride)
        x = F.relu(_bn(x, state, f"{b}.2", BACKBONE_BN_EPS))
        for k in range(layers):
            x = F.conv2d(x, state[f"{b}.{4 + 3 * k}.weight"], padding=1)
            x = F.relu(_bn(x, state, f"{b}.{5 + 3 * k}", BACKBONE_BN_EPS))
        d = f"backbone_2d.deblocks.{i}"
        up_stride = cfg.upsample_strides[i]
        up = F.conv_transpose2d(x, state[f"{d}.0.weight"], stride=up_stride)
        ups.append(F.relu(_bn(up, state, f"{d}.1", BACKBONE_BN_EPS)))
    return torch.cat(ups, dim=1)[0]


def _conv_bn_relu_head(x: torch.Tensor, state: State, prefix: str, bias: bool) -> torch.Tensor:
    """Conv2d(k 3, padding 1, bias=USE_BIAS_BEFORE_NORM) [.0] -> BatchNorm2d(eps 1e-5) [.1] -> ReLU."""
    b = state[f"{prefix}.0.bias"] if bias else None
    x = F.conv2d(x, state[f"{prefix}.0.weight"], b, padding=1)
    return F.relu(_bn(x, state, f"{prefix}.1", HEAD_BN_EPS))


def head_names(cfg: CenterPointConfig, task: int) -> list[tuple[str, int, int]]:
    """(name, out_channels, num_conv) of one SeparateHead, in registration order:
    HEAD_DICT order then 'hm' (center_head.py lines 87-88, SeparateHead lines 17-39)."""
    return [*cfg.head_dict, ("hm", len(cfg.class_names_each_head[task]), cfg.num_hm_conv)]


def center_head(
    x: torch.Tensor, state: State, cfg: CenterPointConfig
) -> list[dict[str, torch.Tensor]]:
    """CenterHead.forward (center_head.py lines 385-391) -> per task, name -> raw map (C, H, W).

    shared_conv (lines 75-82): Conv2d(k 3, padding 1, bias=USE_BIAS_BEFORE_NORM) -> BN -> ReLU.
    SeparateHead (lines 12-46): per name, (num_conv - 1) x [Conv2d(k 3, bias=use_bias) -> BN ->
    ReLU] at ``{name}.{k}.{0,1}``, then Conv2d(k 3, bias=True) at ``{name}.{num_conv - 1}``.
    Raw outputs: no sigmoid on 'hm', no exp on 'dim' (those happen in decoding).
    """
    bias = cfg.use_bias_before_norm
    shared = _conv_bn_relu_head(x[None], state, "dense_head.shared_conv", bias)
    tasks = []
    for t in range(len(cfg.class_names_each_head)):
        maps = {}
        for name, _out, num_conv in head_names(cfg, t):
            h = shared
            prefix = f"dense_head.heads_list.{t}.{name}"
            for k in range(num_conv - 1):
                h = _conv_bn_relu_head(h, state, f"{prefix}.{k}", bias)
            last = f"{prefix}.{num_conv - 1}"
            h = F.conv2d(h, state[f"{last}.weight"], state[f"{last}.bias"], padding=1)
            maps[name] = h[0]
        tasks.append(maps)
    return tasks
