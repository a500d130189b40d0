"""Per-field storage codecs: how a float32 field is encoded into Zarr arrays and back.

Every codec stores plain Zarr v3 arrays (no custom Zarr codec), each chunk compressed with
zstd and checksummed with crc32c, so plain zarr reads them. Per field ``F`` with N frames:

=============  ========================================================================
codec          arrays under ``fields/F/`` and how a plain zarr user decodes frame ``i``
=============  ========================================================================
``fp32``       ``data`` float32 (N, ...): ``data[i]``. Lossless.
``fp16``       ``data`` float16: ``data[i].astype(float32)``.
``bf16``       ``data`` uint16 holding the bfloat16 bit pattern (zarr 3.1 has no bfloat16
               dtype; the array attrs say ``"bevkd_dtype": "bfloat16"``):
               ``(data[i].astype(uint32) << 16).view(float32)``.
``bitround-K`` ``data`` float32 whose mantissas were rounded to K bits (numcodecs BitRound,
               applied before writing, so reading needs nothing): ``data[i]``.
``uint8``      8-bit per-frame, per-channel affine quantization: ``data`` uint8 codes in
               0..254, ``scale`` and ``offset`` float32 (N, C):
               ``offset[i][:, None, None] + scale[i][:, None, None] * data[i]``. The channel
               minimum (0 after a ReLU) is exact; the error is at most ``scale / 2``.
``uint4``      4-bit per-frame, per-channel affine quantization, two codes a byte: ``data``
               uint8 (N, C, H, ceil(W/2)), the even column in the low nibble, the odd one in
               the high nibble, codes 0..14; ``scale``, ``offset`` (N, C) as for uint8:
               ``offset + scale * unpack(data[i])``. Error at most ``scale / 2`` =
               (max - min) / 28 per channel.
``pca-K``      per-frame PCA across channels, K components at 4 bits: ``data`` (N, K, H,
               ceil(W/2)) packed as uint4 with ``scale``, ``offset`` (N, K); ``basis``
               (N, C, K) and ``mean`` (N, C) float32:
               ``mean[i][:, None] + basis[i] @ components(i).reshape(K, H*W)``. Lossy by
               design (the rank-K projection); the store records the error it measured.
=============  ========================================================================

Missing chunks read as a sentinel, never as plausible data: float arrays have fill value
NaN (bf16: the bfloat16 NaN pattern), ``uint8`` codes have fill 255 (codes stop at 254),
box counts have fill -1. ``boxes`` fields always use ``fp32``: ``values`` (N, cap, 11) and
``count`` (N,) int32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bevkd.storage.schema import FieldSpec, StoreError

# Measured on the demo teachers' uint8 outputs: level 1 gave 0.719 MB/frame at 6.4 ms/frame,
# level 3 0.714 MB at 11.6 ms. Readers do not care which level wrote a chunk.
ZSTD_LEVEL = 1
BF16_NAN = 0x7FC0
U8_MISSING = 255
U8_LEVELS = 254  # codes 0..254; 255 is the "never written" sentinel
U4_LEVELS = 14  # codes 0..14 per nibble; a byte of 255 (both nibbles 15) is never written


def parse_codec(name: str) -> tuple[str, int]:
    """``"bitround-10"`` -> ("bitround", 10); ``"pca-8"`` -> ("pca", 8); other names ->
    (name, 0)."""
    if name.startswith("bitround-"):
        keep = name.split("-", 1)[1]
        if not keep.isdigit() or not 1 <= int(keep) <= 23:
            raise StoreError(
                f"codec {name!r}: bitround keeps 1..23 mantissa bits, e.g. bitround-10"
            )
        return "bitround", int(keep)
    if name.startswith("pca-"):
        rank = name.split("-", 1)[1]
        if not rank.isdigit() or int(rank) < 1:
            raise StoreError(f"codec {name!r}: pca keeps K >= 1 components, e.g. pca-8")
        return "pca", int(rank)
    if name not in ("fp32", "fp16", "bf16", "uint8", "uint4"):
        raise StoreError(
            f"unknown codec {name!r}; use fp32, fp16, bf16, bitround-K (K=1..23), uint8, "
            "uint4 or pca-K"
        )
    return name, 0


@dataclass(frozen=True)
class ArrayPlan:
    """How to create one Zarr array of a field (frames on axis 0)."""

    dtype: str
    per_frame_shape: tuple[int, ...]
    fill_value: Any
    per_shard_chunk: bool  # one chunk per shard (small per-frame records) vs per frame
    attrs: dict[str, Any]


def array_plans(spec: FieldSpec) -> dict[str, ArrayPlan]:
    """The arrays (``fields/<name>/<key>``) that store a field, by key."""
    if spec.kind == "boxes":
        if spec.codec != "fp32":
            raise StoreError(
                f"field {spec.name!r}: boxes are stored fp32 (lossless), not {spec.codec}"
            )
        return {
            "values": ArrayPlan("float32", spec.shape, float("nan"), False, {}),
            "count": ArrayPlan("int32", (), -1, True, {}),
        }
    kind, _ = parse_codec(spec.codec)
    attrs = {"bevkd_codec": spec.codec}
    if kind in ("fp32", "bitround"):
        return {"data": ArrayPlan("float32", spec.shape, float("nan"), False, attrs)}
    if kind == "fp16":
        return {"data": ArrayPlan("float16", spec.shape, float("nan"), False, attrs)}
    if kind == "bf16":
        attrs["bevkd_dtype"] = "bfloat16"
        return {"data": ArrayPlan("uint16", spec.shape, BF16_NAN, False, attrs)}
    channels = spec.shape[0]
    if kind == "uint8":
        return {
            "data": ArrayPlan("uint8", spec.shape, U8_MISSING, False, attrs),
            "scale": ArrayPlan("float32", (channels,), float("nan"), True, {}),
            "offset": ArrayPlan("float32", (channels,), float("nan"), True, {}),
        }
    codes = channels
    if kind == "pca":
        codes = keep_rank(spec)
    packed = (codes, *spec.shape[1:-1], -(-spec.shape[-1] // 2))
    plans = {
        "data": ArrayPlan("uint8", packed, U8_MISSING, False, attrs),
        "scale": ArrayPlan("float32", (codes,), float("nan"), True, {}),
        "offset": ArrayPlan("float32", (codes,), float("nan"), True, {}),
    }
    if kind == "pca":
        plans["basis"] = ArrayPlan("float32", (channels, codes), float("nan"), True, {})
        plans["mean"] = ArrayPlan("float32", (channels,), float("nan"), True, {})
    return plans


def keep_rank(spec: FieldSpec) -> int:
    """The components a ``pca-K`` field keeps; K must be below its channel count."""
    rank = parse_codec(spec.codec)[1]
    if rank >= spec.shape[0]:
        raise StoreError(
            f"field {spec.name!r}: codec {spec.codec} keeps {rank} components of "
            f"{spec.shape[0]} channels; K must be fewer than the channels (or use uint4)"
        )
    return rank


# ------------------------------------------------------------------------------------------
# Encode / decode (frames on axis 0 throughout)
# ------------------------------------------------------------------------------------------


def encode(spec: FieldSpec, x: np.ndarray) -> dict[str, np.ndarray]:
    """Encode ``(k, C, H, W)`` float32 frames into the arrays of :func:`array_plans`."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    kind, keep = parse_codec(spec.codec)
    if kind == "fp32":
        return {"data": x}
    if kind == "fp16":
        return {"data": x.astype(np.float16)}
    if kind == "bf16":
        return {"data": float32_to_bf16_bits(x)}
    if kind == "bitround":
        return {"data": bitround(x, keep)}
    if kind == "uint4":
        return quantize_u4(x)
    if kind == "pca":
        return pca_encode(x, keep_rank(spec))
    return quantize_u8(x)


