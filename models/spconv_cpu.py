"""Fix for spconv 2.3.8's CPU path, applied by the LiDAR teacher's sparse encoder on import.

Two bugs, in ``spconv/pytorch/ops.py`` (``indice_conv`` / ``indice_conv_backward``, the
gather-mm-scatter loop that runs for CPU tensors with the Native algorithm):

1. ``indice_conv_backward`` calls ``get_current_stream()`` (``torch.cuda.current_stream()``)
   before it checks the device, so every backward pass raises on a machine without CUDA.
2. ``SpconvOps.scatter_add_cpu`` (C++) races when torch runs more than one thread: with two
   threads about half of its calls came out wrong (none with one thread; ``gather_cpu`` was
   always right), so outputs and gradients of every convolution are wrong.

The fix: ``ops.indice_conv`` and ``ops.indice_conv_backward`` are wrapped so that CPU
tensors take the same gather-mm-scatter algorithm written in torch (``index_select``, ``mm``,
``index_add_``, which is correct under any thread count) and CUDA tensors call the original
function unchanged. Single-threaded, torch's ``index_add_`` is ~2.5x slower than the C++
scatter; that is the price of correctness, and two threads win it back. ``get_current_stream``, bound by name in ``cppcore``, ``ops``, ``hash``
and ``utils``, returns stream 0 when CUDA is unavailable, for the CPU branches that ask anyway.

Also note (not a bug this module can fix): spconv reads index tensors without looking at
strides, so ``SparseConvTensor`` indices must be contiguous (``torch.nonzero(...).int()`` is
not). The sparse encoder makes them so.

``apply()`` is idempotent. spconv is imported only inside it, never at bevkd import time.
"""

from __future__ import annotations

import functools
import importlib
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch

_LOCK = threading.Lock()
_APPLIED = False
# modules that bind ``get_current_stream`` by name (``from ... import get_current_stream``)
_STREAM_USERS = (
    "spconv.pytorch.cppcore",
    "spconv.pytorch.ops",
    "spconv.pytorch.hash",
    "spconv.pytorch.utils",
)


def _per_offset(filters: torch.Tensor, krsc: bool, hwio: bool) -> torch.Tensor:
    """spconv filters -> (KV, C_in, C_out) matrices, one per kernel offset (a view)."""
    if krsc:  # (C_out, *kernel, C_in)
        return filters.reshape(filters.shape[0], -1, filters.shape[-1]).permute(1, 2, 0)
    if hwio:  # (*kernel, C_in, C_out)
        return filters.reshape(-1, filters.shape[-2], filters.shape[-1])
    return filters.reshape(-1, filters.shape[-2], filters.shape[-1]).transpose(
        1, 2
    )  # (*kernel, C_out, C_in)


def _pair_counts(indice_pair_num: torch.Tensor, subm: bool) -> list[int]:
    """Valid pairs per offset; for submanifold convs spconv stores only the first half's
    counts, the second half mirrors it (offset i pairs with KV - 1 - i)."""
    counts = indice_pair_num.cpu().tolist()
    kv = len(counts)
    if subm:
        counts = [
            0 if i == kv // 2 else counts[kv - 1 - i] if i > kv // 2 else counts[i]
            for i in range(kv)
        ]
    return counts


