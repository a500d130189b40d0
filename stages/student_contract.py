"""What a student config expects of a teacher store, checked when training starts.

:func:`check_store` compares the store's contract with the student's grid, classes and the
fields its recipe reads (with the per-frame shapes it needs). Every difference is named with
both values, and a missing field names the teacher that writes it.
"""

from __future__ import annotations

from collections.abc import Mapping

from bevkd.pipeline.config import Config
from bevkd.storage.fields import MAP_TO_BEV_FIELD, teacher_writing
from bevkd.storage.schema import ContractMismatch, StoreContract, grid_text

# Fields whose channels a student config sets elsewhere than student.bev_channels (the LSS
# output's width: model.camera_bev_channels).
CHANNEL_KEYS: dict[str, str] = {
    "camera_bev": "model.camera_bev_channels",
    MAP_TO_BEV_FIELD: "model.camera_bev_channels",
}


def _missing_hint(name: str) -> str:
    teacher = teacher_writing(name)
    hint = f"the {teacher} teacher writes it: add {teacher} to cache.teachers"
    if name.endswith("_s2"):
        hint += " and 2 to cache.lidar_bev_scales"
    if name == MAP_TO_BEV_FIELD:  # opt-in: the map-to-BEV output (distill.bev_layer=map_to_bev)
        hint += ", set cache.lidar_bev_pre=true"
    return hint + ", and re-cache"


def store_problems(
    contract: StoreContract, cfg: Config, expects: Mapping[str, tuple[int, ...] | None]
) -> list[str]:
    """Every way the store differs from what ``cfg`` and a recipe's ``expects`` need."""
    problems = []
    grid = cfg.grid.bev_grid
    if contract.grid != grid:
        problems.append(
            f"BEV grid: the store's is {grid_text(contract.grid)}; the student's config "
            f"(grid.point_cloud_range, voxel_size, bev_stride) gives {grid_text(grid)}"
        )
    if tuple(contract.classes) != tuple(cfg.classes):
        problems.append(
            f"classes: the store has {list(contract.classes)}, the student's config "
            f"has {list(cfg.classes)}"
        )
    for name, shape in expects.items():
        if name not in contract.field_names:
            problems.append(
                f"field {name!r} is missing ({_missing_hint(name)}); the store has "
                f"{list(contract.field_names)}"
            )
            continue
        have = contract.field(name).shape
        if shape is not None and tuple(have) != tuple(shape):
            key = CHANNEL_KEYS.get(name, "student.bev_channels")
            section, setting = key.split(".")
            value = getattr(getattr(cfg, section), setting)
            problems.append(
                f"field {name!r} has per-frame shape {tuple(have)}, the student needs "
                f"{tuple(shape)} ({key}={value}; set it to the teacher's channels)"
            )
    return problems


def check_store(
    contract: StoreContract, cfg: Config, expects: Mapping[str, tuple[int, ...] | None], url: str
) -> None:
    """Raise :class:`ContractMismatch` naming every problem, or return quietly."""
    problems = store_problems(contract, cfg, expects)
    if problems:
        raise ContractMismatch(
            f"store {url} cannot train this student (recipe {cfg.student.recipe}): "
            + "; ".join(problems)
        )
