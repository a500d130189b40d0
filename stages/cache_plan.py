"""What a cache run writes, decided before any shard runs: the frames it caches, and the store
contract, each teacher field's shape read off one real forward of its teacher.

Here too the checks that need the teachers themselves: two teachers writing one field are
refused (:func:`field_owners`), and so is a cache config that contradicts a teacher's own
settings (:func:`teacher_setting_conflicts`): the teacher decides the grid its fields live on.
:mod:`bevkd.stages.cache_teacher` runs the plan; :mod:`bevkd.stages.cache_resume` compares it
with a store already there.
"""

from __future__ import annotations

from typing import Any

import torch

from bevkd.datasets.dataset import FrameDataset, load_frames
from bevkd.datasets.frame import Frame
from bevkd.pipeline.config import Config, from_dict, is_custom_teacher, to_dict
from bevkd.pipeline.errors import BevkdError
from bevkd.stages import custom_teacher, teacher_runner


def select_frames(cfg: Config) -> list[Frame]:
    """Frames of every split role in ``cache.splits``, in order, ``cache.max_frames`` per role."""
    frames: list[Frame] = []
    for role in cfg.cache.splits:
        chosen = load_frames(cfg, role)
        frames.extend(chosen[: cfg.cache.max_frames] if cfg.cache.max_frames else chosen)
    if not frames:
        raise BevkdError(
            f"cache.splits {list(cfg.cache.splits)} select no frames under {cfg.data.root}"
        )
    return frames


def teacher_setting_conflicts(cfg: Config, name: str, teacher_cfg: Config, path: str) -> list[str]:
    """Settings of the cache config that contradict teacher ``name``'s own (from its
    checkpoint): the BEV grid and classes always, the LiDAR sweeps of a teacher that reads
    points, the cameras and image size of one that reads images. The teacher is the source:
    its fields live on its grid, whatever the cache config says."""
    keys = ["grid", "classes"]
    if teacher_cfg.model.kind in ("lidar", "centerpoint", "fusion", "label_encoder"):
        keys.append("data.lidar_sweeps")
    if teacher_cfg.model.kind == "fusion":
        keys += ["data.cameras", "data.image_size"]
    mine, theirs = flatten(to_dict(cfg)), flatten(to_dict(teacher_cfg))
    out = []
    for key in sorted(k for k in mine if any(k == p or k.startswith(p + ".") for p in keys)):
        if mine[key] != theirs.get(key):
            out.append(
                f"{key} is {mine[key]!r} in the cache config but {theirs.get(key)!r} in teacher "
                f"{name}'s checkpoint {path}"
            )
    return out


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"section.key": value}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def plan_contract(cfg: Config, frames: list[Frame], device: torch.device | None = None) -> Any:
    """The store contract, with field shapes read off one real forward of every teacher."""
    from bevkd.storage.fields import (
        bev_feature_field,
        box_regression_field,
        boxes_field,
        embedding_field,
        heatmap_field,
    )
    from bevkd.storage.schema import SCHEMA_VERSION, StoreContract

    device = device or torch.device("cpu")
    field_owners(cfg, device)  # two teachers writing one field: refused before any forward
    probe = _first_loadable(cfg, frames)
    overrides = dict(cfg.store.codecs)
    fields = []
    with torch.no_grad():
        for name in cfg.cache.teachers:
            if is_custom_teacher(name):
                built = custom_teacher.build(cfg, name, device)
                fields += custom_teacher.contract_fields(cfg, built, probe, device)
                continue
            spec = teacher_runner.TEACHER_FIELDS[name]
            path = teacher_runner.checkpoint_of(cfg, name)
            model, teacher_cfg, _ = teacher_runner.load_teacher_once(path, device)
            if conflicts := teacher_setting_conflicts(cfg, name, teacher_cfg, path):
                raise BevkdError(
                    "the cache config contradicts the teacher it runs: "
                    + "; ".join(conflicts)
                    + ". The teacher's settings decide what it writes: remove these overrides "
                    "or set them to the teacher's values"
                )
            out = teacher_runner.forward_frozen(model, [probe], device)
            for src, dst in teacher_runner.wanted_features(
                name, cfg.cache.lidar_bev_scales, cfg.cache.lidar_bev_pre
            ).items():
                if src not in out.features:
                    raise BevkdError(
                        f"teacher {name} ({path}, a {teacher_cfg.model.kind} model) gives no "
                        f"{src} on this grid (it gives {', '.join(sorted(out.features))}); "
                        + {"lidar_bev_pre": "set cache.lidar_bev_pre=false",
                           "lidar_bev_s2": "leave 2 out of cache.lidar_bev_scales"}.get(src, "")
                    )  # fmt: skip
                c, h, w = out.features[src].shape[1:]
                make = embedding_field if spec.labeled_only else bev_feature_field
                fields.append(make(dst, c, h, w, codec=overrides.get(dst)))
            if spec.heatmap:
                k, h, w = out.head.heatmap.shape[1:]
                fields.append(
                    heatmap_field(
                        spec.heatmap,
                        k,
                        h,
                        w,
                        codec=overrides.get(spec.heatmap),
                        activation=cfg.cache.heatmap_as,
                    )
                )
                fields.append(
                    box_regression_field(
                        spec.regression, h, w, codec=overrides.get(spec.regression)
                    )
                )
                fields.append(boxes_field(spec.boxes, capacity=box_capacity(cfg, teacher_cfg)))
    grid = cfg.grid.bev_grid
    return StoreContract(SCHEMA_VERSION, grid, tuple(cfg.classes), tuple(fields))