def indice_conv_cpu(
    features: torch.Tensor,
    filters: torch.Tensor,
    indice_pairs: torch.Tensor,
    indice_pair_num: torch.Tensor,
    num_activate_out: int,
    inverse: bool = False,
    subm: bool = False,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sparse conv forward on CPU: features (N_in, C_in) -> (num_activate_out, C_out)."""
    from spconv import constants

    weights = _per_offset(filters, constants.ALL_WEIGHT_IS_KRSC, constants.FILTER_HWIO)
    kv = weights.shape[0]
    pair_in, pair_out = indice_pairs[int(inverse)], indice_pairs[int(not inverse)]
    if subm:  # every site is its own centre pair
        out = features @ weights[kv // 2]
    else:
        out = features.new_zeros((num_activate_out, weights.shape[2]))
    for i, n in enumerate(_pair_counts(indice_pair_num, subm)):
        if n > 0:
            gathered = features.index_select(0, pair_in[i, :n])
            # int64 indices: torch's int32 index_add_ path measured 3-5x slower on CPU
            out.index_add_(0, pair_out[i, :n].long(), gathered @ weights[i])
    if bias is not None:
        out += bias
    return out


def indice_conv_backward_cpu(
    features: torch.Tensor,
    filters: torch.Tensor,
    out_bp: torch.Tensor,
    indice_pairs: torch.Tensor,
    indice_pair_num: torch.Tensor,
    inverse: bool = False,
    subm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (d features (N_in, C_in), d filters in spconv's filter layout) on CPU."""
    from spconv import constants

    krsc, hwio = constants.ALL_WEIGHT_IS_KRSC, constants.FILTER_HWIO
    weights = _per_offset(filters, krsc, hwio)
    kv = weights.shape[0]
    features, out_bp = features.contiguous(), out_bp.contiguous()
    pair_in, pair_out = indice_pairs[int(inverse)], indice_pairs[int(not inverse)]
    dweights = torch.zeros_like(weights.contiguous())  # (KV, C_in, C_out)
    if subm:
        dweights[kv // 2] = features.T @ out_bp
        din = out_bp @ weights[kv // 2].T
    else:
        din = torch.zeros_like(features)
    for i, n in enumerate(_pair_counts(indice_pair_num, subm)):
        if n > 0:
            inp = features.index_select(0, pair_in[i, :n])
            grad = out_bp.index_select(0, pair_out[i, :n])
            dweights[i] = inp.T @ grad
            din.index_add_(0, pair_in[i, :n].long(), grad @ weights[i].T)
    # back to spconv's filter layout, the inverse of _per_offset
    if krsc:
        dfilters = dweights.permute(2, 0, 1).reshape(filters.shape)
    elif hwio:
        dfilters = dweights.reshape(filters.shape)
    else:
        dfilters = dweights.transpose(1, 2).reshape(filters.shape)
    return din, dfilters.contiguous()


def _dispatch_conv(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def indice_conv(features: torch.Tensor, filters: torch.Tensor, indice_pairs: torch.Tensor, indice_pair_num: torch.Tensor,
                    num_activate_out: int, inverse: bool = False, subm: bool = False, **kwargs: Any) -> torch.Tensor:  # fmt: skip
        from cumm import tensorview as tv

        args = (features, filters, indice_pairs, indice_pair_num, num_activate_out, inverse, subm)
        act = kwargs.get("act_type", tv.gemm.Activation.None_)
        if features.is_cuda or act != tv.gemm.Activation.None_:
            return original(*args, **kwargs)
        return indice_conv_cpu(*args, kwargs.get("bias"))

    indice_conv.bevkd_cpu_fix = True  # type: ignore[attr-defined]
    return indice_conv


def _dispatch_backward(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def indice_conv_backward(features: torch.Tensor, filters: torch.Tensor, out_bp: torch.Tensor, indice_pairs: torch.Tensor,
                             indice_pair_num: torch.Tensor, inverse: bool = False, subm: bool = False, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        if features.is_cuda:
            return original(
                features, filters, out_bp, indice_pairs, indice_pair_num, inverse, subm, **kwargs
            )
        return indice_conv_backward_cpu(
            features, filters, out_bp, indice_pairs, indice_pair_num, inverse, subm
        )

    indice_conv_backward.bevkd_cpu_fix = True  # type: ignore[attr-defined]
    return indice_conv_backward


def _stream_or_zero(original: Callable[[], int]) -> Callable[[], int]:
    @functools.wraps(original)
    def get_current_stream() -> int:
        # Without CUDA there is no stream to ask for; the CPU branches ignore it anyway.
        return original() if torch.cuda.is_available() else 0

    get_current_stream.bevkd_cpu_fix = True  # type: ignore[attr-defined]
    return get_current_stream


def apply() -> None:
    """Patch spconv's CPU path (both bugs above). Safe to call any number of times."""
    global _APPLIED
    with _LOCK:
        if _APPLIED:
            return
        # spconv's dense() indexes with a list (deprecated in torch 2.9): one warning per call.
        warnings.filterwarnings(
            "ignore", message="Using a non-tuple sequence", category=UserWarning
        )
        for name in _STREAM_USERS:
            module: Any = importlib.import_module(name)
            if not getattr(module.get_current_stream, "bevkd_cpu_fix", False):
                module.get_current_stream = _stream_or_zero(module.get_current_stream)
        ops: Any = importlib.import_module("spconv.pytorch.ops")
        if not getattr(ops.indice_conv, "bevkd_cpu_fix", False):
            ops.indice_conv = _dispatch_conv(ops.indice_conv)
        if not getattr(ops.indice_conv_backward, "bevkd_cpu_fix", False):
            ops.indice_conv_backward = _dispatch_backward(ops.indice_conv_backward)
        _APPLIED = True


def is_applied() -> bool:
    """Whether :func:`apply` has patched spconv in this process."""
    return _APPLIED
