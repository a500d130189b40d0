"""An imported CenterPoint in use: ``bevkd teacher import`` writes a bevkd checkpoint,
``cache-teacher`` caches it over the tiny synthetic nuScenes world (whose LIDAR_TOP is turned
-90° and raised 1.84 m, as nuScenes'), the store verifies and records where the teacher came
from, and a CMKD student trains from it, cached and online."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner
from reference import openpcdet_config as pcdet_cfg
from reference.openpcdet_random import random_checkpoint
from stage_helpers import copy_dataset, small_config
from test_foreign_exact import openpcdet_bevkd_config

from bevkd.pipeline.cli import cli
from bevkd.pipeline.config import to_dict
from bevkd.pipeline.provenance import sha256_file
from bevkd.stages import cache_teacher, train_student
from bevkd.storage.reader import open_store
from bevkd.storage.verify import verify_store


def grid_sets(cfg: Any) -> list[str]:
    g = cfg.grid
    return [
        f"grid.point_cloud_range={list(g.point_cloud_range)}",
        f"grid.voxel_size={list(g.voxel_size)}",
        f"grid.bev_stride={g.bev_stride}",
    ]


@pytest.fixture(scope="module")
def imported(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("imported")
    root = copy_dataset(tiny_nuscenes, base / "data")
    pcdet = pcdet_cfg.reduced_config("voxel01")
    foreign = base / "openpcdet_voxel01.pth"
    torch.save(random_checkpoint(pcdet, seed=5), foreign)
    arch = openpcdet_bevkd_config(pcdet)
    config = base / "import.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": str(root)},
        "grid": to_dict(arch.grid),
        "centerpoint": to_dict(arch.centerpoint),
    }))  # fmt: skip
    out = base / "teacher.pt"
    result = CliRunner().invoke(cli, [
        "teacher", "import", str(foreign), "--from", "openpcdet", "--config", str(config),
        "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    url = base / "store.zarr"
    cache = small_config(
        root, *grid_sets(arch), "cache.teachers=[lidar]", f"cache.lidar_checkpoint={out}",
        "cache.n_workers=0", "store.shard_size=2", f"store.url={url}",
        "cache.splits=[train, val]", "cache.lidar_bev_pre=true",
    )  # fmt: skip
    cache_teacher.run(cache)
    return {"root": root, "out": out, "url": url, "arch": arch, "cli": result.output, "foreign": foreign}  # fmt: skip


def test_the_import_says_what_it_made(imported: dict) -> None:
    text = imported["cli"]
    assert "imported openpcdet CenterPoint" in text and "6 task(s)" in text
    assert "rotate NMS" in text and "BEV 32 x 32" in text


def test_the_store_verifies_and_records_the_imported_teacher(imported: dict) -> None:
    store = open_store(str(imported["url"]))
    assert verify_store(str(imported["url"])).ok
    teacher = store.provenance["teachers"]["lidar"]
    assert teacher["imported_from"]["framework"] == "openpcdet"
    assert teacher["imported_from"]["sha256"] == sha256_file(imported["foreign"])  # fmt: skip
    assert [tuple(t) for t in teacher["centerpoint"]["tasks"]] == list(pcdet_cfg.CLASS_NAMES_EACH_HEAD)  # fmt: skip
    assert teacher["labeled_tokens"] is None  # bevkd cannot know what trained it
    shapes = {f.name: f.shape for f in store.contract.fields}
    assert shapes["heatmap"] == (10, 32, 32) and shapes["box_regression"] == (10, 32, 32)
    assert shapes["lidar_bev"] == (16, 32, 32) and shapes["lidar_bev_pre"][1:] == (32, 32)
    assert shapes["boxes"][0] == 6 * 83  # room for every box the six tasks' NMS keeps


def test_a_student_trains_from_it_cached_and_online(imported: dict, tmp_path: Path) -> None:
    def student(out: str, *extra: str) -> Any:
        return small_config(
            imported["root"], *grid_sets(imported["arch"]), "model.kind=camera",
            "student.recipe=cmkd", f"student.store={imported['url']}", "student.bev_channels=16",
            "train.epochs=1", f"train.out_dir={tmp_path / out}", *extra,
        )  # fmt: skip

    cached = train_student.run(student("cached"))
    online = train_student.run(student("online", "train.targets=online"))
    assert cached.steps == online.steps >= 1
    assert (tmp_path / "cached" / "last.pt").is_file() and (
        tmp_path / "online" / "last.pt"
    ).is_file()


def test_a_cache_config_on_another_grid_is_refused(imported: dict, tmp_path: Path) -> None:
    cfg = small_config(
        imported["root"], "cache.teachers=[lidar]", f"cache.lidar_checkpoint={imported['out']}",
        "cache.n_workers=0", f"store.url={tmp_path / 's.zarr'}",
    )  # fmt: skip
    with pytest.raises(Exception, match="grid"):
        cache_teacher.run(cfg)


def test_bad_imports_name_every_problem(imported: dict, tmp_path: Path) -> None:
    state = torch.load(imported["foreign"], weights_only=False)
    del state["model_state"]["dense_head.heads_list.2.vel.1.bias"]
    state["model_state"]["backbone_2d.blocks.0.1.weight"] = torch.zeros(3, 3, 3, 3)
    state["model_state"]["dense_head.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    arch = imported["arch"]
    config = tmp_path / "import.yaml"
    config.write_text(yaml.safe_dump({"grid": to_dict(arch.grid), "centerpoint": to_dict(arch.centerpoint)}))  # fmt: skip
    result = CliRunner().invoke(cli, [
        "teacher", "import", str(bad), "--from", "openpcdet", "--config", str(config),
        "--out", str(tmp_path / "x.pt"),
    ])  # fmt: skip
    assert result.exit_code != 0
    text = result.output + str(result.exception)
    assert "3 problem(s)" in text
    assert "backbone_2d.blocks.0.1.weight -> backbone.blocks.0.0.weight: shape (3, 3, 3, 3)" in text
    assert "dense_head.extra.weight" in text and "head.tasks.2.velocity.1.bias" in text
    assert not (tmp_path / "x.pt").exists()
    # a dataset without the teacher's classes
    other = dataclasses.replace(arch.centerpoint, tasks=(("car",), ("tram",)), min_radius=())
    config.write_text(yaml.safe_dump({"grid": to_dict(arch.grid), "centerpoint": to_dict(other)}))
    result = CliRunner().invoke(cli, [
        "teacher", "import", str(imported["foreign"]), "--from", "openpcdet", "--config",
        str(config), "--out", str(tmp_path / "y.pt"),
    ])  # fmt: skip
    assert "['tram']" in result.output + str(result.exception)


def test_a_pillar_teacher_without_a_map_to_bev_layer_is_named(tiny_nuscenes: Path, tmp_path: Path) -> None:  # fmt: skip
    fixture = Path(__file__).parent / "data" / "foreign" / "mmdet3d_centerpoint_pillar02.pth"
    root = copy_dataset(tiny_nuscenes, tmp_path / "data")
    out = tmp_path / "pillar.pt"
    result = CliRunner().invoke(cli, [
        "teacher", "import", str(fixture), "--from", "mmdet3d", "--set", f"data.root={root}",
        "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    from bevkd.models.checkpoint import checkpoint_config, load_checkpoint

    arch = checkpoint_config(load_checkpoint(out))
    cfg = small_config(
        root, *grid_sets(arch), "cache.teachers=[lidar]", f"cache.lidar_checkpoint={out}",
        "cache.n_workers=0", f"store.url={tmp_path / 's.zarr'}", "cache.lidar_bev_pre=true",
    )  # fmt: skip
    with pytest.raises(Exception, match=r"gives no lidar_bev_pre on this grid.*cache\.lidar_bev_pre=false"):  # fmt: skip
        cache_teacher.run(cfg)
