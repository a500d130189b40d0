"""Backward compatibility: a tiny store written by schema version 1 is committed under
tests/data/ and must stay readable, value for value (like lerobot's
test_backward_compatibility). Regenerate only with a schema change, bumping the version:

    .venv/bin/python tests/test_storage_golden.py --regenerate
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bevkd.storage.reader import FrameSkipped, open_store
from bevkd.storage.verify import verify_store

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "teacher_store_v1.zarr"
EXPECTED = DATA / "teacher_store_v1_expected.npz"


def _contract():
    from bevkd.storage.fields import bev_feature_field
    from bevkd.storage.schema import StoreContract
    from bevkd.storage.testing import small_contract

    base = small_contract(codecs={"embedding": "bitround-8"})
    extra = (bev_feature_field("lidar_bev_s2", 4, 8, 8, codec="bf16"),)
    return StoreContract(base.schema_version, base.grid, base.classes, base.fields + extra)


def regenerate() -> None:
    """Write the golden store and the float32 values its frames must decode to."""
    from bevkd.storage.testing import write_store

    shutil.rmtree(GOLDEN, ignore_errors=True)
    write_store(
        str(GOLDEN), _contract(), n_frames=3, shard_size=2, skipped={2: "lidar sweep missing"}
    )
    store = open_store(str(GOLDEN))
    values = {f"{i}/{k}": v for i in (0, 1) for k, v in store.read_frame(i).items()}
    np.savez_compressed(EXPECTED, **values)


def test_golden_store_is_small_enough_to_commit() -> None:
    total = (
        sum(p.stat().st_size for p in GOLDEN.rglob("*") if p.is_file()) + EXPECTED.stat().st_size
    )
    assert total < 200_000


def test_golden_v1_store_still_reads_value_for_value() -> None:
    store = open_store(str(GOLDEN), expect=_contract())
    assert store.contract.schema_version == 1 and store.finalized
    assert store.tokens == ["tok00000", "tok00001", "tok00002"]
    assert store.has_label.tolist() == [True, False, True]
    assert store.skipped == {2: "lidar sweep missing"}
    expected = np.load(EXPECTED)
    got = {f"{i}/{k}": v for i in (0, 1) for k, v in store.read_frame(i).items()}
    assert set(got) == set(expected.files)
    assert "1/label_bev" not in got  # labeled-only field, unlabeled frame
    for key in expected.files:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    with pytest.raises(FrameSkipped, match="lidar sweep missing"):
        store.read_frame(2)
    assert store.attrs["codec_error"]["lidar_bev"]["max_abs"] > 0
    assert verify_store(str(GOLDEN)).ok


if __name__ == "__main__":
    if "--regenerate" in sys.argv:
        regenerate()
        print(f"wrote {GOLDEN} and {EXPECTED}")
