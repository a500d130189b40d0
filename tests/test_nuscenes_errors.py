"""Bad input gives one clear error that names the path (and, through the CLI, exit status 2)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from nuscenes_copy import private_copy

from bevkd.datasets.dataset import FrameDataset
from bevkd.datasets.loading import load_point_file
from bevkd.datasets.nuscenes_index import load_index
from bevkd.pipeline.cli import main
from bevkd.pipeline.config import DataConfig
from bevkd.pipeline.errors import DataError


@pytest.fixture(scope="module")
def root(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy: the index these tests write stays out of the shared fixture."""
    return private_copy(tiny_nuscenes, tmp_path_factory.mktemp("nuscenes"))


def test_missing_dataroot_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"dataset root {tmp_path / 'nope'} does not exist"):
        load_index(DataConfig(root=str(tmp_path / "nope")))


def test_missing_version_folder_names_it_and_lists_what_exists(root: Path) -> None:
    with pytest.raises(DataError, match=r"v1\.0-mini does not exist \(found: v1\.0-trainval"):
        load_index(DataConfig(root=str(root), version="v1.0-mini"))


def test_missing_table_is_named(root: Path, tmp_path: Path) -> None:
    shutil.copytree(root / "v1.0-trainval", tmp_path / "v1.0-trainval")
    (tmp_path / "v1.0-trainval" / "ego_pose.json").unlink()
    with pytest.raises(DataError, match=r"missing ego_pose\.json"):
        load_index(DataConfig(root=str(tmp_path)))


def test_truncated_point_file_names_frame_file_and_sizes(root: Path, tmp_path: Path) -> None:
    data = DataConfig(root=str(root))
    frame = load_index(data).frames("val")[0]
    bad = tmp_path / "cut.pcd.bin"
    bad.write_bytes(Path(frame.lidar_path).read_bytes()[:-6])
    size = bad.stat().st_size
    dataset = FrameDataset([dataclasses.replace(frame, lidar_path=str(bad))], data)
    expected = (
        rf"frame 0000 \(token {frame.token[:8]}\.\.\.\): point file {bad} is truncated "
        rf"\({size} bytes, expected a multiple of 20\)"
    )
    with pytest.raises(DataError, match=expected):
        dataset[0]


def test_missing_point_file_and_camera_image_are_named(root: Path, tmp_path: Path) -> None:
    data = DataConfig(root=str(root))
    frame = load_index(data).frames("val")[0]
    gone = tmp_path / "gone.pcd.bin"
    with pytest.raises(DataError, match=f"point file {gone} not found"):
        FrameDataset([dataclasses.replace(frame, lidar_path=str(gone))], data)[0]
    cameras = list(frame.cameras)
    cameras[2] = dataclasses.replace(cameras[2], image_path=str(tmp_path / "gone.jpg"))
    with pytest.raises(
        DataError, match=rf"frame 0000 \(token .*\): camera image {tmp_path / 'gone.jpg'} not found"
    ):
        FrameDataset([dataclasses.replace(frame, cameras=tuple(cameras))], data)[0]


def test_unreadable_image_is_named(root: Path, tmp_path: Path) -> None:
    data = DataConfig(root=str(root))
    frame = load_index(data).frames("val")[0]
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    cameras = (dataclasses.replace(frame.cameras[0], image_path=str(junk)), *frame.cameras[1:])
    with pytest.raises(DataError, match=f"camera image {junk} is not a readable image"):
        FrameDataset([dataclasses.replace(frame, cameras=cameras)], data)[0]


def test_point_file_reader_accepts_whole_records(tmp_path: Path) -> None:
    path = tmp_path / "ok.bin"
    path.write_bytes(bytes(4 * 4 * 3))
    assert load_point_file(str(path), 4).shape == (3, 4)


def test_cli_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "--data", str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: dataset root") and str(tmp_path / "missing") in err


def test_a_truncated_table_is_named(tiny_nuscenes: Path, tmp_path: Path) -> None:
    copy = private_copy(tiny_nuscenes, tmp_path / "root")
    table = copy / "v1.0-trainval" / "sample_annotation.json"
    table.write_text(table.read_text()[:-200])
    with pytest.raises(DataError, match=r"sample_annotation\.json is not valid JSON"):
        load_index(DataConfig(root=str(copy)))


def test_a_reference_to_a_missing_record_names_the_key_and_its_table(
    tiny_nuscenes: Path, tmp_path: Path
) -> None:
    import json

    copy = private_copy(tiny_nuscenes, tmp_path / "root")
    path = copy / "v1.0-trainval" / "sample_data.json"
    rows = json.loads(path.read_text())
    rows[0]["calibrated_sensor_token"] = "deadbeef" * 4
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"'(deadbeef){4}' is referenced in sample_data\.json, but no record"):  # fmt: skip
        load_index(DataConfig(root=str(copy)))