@dataclass(frozen=True)
class Encoded:
    """Frames encoded, with what a reader will decode from them and what the encoder learnt.

    ``decoded``: ``decode(spec, parts)``, value for value; ``owns_decoded``: it is a buffer of
    its own (not the input's, not a part's), free to be overwritten; ``extrema``: per-frame,
    per-channel ``(min, max)`` of the input when the codec computed them; ``decoded_range``:
    ``(min, max)`` of ``decoded`` when the codec knows it without a pass.
    """

    parts: dict[str, np.ndarray]
    decoded: np.ndarray
    owns_decoded: bool = False
    extrema: tuple[np.ndarray, np.ndarray] | None = None
    decoded_range: tuple[float, float] | None = None


def encode_decoded(spec: FieldSpec, x: np.ndarray) -> Encoded:
    """:func:`encode`, plus the decoded values and ranges a writer's statistics need.

    The uint8 codec turns its rounded codes into the decoded values in place, and its decoded
    range is each channel's codes 0 and ``U8_LEVELS`` decoded: a channel's minimum and maximum
    round to exactly those.
    """
    if parse_codec(spec.codec)[0] != "uint8":
        parts = encode(spec, x)
        return Encoded(parts, decode(spec, parts))
    x = np.ascontiguousarray(x, dtype=np.float32)
    extrema = channel_extrema(x)
    parts, codes = _quantize_u8(x, extrema)
    scale, offset = parts["scale"][..., None], parts["offset"][..., None]
    codes *= scale  # dequantize_u8's arithmetic, on the same float32 codes
    codes += offset
    known = None
    if codes.size and np.isfinite(scale).all() and np.isfinite(offset).all():
        top = np.float32(U8_LEVELS) * scale
        top += offset
        known = (float(offset.min()), float(top.max()))
    return Encoded(parts, codes.reshape(x.shape), True, extrema, known)


