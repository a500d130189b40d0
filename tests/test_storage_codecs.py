"""Codecs: each one's error against an independent reference, sentinels, default sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bevkd.storage import codecs
from bevkd.storage.fields import bev_feature_field
from bevkd.storage.reader import open_store
from bevkd.storage.schema import StoreError
from bevkd.storage.testing import demo_contract, synthetic_frame, write_store


def _spec(codec: str):
    return bev_feature_field("f", 3, 8, 8, codec=codec)


def _data(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, (2, 3, 8, 8)).astype(np.float32)
    return np.maximum(x, 0)  # ReLU-like: many exact zeros


def test_bf16_matches_torch_rounding() -> None:
    x = np.concatenate([_data().ravel(), [1e-30, -2.5e7, 3.14159, np.inf, -np.inf]]).astype(
        np.float32
    )
    bits = codecs.float32_to_bf16_bits(x)
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bits, want)
    np.testing.assert_array_equal(
        codecs.bf16_bits_to_float32(bits), torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    )
    assert codecs.float32_to_bf16_bits(np.array([np.nan], np.float32))[0] == codecs.BF16_NAN


@pytest.mark.parametrize(
    ("codec", "rel_bound"),
    [
        ("fp32", 0.0),
        ("fp16", 2.0**-11),
        ("bf16", 2.0**-8),
        ("bitround-10", 2.0**-11),
        ("bitround-4", 2.0**-5),
    ],
)
def test_float_codecs_have_their_relative_error_bound(codec: str, rel_bound: float) -> None:
    x = _data()
    out = codecs.decode(_spec(codec), codecs.encode(_spec(codec), x))
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.all(np.abs(out - x) <= rel_bound * np.abs(x) + 1e-30)
    assert np.all(out[x == 0] == 0)


def test_bitround_zeroes_the_dropped_mantissa_bits() -> None:
    bits = codecs.bitround(_data(), 6).view(np.uint32)
    assert np.all(bits & np.uint32((1 << (23 - 6)) - 1) == 0)


@pytest.mark.parametrize("codec", ["uint8", "fp16", "bf16", "fp32"])
def test_encode_decoded_gives_what_a_reader_decodes_and_its_range(codec: str) -> None:
    rng = np.random.default_rng(7)
    x = (
        rng.normal(0, 1, (3, 3, 8, 8)).astype(np.float32)
        * np.float32([[1e-3], [10], [3e3]])[..., None]
    )
    x[1, 2] = -7.25  # a constant channel
    x[2, 0, 3, 3] = np.float32(1e-38)  # a subnormal-range value among large ones
    spec = _spec(codec)
    encoded = codecs.encode_decoded(spec, x)
    parts, decoded, known = encoded.parts, encoded.decoded, encoded.decoded_range
    want = codecs.encode(spec, x)
    assert parts.keys() == want.keys()
    for key in parts:
        np.testing.assert_array_equal(parts[key], want[key])
    np.testing.assert_array_equal(decoded, codecs.decode(spec, want))
    if codec == "uint8":
        assert known == (decoded.min(), decoded.max())
    else:
        assert known is None


def test_shard_stats_shortcuts_agree_with_the_plain_computation() -> None:
    from bevkd.storage.layout import STAT_KEYS
    from bevkd.storage.stats import shard_stats

    x = np.maximum(np.random.default_rng(5).normal(0, 2, (4, 3, 16, 16)), 0).astype(np.float32)
    spec = _spec("uint8")
    extrema = codecs.channel_extrema(x)
    encoded = codecs.encode_decoded(spec, x)
    parts, decoded, known = encoded.parts, encoded.decoded, encoded.decoded_range
    assert encoded.owns_decoded
    np.testing.assert_array_equal(encoded.extrema, extrema)
    plain, _ = shard_stats(x, decoded.copy())
    fast, nan = shard_stats(x, decoded, extrema, known, overwrite_decoded=True)
    assert not nan.any()
    row = dict(zip(STAT_KEYS, fast, strict=True))
    want = codecs.decode(spec, parts).astype(np.float64)
    err = want - x
    assert row["min"] == want.min() and row["max"] == want.max()
    assert row["sum"] == pytest.approx(want.sum(), rel=1e-6)
    assert row["sumsq"] == pytest.approx((want**2).sum(), rel=1e-6)
    assert row["err_max"] == pytest.approx(np.abs(err).max(), rel=1e-6)
    assert row["err_sumsq"] == pytest.approx((err**2).sum(), rel=1e-5)
    np.testing.assert_allclose(fast, plain, rtol=1e-6)


def test_uint8_is_affine_per_channel_with_exact_minimum() -> None:
    x = _data()
    x[1, 2] = 7.25  # a constant channel
    parts = codecs.encode(_spec("uint8"), x)
    assert parts["data"].dtype == np.uint8 and parts["data"].max() <= 254
    assert parts["scale"].shape == (2, 3) and parts["offset"].shape == (2, 3)
    out = codecs.decode(_spec("uint8"), parts)
    np.testing.assert_array_equal(out[x == 0], 0.0)  # ReLU zeros stay exact zeros
    np.testing.assert_array_equal(out[1, 2], 7.25)
    bound = parts["scale"][..., None, None] / 2 * (1 + 1e-5) + 1e-6
    assert np.all(np.abs(out - x) <= bound)
    # How a plain zarr user decodes it (docs/store.md): offset + scale * code.
    manual = parts["offset"][0][:, None, None] + parts["scale"][0][:, None, None] * parts["data"][
        0
    ].astype(np.float32)
    np.testing.assert_allclose(manual, out[0], rtol=1e-6)


@pytest.mark.parametrize("codec", ["fp32", "fp16", "bf16", "bitround-8", "uint8"])
def test_never_written_frames_are_recognised_by_their_sentinel(codec: str) -> None:
    spec = _spec(codec)
    plans = codecs.array_plans(spec)
    fill = {k: np.full(p.per_frame_shape, p.fill_value, dtype=p.dtype) for k, p in plans.items()}
    assert codecs.is_missing(spec, fill)
    written = {k: v[0] for k, v in codecs.encode(spec, np.zeros((1, 3, 8, 8), np.float32)).items()}
    assert not codecs.is_missing(spec, written)  # an all-zero frame is data, not "missing"


def test_unknown_codecs_are_refused() -> None:
    with pytest.raises(StoreError, match="unknown codec 'int4'"):
        codecs.parse_codec("int4")
    with pytest.raises(StoreError, match=r"bitround keeps 1\.\.23"):
        codecs.parse_codec("bitround-30")


def test_default_codecs_are_8x_smaller_than_fp32_with_bounded_recorded_error(
    tmp_path: Path,
) -> None:
    """Demo-size realistic teacher fields (BEV 128x64x64, embedding 128x64x64, heatmap and
    regression 10x64x64) through the default codecs."""
    url = str(tmp_path / "demo.zarr")
    contract = demo_contract()
    write_store(url, contract, n_frames=4, shard_size=4)
    store = open_store(url)
    stored = store.attrs["stored"]
    spatial = [f for f in contract.fields if f.kind != "boxes"]
    raw = sum(stored[f.name]["frames"] * int(np.prod(f.shape)) * 4 for f in spatial)
    packed = sum(stored[f.name]["bytes"] for f in spatial)
    assert raw / packed >= 8.0, {f.name: stored[f.name]["ratio_vs_fp32"] for f in spatial}
    for spec in spatial:
        err = store.attrs["codec_error"][spec.name]
        assert 0 < err["rel_rms"] < 0.01 and err["max_rel"] < 0.005, (spec.name, err)
        original = synthetic_frame(contract, 0)[0][spec.name]
        got = store.read_frame(0)[spec.name]
        assert np.abs(got - original).max() <= err["max_abs"] + 1e-7
