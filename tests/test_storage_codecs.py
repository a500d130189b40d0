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


@pytest.mark.parametrize("codec", ["uint8", "fp16", "bf16", "fp32", "uint4", "pca-2"])
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


@pytest.mark.parametrize("codec", ["fp32", "fp16", "bf16", "bitround-8", "uint8", "uint4", "pca-2"])
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
    for bad in ("pca-0", "pca-x", "pca-"):
        with pytest.raises(StoreError, match="pca keeps K >= 1"):
            codecs.parse_codec(bad)
    with pytest.raises(StoreError, match="keeps 3 components of 3 channels"):
        codecs.array_plans(_spec("pca-3"))


@pytest.mark.parametrize("width", [8, 7])
def test_uint4_is_affine_per_channel_packed_two_a_byte(width: int) -> None:
    rng = np.random.default_rng(3)
    x = np.maximum(rng.normal(0, 2, (2, 3, 5, width)), 0).astype(np.float32)
    x[1, 2] = 4.5  # a constant channel
    spec = bev_feature_field("f", 3, 5, width, codec="uint4")
    parts = codecs.encode(spec, x)
    assert parts["data"].shape == (2, 3, 5, (width + 1) // 2) and parts["data"].dtype == np.uint8
    assert parts["data"].max() <= 14 * 17  # both nibbles at most 14: never the 255 sentinel
    out = codecs.decode(spec, parts)
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[x == 0], 0)  # the channel minimum (0) is exact
    np.testing.assert_array_equal(out[1, 2], 4.5)
    # the error bound: half a step of (max - min) / 14, per channel
    step = (x.max(axis=(2, 3)) - x.min(axis=(2, 3))) / 14
    assert np.all(np.abs(out - x) <= step[..., None, None] / 2 * (1 + 1e-5) + 1e-6)
    assert np.abs(out - x).max() > 0  # it is lossy: 15 levels
    # How a plain zarr user decodes it (docs/store.md): low nibble the even column.
    b = parts["data"][0]
    codes = np.stack([b & 15, b >> 4], axis=-1).reshape(3, 5, -1)[..., :width]
    manual = parts["offset"][0][:, None, None] + parts["scale"][0][:, None, None] * codes
    np.testing.assert_allclose(manual, out[0], rtol=1e-6)


def test_pca_reconstructs_low_rank_fields_and_matches_the_svd_projection() -> None:
    rng = np.random.default_rng(11)
    channels, rank = 12, 3
    # Exactly rank 3 around a per-channel mean: the projection loses nothing, only the 4-bit
    # components do.
    mixing = rng.normal(0, 1, (2, channels, rank)).astype(np.float32)
    latent = rng.normal(0, 1, (2, rank, 6, 10)).astype(np.float32)
    x = np.einsum("kcr,krhw->kchw", mixing, latent) + rng.normal(0, 5, (2, channels, 1, 1))
    x = x.astype(np.float32)
    spec = bev_feature_field("f", channels, 6, 10, codec=f"pca-{rank}")
    parts = codecs.encode(spec, x)
    assert parts["data"].shape == (2, rank, 6, 5) and parts["basis"].shape == (2, channels, rank)
    out = codecs.decode(spec, parts)
    # Error of the components: at most half a 4-bit step each, mixed by the orthonormal basis.
    step = (parts["scale"] / 2)[..., None]  # (k, rank, 1)
    basis = parts["basis"].astype(np.float64)
    np.testing.assert_allclose(
        np.einsum("kcr,kcs->krs", basis, basis), np.eye(rank)[None].repeat(2, 0), atol=1e-5
    )
    bound = np.einsum("kcr,kro->kco", np.abs(basis), step)[..., None]  # (k, C, 1, 1)
    assert np.all(np.abs(out - x) <= bound * (1 + 1e-4) + 1e-4)
    # On generic data: the rank-K truncated SVD of the centred channels (an independent
    # reference), up to the same component quantization.
    y = rng.normal(0, 1, (1, channels, 6, 10)).astype(np.float32)
    spec2 = bev_feature_field("f", channels, 6, 10, codec="pca-4")
    parts2 = codecs.encode(spec2, y)
    flat = y[0].reshape(channels, -1).astype(np.float64)
    mean = flat.mean(axis=1, keepdims=True)
    u, _, _ = np.linalg.svd(flat - mean, full_matrices=False)
    projected = (mean + u[:, :4] @ u[:, :4].T @ (flat - mean)).reshape(y[0].shape)
    q = np.einsum("cr,ro->co", np.abs(parts2["basis"][0]), parts2["scale"][0][:, None] / 2)
    got = codecs.decode(spec2, {k: v[0] for k, v in parts2.items()})  # one frame
    assert np.all(np.abs(got - projected) <= q[..., None] * (1 + 1e-4) + 1e-4)
    assert np.abs(got - y[0]).max() > 0.5  # the rank-4 projection is lossy on rank-12 data


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


@pytest.mark.parametrize(
    "choice",
    [
        {
            "bev_feature": "uint4",
            "embedding": "uint4",
            "heatmap": "uint4",
            "box_regression": "uint4",
        },
        {
            "bev_feature": "pca-8",
            "embedding": "pca-4",
            "heatmap": "uint4",
            "box_regression": "uint4",
        },
    ],
)
def test_aggressive_codecs_write_verify_and_read_back(
    tmp_path: Path, choice: dict[str, str]
) -> None:
    """The 4-bit and PCA codecs through the real writer, finalize, verify and reader: every
    frame reads back as the codec decodes it, within the error the store recorded, and the
    store is smaller than with the default codecs."""
    from bevkd.storage.verify import verify_store

    sizes = {}
    for name, codec_choice in (("default", None), ("aggressive", choice)):
        url = str(tmp_path / f"{name}.zarr")
        contract = demo_contract(codecs=codec_choice)
        write_store(url, contract, n_frames=4, shard_size=2)
        report = verify_store(url)
        assert report.ok, report.problems
        store = open_store(url)
        spatial = [f for f in contract.fields if f.kind != "boxes"]
        sizes[name] = sum(store.attrs["stored"][f.name]["bytes"] for f in spatial)
        if codec_choice is None:
            continue
        for frame in range(4):
            original, _ = synthetic_frame(contract, frame)
            got = store.read_frame(frame)
            for spec in spatial:
                if spec.name not in original or spec.name not in got:
                    continue  # a labeled-only field on an unlabeled frame
                want = codecs.decode(
                    spec,
                    {k: v[0] for k, v in codecs.encode(spec, original[spec.name][None]).items()},
                )
                np.testing.assert_allclose(got[spec.name], want, rtol=1e-6, atol=1e-6)
                err = store.attrs["codec_error"][spec.name]
                assert (
                    np.abs(got[spec.name] - original[spec.name]).max()
                    <= err["max_abs"] * (1 + 1e-5) + 1e-6
                )
    assert sizes["aggressive"] < 0.6 * sizes["default"], sizes
