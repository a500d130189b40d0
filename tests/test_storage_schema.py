"""Store contract: field specs, round trips, and one clear error on a mismatch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bevkd.pipeline.geometry import BEVGrid
from bevkd.storage.fields import bev_feature_field, heatmap_field
from bevkd.storage.reader import open_store
from bevkd.storage.schema import (
    PROVENANCE_KEYS,
    REGRESSION_CHANNELS,
    ContractMismatch,
    FieldSpec,
    StoreContract,
    StoreError,
    field_grid,
    make_provenance,
)
from bevkd.storage.testing import small_contract, write_store


def test_contract_round_trips_through_a_dict() -> None:
    contract = small_contract()
    assert StoreContract.from_dict(contract.to_dict()) == contract
    assert contract.field("regression").channel_map == REGRESSION_CHANNELS
    assert contract.field("heatmap").heatmap_activation == "logits"
    assert contract.field("label_bev").labeled_only


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "bev_thing"}, "unknown kind 'bev_thing'"),
        ({"shape": (8, 16)}, r"per-frame shape \(C, H, W\)"),
        ({"kind": "heatmap"}, "must declare heatmap_activation"),
        ({"heatmap_activation": "logits"}, "applies to heatmaps only"),
        ({"kind": "box_regression", "shape": (10, 16, 16)}, "channel_map must be"),
        ({"name": "a/b"}, "no '/'"),
    ],
)
def test_field_spec_rejects_bad_specs(kwargs: dict, message: str) -> None:
    base = {
        "name": "f",
        "kind": "bev_feature",
        "dtype": "float32",
        "shape": (8, 16, 16),
        "codec": "uint8",
    }
    with pytest.raises(StoreError, match=message):
        FieldSpec(**{**base, **kwargs})


def test_field_grid_supports_integer_downscales() -> None:
    grid = BEVGrid(-6.4, -6.4, 6.4, 6.4, 0.8)
    assert field_grid(grid, bev_feature_field("s2", 4, 8, 8)) == grid.scaled(2)
    with pytest.raises(StoreError, match="not the grid 16x16"):
        field_grid(grid, bev_feature_field("odd", 4, 7, 7))


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("schema") / "s.zarr")
    write_store(url, small_contract(), n_frames=4, shard_size=4)
    return url


def _expect_error(url: str, expected: StoreContract, *needles: str) -> str:
    with pytest.raises(ContractMismatch) as info:
        open_store(url, expect=expected)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_consumer_with_another_grid_is_told_which(store_url: str) -> None:
    other = replace(small_contract(), grid=BEVGrid(-6.4, -6.4, 6.4, 6.4, 0.4))
    message = _expect_error(
        store_url, other, "grid: store has", "cell 0.8 (16x16)", "expected", "cell 0.4 (32x32)"
    )
    assert "classes" not in message and "schema version" not in message


def test_consumer_with_other_classes_is_told_which(store_url: str) -> None:
    other = replace(small_contract(), classes=("car", "pedestrian"))
    message = _expect_error(
        store_url, other, "classes: store has ['car', 'truck'", "expected ['car', 'pedestrian']"
    )
    assert "grid" not in message


def test_consumer_with_another_schema_version_is_told_which(store_url: str) -> None:
    other = replace(small_contract(), schema_version=99)
    _expect_error(store_url, other, "schema version: store has 2, expected 99")


def test_consumer_expecting_other_fields_is_told_which(store_url: str) -> None:
    base = small_contract()
    missing = replace(base, fields=(*base.fields, bev_feature_field("fused_bev", 8, 16, 16)))
    _expect_error(store_url, missing, "field set: store lacks ['fused_bev']")
    changed = replace(
        base, fields=(heatmap_field("heatmap", 10, 16, 16, activation="probabilities"),)
    )
    _expect_error(store_url, changed, "field 'heatmap'")


def test_compatible_consumer_may_ask_for_a_subset_and_other_codecs(store_url: str) -> None:
    base = small_contract()
    subset = replace(base, fields=(heatmap_field("heatmap", 10, 16, 16, codec="fp32"),))
    store = open_store(store_url, expect=subset)
    assert set(store.read_frame(0, ["heatmap"])) == {"heatmap"}


def test_store_attrs_hold_schema_grid_classes_provenance_and_fields(store_url: str) -> None:
    import zarr

    attrs = zarr.open_group(store_url, mode="r").attrs.asdict()
    assert attrs["schema_version"] == 2
    assert attrs["grid"]["H"] == 16 and attrs["grid"]["frame"].startswith("ego")
    assert attrs["classes"][0] == "car"
    assert {f["name"] for f in attrs["fields"]} == {
        "lidar_bev",
        "label_bev",
        "heatmap",
        "regression",
        "boxes",
    }
    assert set(PROVENANCE_KEYS) <= set(attrs["provenance"])
    assert set(attrs["codec_error"]["lidar_bev"]) == {"max_abs", "rms", "rel_rms", "max_rel"}


def test_make_provenance_records_code_packages_and_token_hash(tmp_path: Path) -> None:
    prov = make_provenance(
        teacher="lidar", checkpoint_sha256="ab" * 32, config_yaml="a: 1\n", config_sha256="cd" * 32,
        dataset_name="nuscenes", dataset_version="v1.0-mini", dataset_splits=["train"], tokens=["t0", "t1"],
    )  # fmt: skip
    assert set(PROVENANCE_KEYS) <= set(prov)
    assert isinstance(prov["code_dirty"], bool) and "zarr" in prov["packages"]
    other = make_provenance(
        teacher="lidar", checkpoint_sha256="x", config_yaml="", config_sha256="", dataset_name="n",
        dataset_version="v", dataset_splits=[], tokens=["t1", "t0"],
    )  # fmt: skip
    assert prov["frame_tokens_sha256"] != other["frame_tokens_sha256"]
