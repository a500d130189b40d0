"""Sparse 3D convolutions with spconv's semantics, written out in torch (no spconv call).

OpenPCDet's backbone runs ``spconv.SubMConv3d`` and ``spconv.SparseConv3d``. Their meaning
(spconv 2.x, ``spconv/pytorch/conv.py``) is a dense cross-correlation evaluated on a sparse set
of sites, with absent sites reading as zero:

- submanifold (``SubMConv3d``): the output sites are exactly the input sites, in the same
  order; output[o] = sum over kernel offsets k of W[k] @ x[o + k - k_centre] over present
  inputs. ``padding`` and ``stride`` do not apply.
- regular (``SparseConv3d``): output shape (S + 2p - K) // s + 1 per axis; an output site is
  present when at least one present input falls in its window, input i = o * s - p + k;
  output[o] = sum of W[k] @ x[i] over those inputs.

Output shapes: spconv 2.3.8 ``spconv/pytorch/conv.py`` lines 186-196 (a submanifold conv keeps
the input's shape) and ``spconv/pytorch/ops.py`` lines 73-83 (``get_conv_output_size``).
Weights are in spconv 2.x layout (C_out, kD, kH, kW, C_in), the layout OpenPCDet saves with
spconv 2 (``spconv.constants.ALL_WEIGHT_IS_KRSC``); W[:, kd, kh, kw, :] is the matrix of the
offset (kd, kh, kw), as torch's conv3d weight ``W.permute(0, 4, 1, 2, 3)`` would hold it.

Written here rather than calling spconv so the reference shares no code path with the model
under test (bevkd patches spconv's CPU convolution in-process), and because spconv 2.3.8's
CPU scatter races with more than one torch thread. The tests check it against dense conv3d.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SparseVolume:
    """Present sites of one frame's 3D grid.

    features: (N, C); coords: (N, 3) int64 (z, y, x); shape: (D, H, W) grid extent.
    ``rules`` caches submanifold neighbour lists per kernel size; it travels with the sites
    (``with_features``), as spconv's ``indice_key`` shares them between convs.
    """

    features: torch.Tensor
    coords: torch.Tensor
    shape: tuple[int, int, int]
    rules: dict[tuple[int, ...], list[tuple[int, torch.Tensor, torch.Tensor]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def with_features(self, features: torch.Tensor) -> SparseVolume:
        return SparseVolume(features, self.coords, self.shape, self.rules)


def _linear(coords: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    return (coords[:, 0] * shape[1] + coords[:, 1]) * shape[2] + coords[:, 2]


def _subm_rules(
    x: SparseVolume, kernel: tuple[int, ...]
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per kernel offset (flat index into kD*kH*kW): (offset, output rows, input rows) with
    input site = output site + offset - kernel // 2, both present."""
    if kernel in x.rules:
        return x.rules[kernel]
    n = x.coords.shape[0]
    sorted_keys, perm = torch.sort(_linear(x.coords, x.shape))
    bounds = torch.tensor(x.shape)
    rules = []
    for index, offset in enumerate(itertools.product(*(range(k) for k in kernel))):
        shift = torch.tensor([o - k // 2 for o, k in zip(offset, kernel, strict=True)])
        neighbour = x.coords + shift
        inside = ((neighbour >= 0) & (neighbour < bounds)).all(dim=1)
        query = _linear(neighbour, x.shape)
        pos = torch.searchsorted(sorted_keys, query).clamp(max=max(n - 1, 0))
        hit = inside & (sorted_keys[pos] == query)
        rows = torch.nonzero(hit).flatten()
        if rows.numel():
            rules.append((index, rows, perm[pos[rows]]))
    x.rules[kernel] = rules
    return rules


def subm_conv3d(x: SparseVolume, weight: torch.Tensor, bias: torch.Tensor | None) -> SparseVolume:
    """Submanifold conv: same sites in, same sites out. weight (C_out, kD, kH, kW, C_in)."""
    flat = weight.reshape(weight.shape[0], -1, weight.shape[-1])  # (C_out, K, C_in)
    out = x.features.new_zeros((x.coords.shape[0], weight.shape[0]))
    for index, out_rows, in_rows in _subm_rules(x, tuple(weight.shape[1:4])):
        out.index_add_(0, out_rows, x.features[in_rows] @ flat[:, index, :].T)
    if bias is not None:
        out = out + bias
    return x.with_features(out)


def sparse_conv3d(
    x: SparseVolume,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
) -> SparseVolume:
    """Regular sparse conv; output sites sorted by (z, y, x). weight (C_out, kD, kH, kW, C_in)."""
    kernel = weight.shape[1:4]
    out_shape = tuple(
        (s + 2 * p - k) // st + 1
        for s, p, k, st in zip(x.shape, padding, kernel, stride, strict=True)
    )
    stride_t, pad_t, bound_t = torch.tensor(stride), torch.tensor(padding), torch.tensor(out_shape)
    out_keys, in_rows, offsets = [], [], []
    for index, offset in enumerate(itertools.product(*(range(k) for k in kernel))):
        # o * s = i + p - k must be a whole output site inside the output grid
        scaled = x.coords + pad_t - torch.tensor(offset)
        whole = (scaled % stride_t == 0).all(dim=1)
        site = torch.div(scaled, stride_t, rounding_mode="floor")
        ok = whole & ((site >= 0) & (site < bound_t)).all(dim=1)
        out_keys.append(_linear(site[ok], out_shape))  # type: ignore[arg-type]
        in_rows.append(torch.nonzero(ok).flatten())
        offsets.append(torch.full((int(ok.sum()),), index, dtype=torch.long))
    keys = torch.cat(out_keys)
    unique, slot = torch.unique(keys, sorted=True, return_inverse=True)
    rows, which = torch.cat(in_rows), torch.cat(offsets)
    flat = weight.reshape(weight.shape[0], -1, weight.shape[-1])  # (C_out, K, C_in)
    out = x.features.new_zeros((unique.shape[0], weight.shape[0]))
    for index in range(flat.shape[1]):
        sel = which == index
        if sel.any():
            out.index_add_(0, slot[sel], x.features[rows[sel]] @ flat[:, index, :].T)
    if bias is not None:
        out = out + bias
    h, w = out_shape[1], out_shape[2]
    coords = torch.stack([unique // (h * w), (unique // w) % h, unique % w], dim=1)
    return SparseVolume(out, coords, out_shape)  # type: ignore[arg-type]


def to_dense(x: SparseVolume) -> torch.Tensor:
    """(C, D, H, W), zero where no site is present (spconv's ``SparseConvTensor.dense()``)."""
    dense = x.features.new_zeros((x.features.shape[1], *x.shape))
    z, y, w = x.coords.unbind(dim=1)
    dense[:, z, y, w] = x.features.T
    return dense