def decode(spec: FieldSpec, parts: dict[str, np.ndarray]) -> np.ndarray:
    """Inverse of :func:`encode`: float32 frames ``(k, C, H, W)`` (or one frame without k)."""
    kind, _ = parse_codec(spec.codec)
    data = parts["data"]
    if kind in ("fp32", "bitround"):
        return np.asarray(data, dtype=np.float32)
    if kind == "fp16":
        return data.astype(np.float32)
    if kind == "bf16":
        return bf16_bits_to_float32(data)
    if kind == "uint4":
        return dequantize_u8(unpack_u4(data, spec.shape[-1]), parts["scale"], parts["offset"])
    if kind == "pca":
        return pca_decode(parts, spec.shape)
    return dequantize_u8(data, parts["scale"], parts["offset"])


def is_missing(spec: FieldSpec, parts: dict[str, np.ndarray]) -> bool:
    """Whether one frame's stored parts are the never-written sentinel (a missing chunk).

    One value per array is enough: a chunk holds one whole frame and is written whole.
    """
    for key, value in parts.items():
        first = value.reshape(-1)[:1]
        if key == "count":
            if first.size and first[0] < 0:
                return True
        elif value.dtype == np.uint8:
            if first.size and first[0] == U8_MISSING:
                return True
        elif value.dtype == np.uint16:
            if first.size and first[0] == BF16_NAN:
                return True
        elif first.size and np.isnan(first[0]):
            return True
    return False


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even); return the uint16 bit patterns."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = BF16_NAN  # rounding could carry a NaN payload into inf
    return out


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def bitround(x: np.ndarray, keepbits: int) -> np.ndarray:
    """numcodecs BitRound: keep ``keepbits`` mantissa bits (round to nearest)."""
    from numcodecs import BitRound

    x = np.ascontiguousarray(x, dtype=np.float32)
    # encode() hands back the rounded bit patterns as int32: view them as floats again.
    return np.asarray(BitRound(keepbits=keepbits).encode(x)).view(np.float32).reshape(x.shape)


def channel_extrema(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame, per-channel ``(min, max)``, each ``(k, C)``, of ``(k, C, ...)`` frames (NaN
    where a channel holds a NaN)."""
    flat = x.reshape(*x.shape[:2], int(np.prod(x.shape[2:])))
    return flat.min(axis=2), flat.max(axis=2)


def quantize_u8(
    x: np.ndarray, extrema: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Per-frame, per-channel affine 8-bit codes for ``(k, C, H, W)`` float32; ``extrema``:
    :func:`channel_extrema` of ``x`` when the caller has them already."""
    return _quantize_u8(x, extrema)[0]


def _quantize_u8(
    x: np.ndarray, extrema: tuple[np.ndarray, np.ndarray] | None, levels: int = U8_LEVELS
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """:func:`quantize_u8` (codes 0..``levels``, one a byte), and the rounded codes as float32
    ``(k, C, H*W)`` (a scratch buffer the caller may overwrite)."""
    k, channels = x.shape[:2]
    flat = x.reshape(k, channels, int(np.prod(x.shape[2:])))
    lo, hi = extrema if extrema is not None else channel_extrema(x)
    scale = ((hi - lo) / levels).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = flat - lo[..., None]  # >= 0, and <= levels after the division and rounding
    codes /= safe[..., None]
    np.rint(codes, out=codes)
    if not np.isfinite(scale).all():
        # NaN input: codes are meaningless; the NaN scale marks the frame and finalize fails.
        np.clip(codes, 0, levels, out=codes)
        codes = np.nan_to_num(codes, nan=0.0)
    data = codes.astype(np.uint8).reshape(x.shape)
    return {"data": data, "scale": scale, "offset": lo.astype(np.float32)}, codes


def dequantize_u8(data: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``offset + scale * code``, per channel; one frame (C, H, W) or frames (k, C, H, W). The
    codes are 8-bit, or 4-bit ones after :func:`unpack_u4`."""
    tail = (1,) * (data.ndim - scale.ndim)
    out = data.astype(np.float32)  # three simple passes beat one mixed-type multiply
    out *= scale.reshape(scale.shape + tail)
    out += offset.reshape(offset.shape + tail)
    return out


def quantize_u4(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame, per-channel affine 4-bit codes of ``(k, C, ..., W)`` float32 (the uint8
    quantizer at :data:`U4_LEVELS`), two a byte along W (even columns in the low nibble; an
    odd W is padded with code 0)."""
    parts, _ = _quantize_u8(x, None, U4_LEVELS)
    codes = parts["data"]
    if x.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*x.shape[:-1], 1), np.uint8)], axis=-1)
    parts["data"] = np.ascontiguousarray(codes[..., 0::2] | (codes[..., 1::2] << 4))
    return parts


