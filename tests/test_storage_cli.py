"""``bevkd store info / verify / show`` and corruption detection."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bevkd.pipeline.cli import cli
from bevkd.storage.reader import open_store
from bevkd.storage.schema import StoreError
from bevkd.storage.testing import small_contract, write_store


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    url = tmp_path_factory.mktemp("cli") / "s.zarr"
    write_store(
        str(url), small_contract(), n_frames=8, shard_size=4, skipped={6: "camera images missing"}
    )
    return url


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_info_shows_schema_provenance_fields_completeness_and_skips(clean_store: Path) -> None:
    result = _run("store", "info", str(clean_store))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "schema version: 2; finalized at" in out
    assert "16x16" in out and "classes: car, truck" in out
    assert "shards: 2/2 written, 4 frames each" in out
    assert "teacher: synthetic" in out and "frame tokens sha256:" in out
    lines = {
        line.split()[0]: line
        for line in out.splitlines()
        if line.startswith("  ") and len(line.split()) > 4
    }
    assert (
        "uint8" in lines["lidar_bev"]
        and "x" in lines["lidar_bev"]
        and "rel rms" in lines["lidar_bev"]
    )
    assert "labeled-only" in lines["label_bev"] and "logits" in lines["heatmap"]
    assert "skipped frames: 1" in out and "6 (tok00006): camera images missing" in out


def test_verify_passes_on_a_clean_store(clean_store: Path) -> None:
    result = _run("store", "verify", str(clean_store))
    assert result.exit_code == 0, result.output
    assert "ok (7 frames" in result.output


def test_flipped_byte_is_caught_by_verify_and_by_reading(tmp_path: Path, clean_store: Path) -> None:
    url = tmp_path / "bad.zarr"
    shutil.copytree(clean_store, url)
    chunk = url / "fields" / "lidar_bev" / "data" / "c.5.0.0.0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))

    result = CliRunner().invoke(cli, ["store", "verify", str(url)])
    assert result.exit_code != 0
    assert (
        "frame 5 (token tok00005), field 'lidar_bev': data chunk fails its checksum"
        in result.output
    )
    assert "1 bad frames (5)" in str(result.exception) + result.output

    store = open_store(str(url))
    with pytest.raises(
        StoreError,
        match=r"frame 5 \(token tok00005\), field 'lidar_bev' \(data\): stored chunk is corrupt",
    ):
        store.read_frame(5)
    assert set(store.read_frame(4)) >= {"lidar_bev", "heatmap"}  # other frames still read


def test_verify_reports_missing_chunks_and_unwritten_shards(
    tmp_path: Path, clean_store: Path
) -> None:
    url = tmp_path / "holes.zarr"
    shutil.copytree(clean_store, url)
    (url / "fields" / "heatmap" / "data" / "c.2.0.0.0").unlink()
    (url / "shards" / "written" / "c.1").unlink()
    from bevkd.storage.verify import verify_store

    report = verify_store(str(url))
    assert not report.ok
    assert report.incomplete_shards == [1]
    assert report.bad_frames == {2: ["heatmap"]}
    assert "chunk missing although its shard is marked written" in report.problems[0]


def test_show_draws_a_png(tmp_path: Path, clean_store: Path) -> None:
    out = tmp_path / "frame.png"
    gt = tmp_path / "gt.npy"
    np.save(gt, open_store(str(clean_store)).read_frame(0)["boxes"][:, :9])
    result = _run(
        "store", "show", str(clean_store), "--frame", "0", "--out", str(out), "--gt", str(gt)
    )
    assert result.exit_code == 0, result.output
    from PIL import Image

    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[0] > 200 and image.shape[1] > 600
    assert image.std() > 20  # not a blank canvas


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bevkd.pipeline.cli import main

    with pytest.raises(SystemExit) as info:
        main(["store", "info", str(tmp_path / "nope.zarr")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.zarr: no such directory" in err
