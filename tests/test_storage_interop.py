"""Plain zarr, in a process that never imports bevkd, reads every field of a store."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from bevkd.storage.fields import bev_feature_field
from bevkd.storage.reader import open_store
from bevkd.storage.schema import StoreContract
from bevkd.storage.testing import small_contract, write_store

# The recipe of docs/store.md, verbatim in spirit: attrs say the codec, arrays say the rest.
PLAIN_READER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import zarr

    url, out = sys.argv[1], sys.argv[2]
    group = zarr.open_group(url, mode="r")
    attrs = group.attrs.asdict()
    has_label = group["index/has_label"][:]
    skipped = group["index/skipped"][:]
    tokens = group["index/token"][:]
    result = {}
    for field in attrs["fields"]:
        name, codec = field["name"], field["codec"]
        arrays = group["fields/" + name]
        for i in range(attrs["num_frames"]):
            if skipped[i] or (field["labeled_only"] and not has_label[i]):
                continue
            if field["kind"] == "boxes":
                value = arrays["values"][i][: arrays["count"][i]]
            elif codec == "uint8":
                scale, offset = arrays["scale"][i], arrays["offset"][i]
                value = offset[:, None, None] + scale[:, None, None] * arrays["data"][i].astype(np.float32)
            elif codec == "bf16":
                assert arrays["data"].attrs["bevkd_dtype"] == "bfloat16"
                value = (arrays["data"][i].astype(np.uint32) << 16).view(np.float32)
            elif codec == "uint4" or codec.startswith("pca-"):
                packed = arrays["data"][i]  # two 4-bit codes a byte: low nibble = even column
                codes = np.stack([packed & 15, packed >> 4], axis=-1).astype(np.float32)
                codes = codes.reshape(*packed.shape[:-1], -1)[..., : field["shape"][-1]]
                scale, offset = arrays["scale"][i], arrays["offset"][i]
                value = offset[:, None, None] + scale[:, None, None] * codes
                if codec.startswith("pca-"):  # value holds the K components
                    basis, mean = arrays["basis"][i], arrays["mean"][i]
                    flat = np.matmul(basis, value.reshape(len(value), -1)) + mean[:, None]
                    value = flat.reshape(field["shape"])
            else:  # fp32, fp16, bitround-K
                value = arrays["data"][i].astype(np.float32)
            result[f"{tokens[i]}/{name}"] = value
    assert not [m for m in sys.modules if m.startswith("bevkd")], "plain reader imported bevkd"
    np.savez(out, **result)
    """
)


def test_plain_zarr_reads_every_field_and_codec(tmp_path: Path) -> None:
    base = small_contract(codecs={"embedding": "bitround-8", "box_regression": "fp32"})
    extra = (
        bev_feature_field("lidar_bev_s2", 6, 8, 8, codec="bf16"),
        bev_feature_field("fp16_bev", 3, 16, 16, codec="fp16"),
        bev_feature_field("uint4_bev", 5, 8, 7, codec="uint4"),
        bev_feature_field("pca_bev", 6, 8, 8, codec="pca-3"),
    )
    contract = StoreContract(base.schema_version, base.grid, base.classes, base.fields + extra)
    url = str(tmp_path / "s.zarr")
    write_store(url, contract, n_frames=6, shard_size=4, skipped={4: "no lidar"})
    out = tmp_path / "plain.npz"
    subprocess.run(
        [sys.executable, "-c", PLAIN_READER, url, str(out)], check=True, cwd=tmp_path, timeout=120
    )
    plain = np.load(out)
    store = open_store(url)
    expected = {}
    for i, token in enumerate(store.tokens):
        if i not in store.skipped:
            expected.update({f"{token}/{k}": v for k, v in store.read_frame(i).items()})
    assert set(plain.files) == set(expected)
    assert {k.split("/")[1] for k in expected} == {f.name for f in contract.fields}
    for key, value in expected.items():
        np.testing.assert_array_equal(plain[key], value, err_msg=key)


def test_lean_read_path_agrees_with_zarrs_own(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    write_store(url, small_contract(codecs={"embedding": "bf16"}), n_frames=4, shard_size=2)
    lean, plain = open_store(url), open_store(url)
    plain._fast = {key: None for key in _all_array_keys(plain)}  # every array: zarr's path
    for i in range(4):
        a, b = lean.read_frame(i), plain.read_frame(i)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert lean._fast and all(v is not None for v in lean._fast.values())


def _all_array_keys(store) -> list[str]:
    from bevkd.storage import layout

    return [
        layout.field_key(s.name, p) for s in store.contract.fields for p in layout.field_parts(s)
    ]