def unpack_u4(data: np.ndarray, width: int) -> np.ndarray:
    """The 4-bit codes (..., ``width``) from their packed bytes (..., ceil(width/2))."""
    data = np.asarray(data, dtype=np.uint8)
    codes = np.empty((*data.shape[:-1], 2 * data.shape[-1]), np.uint8)
    codes[..., 0::2] = data & 15
    codes[..., 1::2] = data >> 4
    return codes[..., :width]


def pca_encode(x: np.ndarray, rank: int) -> dict[str, np.ndarray]:
    """Per frame of ``(k, C, ...)``: the channel mean, the top-``rank`` principal directions
    across channels (``basis`` (C, rank), from the eigendecomposition of the C x C
    covariance) and the components on them, quantized as :func:`quantize_u4`."""
    k, channels = x.shape[:2]
    spatial = x.shape[2:]
    flat = x.reshape(k, channels, -1).astype(np.float64)
    mean = flat.mean(axis=2)
    centred = flat - mean[..., None]
    basis = np.empty((k, channels, rank), np.float64)
    for i in range(k):
        if not np.isfinite(centred[i]).all():
            basis[i] = np.nan  # NaN input: the NaN basis marks the frame and finalize fails
            continue
        _, vectors = np.linalg.eigh(centred[i] @ centred[i].T)  # ascending eigenvalues
        basis[i] = vectors[:, ::-1][:, :rank]
    components = np.einsum("kcr,kcp->krp", basis, np.nan_to_num(centred))
    parts = quantize_u4(components.astype(np.float32).reshape(k, rank, *spatial))
    if not np.isfinite(basis).all():
        parts["scale"][~np.isfinite(basis).all(axis=(1, 2))] = np.nan
    parts["basis"] = basis.astype(np.float32)
    parts["mean"] = mean.astype(np.float32)
    return parts


def pca_decode(parts: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pca_encode` (one frame or frames): ``mean + basis @ components``."""
    basis, mean = parts["basis"], parts["mean"]
    components = dequantize_u8(unpack_u4(parts["data"], shape[-1]), parts["scale"], parts["offset"])
    flat = components.reshape(*components.shape[: basis.ndim - 1], -1)
    out = np.matmul(basis, flat) + mean[..., None]
    return out.reshape(*basis.shape[:-2], *shape).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------
# Boxes (ragged rows padded to the field's capacity)
# ------------------------------------------------------------------------------------------


def encode_boxes(
    spec: FieldSpec, rows: list[np.ndarray], frames: list[int]
) -> dict[str, np.ndarray]:
    """Pad per-frame ``(N_i, 11)`` rows to ``(k, capacity, 11)`` plus counts ``(k,)``."""
    capacity, width = spec.shape
    values = np.zeros((len(rows), capacity, width), np.float32)
    count = np.zeros(len(rows), np.int32)
    for slot, (frame, one) in enumerate(zip(frames, rows, strict=True)):
        one = np.asarray(one, dtype=np.float32).reshape(-1, width)
        if len(one) > capacity:
            raise StoreError(
                f"frame {frame}: field {spec.name!r} has {len(one)} boxes, more than its capacity "
                f"{capacity}; keep the top-{capacity} by score or raise the field's capacity"
            )
        values[slot, : len(one)] = one
        count[slot] = len(one)
    return {"values": values, "count": count}


def decode_boxes(parts: dict[str, np.ndarray]) -> np.ndarray:
    """One frame's ``(N, 11)`` rows."""
    return np.asarray(parts["values"][: int(parts["count"])], dtype=np.float32)