def box_capacity(cfg: Config, teacher_cfg: Config) -> int:
    """Rows of a teacher's ``boxes`` field: ``head.max_detections``, or for an imported
    CenterPoint at least what its per-task NMS can keep (tasks x ``post_nms``)."""
    if teacher_cfg.model.kind == "centerpoint":
        cp = teacher_cfg.centerpoint
        return max(cfg.head.max_detections, len(cp.tasks) * cp.post_nms)
    return cfg.head.max_detections


def field_owners(cfg: Config, device: torch.device) -> dict[str, str]:
    """Store field -> the teacher that writes it; two teachers naming one field (or two custom
    teachers declaring one name) are refused."""
    owners: dict[str, str] = {}
    declared: dict[str, str] = {}
    for name in cfg.cache.teachers:
        if is_custom_teacher(name):
            built = custom_teacher.build(cfg, name, device)
            label, names = built.label, built.declaration.field_names
            if built.declaration.name in declared:
                raise BevkdError(
                    f"cache.teachers: {declared[built.declaration.name]} and {name} both declare "
                    f"the name {built.declaration.name!r}; a store names each teacher once"
                )
            declared[built.declaration.name] = name
        else:
            spec = teacher_runner.TEACHER_FIELDS[name]
            features = teacher_runner.wanted_features(
                name, cfg.cache.lidar_bev_scales, cfg.cache.lidar_bev_pre
            )
            label = f"teacher {name}"
            names = (*features.values(), spec.heatmap, spec.regression, spec.boxes)
        for field_name in filter(None, names):
            if field_name in owners:
                raise BevkdError(
                    f"store field {field_name!r} would be written by both {owners[field_name]} "
                    f"and {label}: rename it in the custom teacher's declaration, or cache the "
                    "two teachers into separate stores"
                )
            owners[field_name] = label
    return owners


def _first_loadable(cfg: Config, frames: list[Frame]) -> Any:
    dataset = FrameDataset(frames, cfg.data, train=False)
    errors = []
    for i in range(len(frames)):
        if frames[i].has_label or "label_encoder" not in cfg.cache.teachers:
            try:
                return dataset[i]
            except BevkdError as exc:
                errors.append(str(exc))
                if len(errors) >= 5:
                    break
    raise BevkdError("no loadable labelled frame to size the store's fields: " + "; ".join(errors))


def plan_task(
    cfg_dict: dict, frames: list[Frame], torch_threads: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The store contract (as a dict) and the teachers' provenance, where the shard tasks run:
    a dask worker loads the teachers here, once, instead of the client and then the worker."""
    from bevkd.pipeline.cluster import prepare_process, task_device

    prepare_process(torch_threads)
    cfg = from_dict(Config, cfg_dict)
    device = task_device()
    contract = plan_contract(cfg, frames, device)
    return contract.to_dict(), teacher_runner.describe_teachers(cfg, cfg.cache.teachers, device)
