"""The state-dict layout of OpenPCDet's CenterPoint: every key, its shape, in order.

``state_dict_spec`` lists the keys (in ``state_dict()`` order) and shapes that OpenPCDet's
modules register, transcribed from the module constructors of OpenPCDet commit
8cacccec11db6f59bf6934600c9a175dae254806. ``kind`` says what a tensor is (for loading and for
random initialisation): spconv / conv / deconv weights, biases, BatchNorm parts, and the
output convs of the head (``conv_out``, ``hm_out`` and their biases).
"""

from __future__ import annotations

from .openpcdet_config import CenterPointConfig

Spec = list[tuple[str, tuple[int, ...], str]]  # (key, shape, kind)


def _bn(prefix: str, c: int) -> Spec:
    # torch BatchNorm registers weight, bias, then buffers running_mean, running_var,
    # num_batches_tracked (a 0-d int64)
    return [
        (f"{prefix}.weight", (c,), "bn_weight"),
        (f"{prefix}.bias", (c,), "bn_bias"),
        (f"{prefix}.running_mean", (c,), "bn_mean"),
        (f"{prefix}.running_var", (c,), "bn_var"),
        (f"{prefix}.num_batches_tracked", (), "bn_count"),
    ]


def _spconv(prefix: str, cin: int, cout: int, kernel: tuple[int, int, int], bias: bool) -> Spec:
    # spconv 2.x weight (C_out, kD, kH, kW, C_in), then bias (C_out,) when bias=True
    spec: Spec = [(f"{prefix}.weight", (cout, *kernel, cin), "spconv")]
    return spec + ([(f"{prefix}.bias", (cout,), "bias")] if bias else [])


def _backbone_3d(cfg: CenterPointConfig) -> Spec:
    """spconv_backbone.py lines 184-234 (VoxelResBackBone8x.__init__)."""
    p, k3 = "backbone_3d", (3, 3, 3)
    c1, c2, c3, c4 = cfg.sparse_channels
    spec = _spconv(f"{p}.conv_input.0", cfg.num_point_features, c1, k3, False)
    spec += _bn(f"{p}.conv_input.1", c1)

    def block(prefix: str, c: int) -> Spec:  # SparseBasicBlock, lines 30-49
        b = cfg.sparse_block_bias
        return (
            _spconv(f"{prefix}.conv1", c, c, k3, b)
            + _bn(f"{prefix}.bn1", c)
            + _spconv(f"{prefix}.conv2", c, c, k3, b)
            + _bn(f"{prefix}.bn2", c)
        )

    spec += block(f"{p}.conv1.0", c1) + block(f"{p}.conv1.1", c1)
    for name, cin, cout in (("conv2", c1, c2), ("conv3", c2, c3), ("conv4", c3, c4)):
        # post_act_block (lines 8-27): SparseConv3d(bias=False) [0], BN [1], ReLU [2]
        spec += _spconv(f"{p}.{name}.0.0", cin, cout, k3, False) + _bn(f"{p}.{name}.0.1", cout)
        spec += block(f"{p}.{name}.1", cout) + block(f"{p}.{name}.2", cout)
    spec += _spconv(f"{p}.conv_out.0", c4, cfg.sparse_out_channels, (3, 1, 1), False)
    return spec + _bn(f"{p}.conv_out.1", cfg.sparse_out_channels)


def _backbone_2d(cfg: CenterPointConfig) -> Spec:
    """base_bev_backbone.py lines 26-58 (BaseBEVBackbone.__init__; ZeroPad2d at index 0 and
    the ReLUs have no weights)."""
    spec: Spec = []
    c_in = [cfg.num_bev_features, *cfg.num_filters[:-1]]
    for i, (layers, cout) in enumerate(zip(cfg.layer_nums, cfg.num_filters, strict=True)):
        b = f"backbone_2d.blocks.{i}"
        spec += [(f"{b}.1.weight", (cout, c_in[i], 3, 3), "conv"), *_bn(f"{b}.2", cout)]
        for k in range(layers):
            spec += [(f"{b}.{4 + 3 * k}.weight", (cout, cout, 3, 3), "conv")]
            spec += _bn(f"{b}.{5 + 3 * k}", cout)
    for i, (stride, cout) in enumerate(
        zip(cfg.upsample_strides, cfg.num_upsample_filters, strict=True)
    ):
        d = f"backbone_2d.deblocks.{i}"
        # ConvTranspose2d weight is (C_in, C_out, k, k)
        spec += [(f"{d}.0.weight", (cfg.num_filters[i], cout, stride, stride), "deconv")]
        spec += _bn(f"{d}.1", cout)
    return spec


def _dense_head(cfg: CenterPointConfig) -> Spec:
    """center_head.py lines 75-97 (shared_conv, heads_list) and 12-39 (SeparateHead)."""
    c_in, c = sum(cfg.num_upsample_filters), cfg.shared_conv_channel
    bias = cfg.use_bias_before_norm
    spec: Spec = [("dense_head.shared_conv.0.weight", (c, c_in, 3, 3), "conv")]
    spec += [("dense_head.shared_conv.0.bias", (c,), "bias")] if bias else []
    spec += _bn("dense_head.shared_conv.1", c)
    for t, names in enumerate(cfg.class_names_each_head):
        heads = [*cfg.head_dict, ("hm", len(names), cfg.num_hm_conv)]
        for name, out, num_conv in heads:
            h = f"dense_head.heads_list.{t}.{name}"
            for k in range(num_conv - 1):
                spec += [(f"{h}.{k}.0.weight", (c, c, 3, 3), "conv")]
                spec += [(f"{h}.{k}.0.bias", (c,), "bias")] if bias else []
                spec += _bn(f"{h}.{k}.1", c)
            last = "hm" if name == "hm" else "conv"
            spec += [(f"{h}.{num_conv - 1}.weight", (out, c, 3, 3), f"{last}_out")]
            spec += [(f"{h}.{num_conv - 1}.bias", (out,), f"{last}_out_bias")]
    return spec


def state_dict_spec(cfg: CenterPointConfig) -> Spec:
    """All (key, shape, kind) of CenterPoint.state_dict() in order: ``global_step`` (a buffer
    registered first, detector3d_template.py line 21), then the modules in
    ``module_topology`` order (lines 23-26): vfe (MeanVFE: none), backbone_3d,
    map_to_bev_module (none), backbone_2d, dense_head (its loss modules hold none)."""
    spec: Spec = [("global_step", (1,), "step")]
    return spec + _backbone_3d(cfg) + _backbone_2d(cfg) + _dense_head(cfg)
