"""Teacher builders: a literal ``model.kind -> builder`` table; each builder takes the whole
:class:`Config` and returns a module constructed from explicit, typed arguments.

Builders import their modules inside the function, so importing this table never imports
spconv (only building a voxel-encoder LiDAR teacher does). To add a teacher, add one line to
:data:`TEACHER_BUILDERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from torch import nn

from bevkd.models.fusion_teacher import build_fusion_teacher
from bevkd.models.label_encoder import build_label_encoder_teacher, rebuild_label_encoder_teacher
from bevkd.pipeline.config import Config, ConfigError

# Per-point features after the batch column: x, y, z, intensity, time-lag (datasets.frame.Batch).
POINT_FEATURES = 5


def build_lidar_encoder(cfg: Config) -> nn.Module:
    """The point encoder named by ``model.lidar_encoder``: ``voxel`` (spconv) or ``pillar``."""
    grid, model = cfg.grid, cfg.model
    if model.lidar_encoder == "voxel":
        from bevkd.models.sparse_encoder import SparseEncoder  # imports spconv

        return SparseEncoder(
            POINT_FEATURES,
            grid.point_cloud_range,
            grid.voxel_size,
            grid.bev_stride,
            model.sparse_channels,
            model.max_points_per_voxel,
            model.max_voxels,
            layers=model.sparse_layers,
        )
    if model.lidar_encoder == "pillar":
        from bevkd.models.pillar_encoder import PillarEncoder

        return PillarEncoder(
            POINT_FEATURES,
            grid.point_cloud_range,
            grid.voxel_size,
            grid.bev_stride,
            model.sparse_channels,
            max_pillars=model.max_voxels,
        )
    raise ConfigError(
        f"model.lidar_encoder '{model.lidar_encoder}' is unknown; use 'voxel' or 'pillar'"
    )


def build_lidar_teacher(cfg: Config) -> nn.Module:
    """CenterPoint-style :class:`LidarTeacher` from ``cfg.grid``, ``cfg.model``, ``cfg.head``."""
    from bevkd.models.bev_backbone import SECONDFPN, SECONDBackbone
    from bevkd.models.head import CenterHead
    from bevkd.models.lidar_teacher import LidarTeacher

    encoder = build_lidar_encoder(cfg)
    bev_channels = cfg.model.bev_channels
    backbone = SECONDBackbone(
        cast(int, encoder.out_channels), bev_channels, cfg.model.bev_backbone_layers
    )
    neck = SECONDFPN(bev_channels, up_channels=bev_channels)
    head = CenterHead(neck.out_channels, len(cfg.classes), cfg.model.head_channels)
    return LidarTeacher(cfg.grid, cfg.head, cfg.classes, encoder, backbone, neck, head)


def build_centerpoint(cfg: Config) -> nn.Module:
    """An imported mmdet3d / OpenPCDet CenterPoint (``model.kind: centerpoint``) from
    ``cfg.centerpoint`` and ``cfg.grid``."""
    from bevkd.models.centerpoint import build_centerpoint_teacher

    if tuple(cfg.classes) != cfg.centerpoint.classes:
        raise ConfigError(
            f"classes {list(cfg.classes)} differ from the imported CenterPoint's tasks "
            f"{list(cfg.centerpoint.classes)}: a centerpoint teacher's classes are its tasks' "
            "classes in task order"
        )
    return build_centerpoint_teacher(cfg.centerpoint, cfg.grid)


TEACHER_BUILDERS: dict[str, Callable[[Config], nn.Module]] = {
    "lidar": build_lidar_teacher,
    "centerpoint": build_centerpoint,
    "fusion": build_fusion_teacher,
    "label_encoder": build_label_encoder_teacher,
}


def build_camera_student(cfg: Config) -> nn.Module:
    """The camera student (``model.kind: camera``); lazy, like the teachers."""
    from bevkd.models.camera_student import build_camera_student as build

    return build(cfg)


def build_sim_student(cfg: Config) -> nn.Module:
    """SimDistill's simulated multi-modal camera student (``model.kind: camera_sim``)."""
    from bevkd.models.sim_student import build_sim_student as build

    return build(cfg)


# The camera-only students train-student trains.
STUDENT_BUILDERS: dict[str, Callable[[Config], nn.Module]] = {
    "camera": build_camera_student,
    "camera_sim": build_sim_student,
}


def build_student(cfg: Config) -> nn.Module:
    """The student ``model.kind`` names (a key of :data:`STUDENT_BUILDERS`)."""
    return _build(STUDENT_BUILDERS, cfg, "student")


# Every trainable kind: the teachers and the students.
MODEL_BUILDERS: dict[str, Callable[[Config], nn.Module]] = {
    **TEACHER_BUILDERS,
    **STUDENT_BUILDERS,
}


# Kinds whose builder reads another checkpoint (the label encoder: ``model.checkpoint``) and
# whose own checkpoints therefore embed what they took from it (``sources``, see
# ``checkpoint.save_checkpoint``): kind -> rebuild from the config and those sources alone.
REBUILDERS: dict[str, Callable[[Config, dict[str, dict[str, Any]]], nn.Module]] = {
    "label_encoder": rebuild_label_encoder_teacher,
}


def _build(table: dict[str, Callable[[Config], nn.Module]], cfg: Config, what: str) -> nn.Module:
    builder = table.get(cfg.model.kind)
    if builder is None:
        raise ConfigError(
            f"model.kind '{cfg.model.kind}' has no {what} builder; known kinds: {sorted(table)}"
        )
    return builder(cfg)


def build_model(cfg: Config) -> nn.Module:
    """Build the teacher or student named by ``cfg.model.kind``."""
    return _build(MODEL_BUILDERS, cfg, "model")


def build_teacher(cfg: Config) -> nn.Module:
    """Build the teacher named by ``cfg.model.kind``."""
    return _build(TEACHER_BUILDERS, cfg, "teacher")
