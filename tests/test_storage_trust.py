"""What ``verify`` and the reader must catch (issue 12): lost index chunks, lost array
metadata, edited attrs; ``store copy`` repairing a damaged object of the right size; the
read-only commands writing nothing."""

from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bevkd.pipeline.cli import cli
from bevkd.storage.copy import copy_store
from bevkd.storage.reader import open_store
from bevkd.storage.schema import StoreError
from bevkd.storage.testing import small_contract, write_store
from bevkd.storage.verify import verify_store
from bevkd.storage.writer import StoreWriter


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    url = tmp_path_factory.mktemp("trust") / "s.zarr"
    write_store(str(url), small_contract(), n_frames=8, shard_size=4, skipped={6: "no sweeps"})
    return url


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    url = tmp_path / "s.zarr"
    shutil.copytree(pristine, url)
    return url


def test_a_pristine_store_verifies(pristine: Path) -> None:
    report = verify_store(str(pristine))
    assert report.ok and report.index_ok and report.attrs_ok, report.problems
    assert not report.notes  # its attrs carry a checksum


@pytest.mark.parametrize("name", ["has_label", "token", "scene", "split"])
def test_a_lost_index_chunk_fails_verify_and_the_reader(store: Path, name: str) -> None:
    (store / "index" / name / "c.0").unlink()
    report = verify_store(str(store))
    assert not report.ok and not report.index_ok
    assert any(f"index/{name}" in p and "frames_sha256" in p for p in report.problems)
    # The reader no longer reads "no frame has labels" or empty tokens: it refuses.
    with pytest.raises(StoreError, match=r"frame index .* does not match"):
        open_store(str(store))


def test_a_changed_index_value_fails_verify(store: Path) -> None:
    writer = StoreWriter.open(str(store))
    flipped = ~np.asarray(writer._group["index/has_label"][:])
    writer._group["index/has_label"][:] = flipped  # a valid chunk, wrong contents
    report = verify_store(str(store))
    assert not report.index_ok and "a chunk was changed" in " ".join(report.problems)


@pytest.mark.parametrize(
    "key", ["index/token", "shards/written", "fields/heatmap/data", "fields/boxes/count"]
)
def test_lost_array_metadata_fails_verify_naming_the_array(store: Path, key: str) -> None:
    (store / key / "zarr.json").unlink()
    report = verify_store(str(store))
    assert not report.ok and key in report.bad_metadata
    assert any(
        f"array {key}: its metadata ({key}/zarr.json) is missing" in p for p in report.problems
    )


def test_metadata_that_contradicts_the_contract_fails_verify(store: Path) -> None:
    meta = store / "fields" / "lidar_bev" / "data" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][1] += 1
    meta.write_text(json.dumps(doc))
    report = verify_store(str(store))
    assert "fields/lidar_bev/data" in report.bad_metadata
    assert any("shape:" in p for p in report.problems)


def test_edited_root_attrs_fail_verify(store: Path) -> None:
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["provenance"]["teacher"] = "someone else"
    meta.write_text(json.dumps(doc))
    report = verify_store(str(store))
    assert not report.ok and not report.attrs_ok
    assert any("root attrs" in p for p in report.problems)


def test_edited_consolidated_metadata_fails_verify(store: Path) -> None:
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    entry = doc["consolidated_metadata"]["metadata"]["fields/heatmap/data"]
    entry["fill_value"] = 7
    meta.write_text(json.dumps(doc))
    report = verify_store(str(store))
    assert "fields/heatmap/data" in report.bad_metadata
    assert any("consolidated metadata" in p for p in report.problems)


def test_a_lost_bookkeeping_chunk_names_its_shard(store: Path) -> None:
    (store / "fields" / "heatmap" / "nan_count" / "c.1").unlink()
    (store / "index" / "skip_reason" / "c.0").unlink()
    report = verify_store(str(store))
    assert report.bad_shards == {0, 1}
    assert any("shard 1: fields/heatmap/nan_count chunk missing" in p for p in report.problems)
    assert any("shard 0: index/skip_reason chunk missing" in p for p in report.problems)


def test_the_verify_command_names_the_repair(store: Path) -> None:
    (store / "index" / "token" / "c.0").unlink()
    result = CliRunner().invoke(cli, ["store", "verify", str(store)])
    assert result.exit_code != 0
    assert "cache-teacher --repair" in str(result.exception)


def test_rerunning_copy_repairs_a_damaged_object_of_the_same_size(
    pristine: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "copy.zarr"
    copy_store(str(pristine), str(dst))
    chunk = dst / "fields" / "lidar_bev" / "data" / "c.2.0.0.0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))  # same size, other bytes
    assert not verify_store(str(dst)).ok
    again = copy_store(str(pristine), str(dst))
    assert again.report.ok
    assert chunk.read_bytes() == (pristine / "fields/lidar_bev/data/c.2.0.0.0").read_bytes()
    # Only the damaged object (and the always-copied metadata) went again.
    metas = sum(1 for p in pristine.rglob("zarr.json"))
    assert again.copied == metas + 1


def test_info_verify_and_show_write_nothing(
    pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished store on read-only media: the inspecting commands never open a file for
    writing anywhere near it, and never create anything."""
    real_open = builtins.open
    guarded = str(pristine.parent)

    def read_only_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if any(m in mode for m in "wax+") and str(file).startswith(guarded):
            raise OSError(30, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only_open)
    before = sorted(p.relative_to(guarded) for p in pristine.parent.rglob("*"))
    for args in (["info"], ["verify"], ["show", "--frame", "1", "--out", str(tmp_path / "f.png")]):
        result = CliRunner().invoke(cli, ["store", args[0], str(pristine), *args[1:]])
        assert result.exit_code == 0, (args, result.output, result.exception)
    assert sorted(p.relative_to(guarded) for p in pristine.parent.rglob("*")) == before
