"""LabelDistill's label encoder: GT boxes rasterised on the BEV grid -> features shaped like the
LiDAR teacher's BEV maps (``lidar_bev``, ``lidar_bev_s2``), trained through the frozen teacher's
neck and head by :class:`LabelEncoderTeacher`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from bevkd.models.image_backbone import BasicBlock
from bevkd.models.outputs import TeacherOutput
from bevkd.pipeline.config import Config, ConfigError, config_sha256, recorded_config, to_dict
from bevkd.pipeline.geometry import BEVGrid

if TYPE_CHECKING:
    from bevkd.datasets.frame import Batch
    from bevkd.models.lidar_teacher import LidarTeacher

BOX_INPUT_DIM = 9  # x, y, z, l, w, h, yaw, vx, vy

# Key of the LiDAR teacher in a label-encoder checkpoint's ``sources``.
LIDAR_SOURCE = "lidar_teacher"


def rasterize_boxes(
    boxes: torch.Tensor, labels: torch.Tensor, grid: BEVGrid, num_classes: int
) -> torch.Tensor:
    """One frame: (N, 9) boxes + (N,) labels -> (9 + K, H, W) label raster.

    A box covers the cells whose centres lie in the rectangle of half its length and half its
    width around its centre (local ``|x| <= l/4, |y| <= w/4``, rotated by its yaw), plus always
    the cell containing its centre, so small boxes are never lost. A covered cell holds the raw
    box vector and the class one-hot; where boxes overlap the later one wins (LabelDistill paints
    boxes in order). Labels < 0 (ignored) are skipped.
    """
    height, width = grid.shape
    out = torch.zeros(BOX_INPUT_DIM + num_classes, height, width, device=boxes.device)
    keep = labels >= 0
    boxes, labels = boxes[keep].float(), labels[keep].long()
    if len(boxes) == 0:
        return out
    if int(labels.max()) >= num_classes:
        raise ValueError(
            f"rasterize_labels: class id {int(labels.max())} is not below num_classes "
            f"{num_classes}; check the config's class list against the dataset"
        )
    # The devkit gives NaN velocity to boxes without a neighbouring annotation.
    boxes = torch.nan_to_num(boxes, nan=0.0)
    cols = (torch.arange(width, device=boxes.device) + 0.5) * grid.cell + grid.x_min
    rows = (torch.arange(height, device=boxes.device) + 0.5) * grid.cell + grid.y_min
    dx = cols[None, None, :] - boxes[:, 0, None, None]  # (N, 1, W)
    dy = rows[None, :, None] - boxes[:, 1, None, None]  # (N, H, 1)
    cos, sin = torch.cos(boxes[:, 6])[:, None, None], torch.sin(boxes[:, 6])[:, None, None]
    local_x = cos * dx + sin * dy  # (N, H, W) cell centres in each box's frame
    local_y = -sin * dx + cos * dy
    inside = (local_x.abs() <= boxes[:, 3, None, None] / 4) & (
        local_y.abs() <= boxes[:, 4, None, None] / 4
    )
    col = torch.floor((boxes[:, 0] - grid.x_min) / grid.cell).long()
    row = torch.floor((boxes[:, 1] - grid.y_min) / grid.cell).long()
    in_grid = ((col >= 0) & (col < width) & (row >= 0) & (row < height)).nonzero().squeeze(1)
    inside[in_grid, row[in_grid], col[in_grid]] = True
    # Owner of each cell: the highest box index covering it (1-based, 0 = empty).
    order = torch.arange(1, len(boxes) + 1, device=boxes.device)[:, None, None]
    owner = (inside.long() * order).amax(dim=0)
    covered = owner > 0
    vectors = torch.cat([boxes[:, :BOX_INPUT_DIM], F.one_hot(labels, num_classes).float()], dim=1)
    out[:, covered] = vectors[owner[covered] - 1].T
    return out


def rasterize_labels(
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    grid: BEVGrid,
    num_classes: int,
) -> torch.Tensor:
    """GT of a batch (lists of (N_b, 9) boxes and (N_b,) labels) -> (B, 9 + K, H, W)."""
    return torch.stack(
        [
            rasterize_boxes(b, lab, grid, num_classes)
            for b, lab in zip(gt_boxes, gt_labels, strict=True)
        ]
    )


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each cell of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: a channels-last result would silently switch every later conv's layout
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


def _cell_mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """Per-cell MLP (Linear-ReLU-Linear) as 1x1 convolutions."""
    return nn.Sequential(
        nn.Conv2d(cin, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, cout, 1)
    )


def _feature_head(cin: int, cout: int, stride: int) -> nn.Sequential:
    # Replicate padding: the map edge is ordinary empty road, not a dark border.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode="replicate"),
        LayerNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class LabelEncoder(nn.Module):
    """Label raster (B, 9 + K, H, W) -> features named like ``LidarTeacher.bev_features``:
    ``lidar_bev`` (B, lidar_channels, H, W) and ``lidar_bev_s2`` (B, lidar_s2_channels, H/2, W/2).
    """

    def __init__(
        self, num_classes: int, channels: int, lidar_channels: int, lidar_s2_channels: int
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.box_mlp = _cell_mlp(BOX_INPUT_DIM, channels, channels)
        self.class_mlp = _cell_mlp(num_classes, channels, channels)
        self.mix_mlp = _cell_mlp(channels, channels, channels)
        self.norm = LayerNorm2d(channels)
        self.block = BasicBlock(channels, channels)
        self.head = _feature_head(channels, lidar_channels, stride=1)
        self.head_s2 = _feature_head(channels, lidar_s2_channels, stride=2)

    def forward(self, raster: torch.Tensor) -> dict[str, torch.Tensor]:
        boxes, classes = raster[:, :BOX_INPUT_DIM], raster[:, BOX_INPUT_DIM:]
        x = self.mix_mlp(self.box_mlp(boxes) + self.class_mlp(classes))
        x = self.block(self.norm(x))
        return {"lidar_bev": self.head(x), "lidar_bev_s2": self.head_s2(x)}


class LabelEncoderTeacher(nn.Module):
    """The label encoder trained through a frozen LiDAR teacher's neck and head.

    The detection loss of ``head(neck(encoder(raster(GT))))`` against the same GT makes the
    encoder an approximate inverse of neck∘head. The teacher stays frozen for good: its
    parameters never require grad and it stays in eval mode whatever ``train()`` is called
    with, so its BatchNorm statistics never move (LabelDistill's released code lets them).
    Gradients still flow *through* the teacher into the encoder.
    """

    def __init__(
        self,
        encoder: LabelEncoder,
        lidar_teacher: LidarTeacher,
        grid: BEVGrid,
        lidar_source: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.lidar_teacher = lidar_teacher
        self.grid = grid
        # What ``save_checkpoint`` embeds (see :func:`lidar_source`): the teacher's weights are
        # already in this module's state_dict, so with its config a checkpoint of this model
        # rebuilds without the LiDAR teacher's file.
        self.checkpoint_sources: dict[str, dict[str, Any]] = (
            {LIDAR_SOURCE: lidar_source} if lidar_source is not None else {}
        )
        for param in self.lidar_teacher.parameters():
            param.requires_grad_(False)
        self.lidar_teacher.eval()

    def train(self, mode: bool = True) -> LabelEncoderTeacher:
        super().train(mode)
        self.lidar_teacher.eval()
        return self

    def forward(self, batch: Batch, decode: bool = False) -> TeacherOutput:
        """Features ``label_bev`` (B, C1, H, W) and ``label_bev_s2`` (B, C2, H/2, W/2); the head
        output is the frozen teacher's head on them, decoded when ``decode``."""
        raster = rasterize_labels(
            batch.gt_boxes, batch.gt_labels, self.grid, self.encoder.num_classes
        )
        features = self.encoder(raster.to(batch.images.device))
        head = self.lidar_teacher.head(self.lidar_teacher.neck(features))
        detections = self.lidar_teacher.decode(head) if decode else []
        return TeacherOutput(
            features={"label_bev": features["lidar_bev"], "label_bev_s2": features["lidar_bev_s2"]},
            head=head,
            detections=detections,
        )

    def loss(self, output: TeacherOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """The LiDAR teacher's own detection loss terms on the encoder's head output."""
        return self.lidar_teacher.loss(output, batch)


def lidar_source(teacher_cfg: Config, checkpoint: str | Path, sha256: str) -> dict[str, Any]:
    """The record a label-encoder checkpoint embeds of the LiDAR teacher it was built from:
    its resolved config (enough to rebuild its architecture) and, for provenance, the file it
    came from and that file's sha256."""
    return {
        "config": to_dict(teacher_cfg),
        "config_sha256": config_sha256(teacher_cfg),
        "checkpoint": str(checkpoint),
        "sha256": sha256,
    }


def _check_lidar_teacher(cfg: Config, teacher_cfg: Config, where: str) -> None:
    """The teacher of ``teacher_cfg`` (described by ``where``) is a LiDAR teacher on ``cfg``'s
    grid and classes."""
    if teacher_cfg.model.kind != "lidar":
        raise ConfigError(
            f"{where} holds a '{teacher_cfg.model.kind}' teacher; the label encoder needs a "
            "'lidar' one: set model.checkpoint to a LiDAR teacher's checkpoint"
        )
    for name, ours, theirs in (
        ("grid", cfg.grid, teacher_cfg.grid),
        ("classes", cfg.classes, teacher_cfg.classes),
    ):
        if ours != theirs:
            raise ConfigError(
                f"{name} of this config ({ours}) differs from the LiDAR teacher's in {where} ({theirs}); use the teacher's"
            )


def _assemble(
    cfg: Config, teacher: LidarTeacher, teacher_cfg: Config, source: dict[str, Any]
) -> LabelEncoderTeacher:
    c1 = teacher_cfg.model.bev_channels  # SECONDBackbone: lidar_bev C, lidar_bev_s2 2C
    encoder = LabelEncoder(len(cfg.classes), cfg.model.label_encoder_channels, c1, 2 * c1)
    return LabelEncoderTeacher(encoder, teacher, cfg.grid.bev_grid, source)


def build_label_encoder_teacher(cfg: Config) -> LabelEncoderTeacher:
    """A fresh label encoder around the trained LiDAR teacher of ``cfg.model.checkpoint``.

    The teacher is rebuilt from its own checkpoint (its config fixes its architecture); its
    grid and classes must match ``cfg``'s. The encoder's output channels follow the teacher's
    ``lidar_bev``/``lidar_bev_s2``; its width is ``model.label_encoder_channels``. The model
    remembers the teacher's config and sha256, which its checkpoints embed, so they load
    without that file (:func:`rebuild_label_encoder_teacher`).
    """
    from bevkd.models.checkpoint import load_teacher  # lazy: the teacher may import spconv

    if not cfg.model.checkpoint:
        raise ConfigError(
            "model.checkpoint is empty: the label encoder is trained through a trained LiDAR "
            "teacher; set it to that teacher's checkpoint (e.g. work/demo/teacher_lidar/best.pt)"
        )
    path = cfg.model.checkpoint
    teacher, teacher_cfg, sha = load_teacher(path)
    _check_lidar_teacher(cfg, teacher_cfg, f"model.checkpoint {path}")
    return _assemble(
        cfg, cast("LidarTeacher", teacher), teacher_cfg, lidar_source(teacher_cfg, path, sha)
    )


def rebuild_label_encoder_teacher(
    cfg: Config, sources: dict[str, dict[str, Any]]
) -> LabelEncoderTeacher:
    """The architecture of a saved label encoder, LiDAR teacher included, from the teacher
    config its checkpoint embeds (``sources``, see :func:`lidar_source`); reads no file. The
    weights, the teacher's too, come from that checkpoint's state_dict."""
    from bevkd.models.builders import build_lidar_teacher  # lazy: may import spconv

    source = sources[LIDAR_SOURCE]
    teacher_cfg = recorded_config(source["config"])
    _check_lidar_teacher(
        cfg, teacher_cfg, f"the LiDAR teacher embedded from {source.get('checkpoint', '?')}"
    )
    teacher = cast("LidarTeacher", build_lidar_teacher(teacher_cfg))  # kind checked above
    return _assemble(cfg, teacher, teacher_cfg, source)
