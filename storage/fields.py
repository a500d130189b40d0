"""Field constructors with the default codec of each kind.

Defaults come from measurements (docs/store.md has the tables): ``benchmarks/store_io.py`` on
synthetic teacher-like fields and the demo store of the trained teachers. 8-bit per-channel
quantization for every map: BEV features and label embeddings (mostly zero), heatmaps, and
box regression, which a trained head writes densely (every cell, not only near objects), so
fp16 kept only 2.3x there against 4.8x for 8 bits (max error 0.0065, 0.3% of the channel
range); lossless fp32 for boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

from bevkd.storage.schema import BOX_ROW_CHANNELS, REGRESSION_CHANNELS, FieldSpec

DEFAULT_CODECS: dict[str, str] = {
    "bev_feature": "uint8",
    "embedding": "uint8",
    "heatmap": "uint8",
    "box_regression": "uint8",
    "boxes": "fp32",
}


def bev_feature_field(name: str, channels: int, height: int, width: int, codec: str | None = None,
                      labeled_only: bool = False) -> FieldSpec:  # fmt: skip
    """A teacher BEV feature map ``(channels, height, width)``."""
    return FieldSpec(name, "bev_feature", "float32", (channels, height, width),
                     codec or DEFAULT_CODECS["bev_feature"], labeled_only=labeled_only)  # fmt: skip


def embedding_field(name: str, channels: int, height: int, width: int, codec: str | None = None,
                    labeled_only: bool = True) -> FieldSpec:  # fmt: skip
    """A label-encoder BEV embedding; it needs GT, so it exists for labeled frames only."""
    return FieldSpec(name, "embedding", "float32", (channels, height, width),
                     codec or DEFAULT_CODECS["embedding"], labeled_only=labeled_only)  # fmt: skip


def heatmap_field(name: str, classes: int, height: int, width: int, codec: str | None = None,
                  activation: str = "logits") -> FieldSpec:  # fmt: skip
    """Per-class centre heatmap ``(classes, height, width)``; logits unless declared otherwise."""
    return FieldSpec(name, "heatmap", "float32", (classes, height, width),
                     codec or DEFAULT_CODECS["heatmap"], heatmap_activation=activation)  # fmt: skip


def box_regression_field(name: str, height: int, width: int, codec: str | None = None) -> FieldSpec:
    """CenterPoint box regression ``(10, height, width)`` in :data:`REGRESSION_CHANNELS` order."""
    return FieldSpec(name, "box_regression", "float32", (len(REGRESSION_CHANNELS), height, width),
                     codec or DEFAULT_CODECS["box_regression"], channel_map=REGRESSION_CHANNELS)  # fmt: skip


def boxes_field(name: str, capacity: int = 256, labeled_only: bool = False) -> FieldSpec:
    """Decoded boxes, up to ``capacity`` rows of :data:`BOX_ROW_CHANNELS` per frame."""
    return FieldSpec(name, "boxes", "float32", (capacity, len(BOX_ROW_CHANNELS)), "fp32",
                     channel_map=BOX_ROW_CHANNELS, labeled_only=labeled_only)  # fmt: skip


@dataclass(frozen=True)
class TeacherFields:
    """How one teacher's outputs are named in the store.

    ``features``: teacher feature name -> field name; ``heatmap``/``regression``/``boxes``: the
    head's field names (empty: not stored); ``labeled_only``: the teacher needs GT.
    """

    features: dict[str, str]
    heatmap: str = ""
    regression: str = ""
    boxes: str = ""
    labeled_only: bool = False


# The LiDAR teacher's map-to-BEV output, before its 2D backbone (CMKD's distilled layer):
# written only when ``cache.lidar_bev_pre`` asks for it, so stores without it stay valid.
MAP_TO_BEV_FIELD = "lidar_bev_pre"

TEACHER_FIELDS: dict[str, TeacherFields] = {
    "lidar": TeacherFields(
        features={
            "lidar_bev": "lidar_bev",
            "lidar_bev_s2": "lidar_bev_s2",
            MAP_TO_BEV_FIELD: MAP_TO_BEV_FIELD,
        },
        heatmap="heatmap",
        regression="box_regression",
        boxes="boxes",
    ),
    "fusion": TeacherFields(
        features={
            "camera_bev": "camera_bev",
            "lidar_bev": "fusion_lidar_bev",
            "fused_bev": "fused_bev",
        },
        heatmap="fusion_heatmap",
        regression="fusion_box_regression",
        boxes="fusion_boxes",
    ),
    "label_encoder": TeacherFields(
        features={"label_bev": "label_bev", "label_bev_s2": "label_bev_s2"}, labeled_only=True
    ),
}


def teacher_writing(field_name: str) -> str:
    """The teacher (a key of :data:`TEACHER_FIELDS`) whose caching writes ``field_name``."""
    for teacher, spec in TEACHER_FIELDS.items():
        if field_name in (*spec.features.values(), spec.heatmap, spec.regression, spec.boxes):
            return teacher
    return "no bevkd teacher"
