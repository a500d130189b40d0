"""Step: import a CenterPoint trained in mmdet3d or OpenPCDet as a bevkd teacher checkpoint.

``run(checkpoint, source, cfg, out)`` converts the foreign weights (:mod:`bevkd.models.foreign`),
loads them into :class:`~bevkd.models.centerpoint.CenterPointTeacher` strictly, and writes a
self-contained bevkd checkpoint: its config (``model.kind: centerpoint``, the grid and
architecture), the weights, and ``imported_from`` (framework, file, sha256, kernel layout,
where the architecture was read). ``cache-teacher`` and ``--targets online`` then use it as the
``lidar`` teacher, through ``cache.lidar_checkpoint``.

An imported teacher records no ``labeled_tokens``: bevkd cannot know which frames' labels
trained it, so a student under a label budget refuses its store unless the run declares
``student.teacher_saw_hidden_labels=true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bevkd.models.checkpoint import save_checkpoint
from bevkd.models.foreign import import_centerpoint
from bevkd.pipeline.config import Config


@dataclass
class ImportResult:
    out: Path
    config: Config
    origin: dict[str, Any]
    parameters: int

    def summary(self) -> list[str]:
        cp, grid = self.config.centerpoint, self.config.grid
        h, w = grid.bev_shape
        return [
            f"imported {self.origin['framework']} CenterPoint {self.origin['file']} "
            f"(sha256 {self.origin['sha256'][:12]}) -> {self.out}",
            f"  architecture from {self.origin['architecture_from']}: {cp.encoder} encoder, "
            f"{len(cp.tasks)} task(s), {self.parameters:,} parameters",
            f"  grid: voxel {grid.voxel_size} m over {grid.point_cloud_range}, out_size_factor "
            f"{grid.bev_stride} -> BEV {h} x {w}",
            f"  classes: {', '.join(self.config.classes)}",
            f"  post-processing: {cp.nms} NMS, score > {cp.score_threshold}, "
            f"top {cp.max_per_task} per task, at most {cp.post_nms} boxes per task",
            f"  use it: bevkd cache-teacher --set cache.lidar_checkpoint={self.out}",
        ]


def run(
    checkpoint: str | Path,
    source: str,
    cfg: Config,
    out: str | Path,
    kernel_layout: str = "auto",
    assume_mmdet3d_1x: bool = False,
) -> ImportResult:
    from bevkd.models.centerpoint import build_centerpoint_teacher

    imported = import_centerpoint(checkpoint, source, cfg, kernel_layout, assume_mmdet3d_1x)
    model = build_centerpoint_teacher(imported.config.centerpoint, imported.config.grid)
    model.load_state_dict(imported.state, strict=True)
    model.eval()
    path = save_checkpoint(out, model, imported.config, imported_from=imported.origin)
    parameters = sum(p.numel() for p in model.parameters())
    return ImportResult(path, imported.config, imported.origin, parameters)
