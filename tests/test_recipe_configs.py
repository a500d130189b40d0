"""Every student config that ships loads, names a known recipe and student, builds both, and
reads only fields that its folder's cache config writes (issue 13: one recipe table, and
every recipe config validated)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bevkd.distill.recipes import RECIPES, build_recipe
from bevkd.models.builders import STUDENT_BUILDERS, build_student
from bevkd.pipeline.config import load_config
from bevkd.stages.teacher_runner import wanted_features
from bevkd.storage.fields import TEACHER_FIELDS, teacher_writing

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
STUDENT_CONFIGS = sorted(
    [*CONFIGS.glob("*/student_*.yaml"), *CONFIGS.glob("*/demo_student_*.yaml")]
)
CACHE_OF = {
    "demo": "cache.yaml",
    "nuscenes": "cache.yaml",
    "kitti": "demo_cache.yaml",
    "waymo": "cache.yaml",
}


def cache_of(student: Path) -> Path:
    """The cache config of a student's folder (``demo_cache.yaml`` for a ``demo_`` student)."""
    name = "demo_cache.yaml" if student.name.startswith("demo_") else CACHE_OF[student.parent.name]
    return CONFIGS / student.parent.name / name


def test_every_recipe_has_a_demo_and_a_nuscenes_config() -> None:
    names = {load_config(str(p)).student.recipe: p for p in STUDENT_CONFIGS}
    assert set(RECIPES) <= set(names)
    for folder in ("demo", "nuscenes"):
        have = {
            load_config(str(p)).student.recipe for p in CONFIGS.glob(f"{folder}/student_*.yaml")
        }
        missing = set(RECIPES) - {"baseline"} - have
        assert not missing, f"configs/{folder} has no student config for {sorted(missing)}"


@pytest.mark.parametrize("path", STUDENT_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_student_config_builds_and_reads_only_what_its_cache_writes(path: Path) -> None:
    cfg = load_config(str(path))
    assert set(cfg.student.recipe.split("+")) <= set(RECIPES)  # a recipe, or several joined
    assert cfg.model.kind in STUDENT_BUILDERS
    recipe = build_recipe(cfg)
    student = build_student(cfg)
    assert sum(p.numel() for p in student.parameters()) > 0
    cache = load_config(str(cache_of(path)))
    written = set()
    for teacher in cache.cache.teachers:
        spec = TEACHER_FIELDS[teacher]
        written |= set(
            wanted_features(
                teacher, cache.cache.lidar_bev_scales, cache.cache.lidar_bev_pre
            ).values()
        )
        written |= {f for f in (spec.heatmap, spec.regression, spec.boxes) if f}
    unread = {f: teacher_writing(f) for f in recipe.expects if f not in written}
    assert not unread, f"{path} reads fields its cache config does not write: {unread}"
    # the student's store is the one its folder's cache config writes, on the same grid
    assert cfg.student.store == cache.store.url
    assert cfg.grid == cache.grid and cfg.classes == cache.classes
    # the shapes it expects are the ones its teachers write (their own configs' channels)
    teachers = {
        name: load_config(str(CONFIGS.parent / p)) for name, p in cache.cache.teacher_configs
    }
    channels = {
        "lidar_bev": teachers["lidar"].model.bev_channels,
        "lidar_bev_s2": 2 * teachers["lidar"].model.bev_channels,
    }
    if "label_encoder" in teachers:  # its heads mimic the LiDAR teacher's two scales
        channels |= {"label_bev": channels["lidar_bev"], "label_bev_s2": channels["lidar_bev_s2"]}
    if "fusion" in teachers:
        fusion = teachers["fusion"].model
        channels |= {"camera_bev": fusion.camera_bev_channels, "fusion_lidar_bev": fusion.bev_channels,
                     "fused_bev": fusion.bev_channels}  # fmt: skip
    for name, shape in recipe.expects.items():
        if shape is not None and name in channels:
            assert shape[0] == channels[name], (path, name, shape, channels[name])


@pytest.mark.parametrize(
    ("recipe", "field", "teacher"),
    [
        ("simdistill", "camera_bev", "fusion"),
        ("labeldistill", "label_bev", "label_encoder"),
        ("cmkd", "lidar_bev", "lidar"),
    ],
)
def test_a_store_without_a_field_the_recipe_needs_fails_at_start_up(
    tmp_path: Path, recipe: str, field: str, teacher: str
) -> None:
    """A LiDAR-only store cannot feed simdistill, a store without the label encoder cannot feed
    labeldistill: train-student's start-up check names the field and its teacher."""
    from test_distill_losses import small_cfg

    from bevkd.stages.train_student import open_for
    from bevkd.storage.fields import bev_feature_field, heatmap_field
    from bevkd.storage.schema import ContractMismatch, StoreContract
    from bevkd.storage.testing import SMALL_GRID, write_store

    kind = "camera_sim" if recipe == "simdistill" else "camera"
    cfg = small_cfg(
        f"model.kind={kind}", f"student.recipe={recipe}", f"student.store={tmp_path / 's.zarr'}"
    )
    # a store of everything the recipe reads but the one field
    recipe_ = build_recipe(cfg)
    fields = []
    for name, shape in recipe_.expects.items():
        if name == field:
            continue
        c = shape[0] if shape else 8
        if "heatmap" in name:
            fields.append(
                heatmap_field(name, c, SMALL_GRID.H, SMALL_GRID.W, activation="probabilities")
            )
        elif name in ("box_regression", "fusion_box_regression"):
            from bevkd.storage.fields import box_regression_field

            fields.append(box_regression_field(name, SMALL_GRID.H, SMALL_GRID.W))
        else:
            fields.append(bev_feature_field(name, c, *shape[1:]))
    write_store(
        str(tmp_path / "s.zarr"),
        StoreContract(2, cfg.grid.bev_grid, tuple(cfg.classes), tuple(fields)),
        n_frames=2,
        shard_size=2,
    )
    with pytest.raises(ContractMismatch, match=rf"{field}.*{teacher}"):
        open_for(cfg, recipe_)
