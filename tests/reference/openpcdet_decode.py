"""CenterHead decoding and post-processing, restated from OpenPCDet (one frame).

Transcribed from OpenPCDet commit 8cacccec11db6f59bf6934600c9a175dae254806:
``pcdet/models/model_utils/centernet_utils.py`` (``_gather_feat``, ``_transpose_and_gather_feat``,
``_topk``, ``decode_bbox_from_heatmap``) and ``pcdet/models/dense_heads/center_head.py``
(``generate_predicted_boxes``). Kept in torch (upstream is torch) so top-k behaves the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .openpcdet_config import CenterPointConfig
from .openpcdet_nms import class_agnostic_nms


@dataclass(frozen=True)
class Decoded:
    """One task's candidates: boxes (N, 9), scores (N,), class_ids (N,) within the task."""

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor


def _gather(feat: torch.Tensor, inds: torch.Tensor) -> torch.Tensor:
    """centernet_utils.py lines 137-152 (``_transpose_and_gather_feat`` for batch 1):
    (C, H, W) map, (K,) flat indices y * W + x -> (K, C)."""
    c = feat.shape[0]
    return feat.permute(1, 2, 0).reshape(-1, c)[inds]


def topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """centernet_utils.py lines 155-170 (``_topk``, batch 1): top ``k`` per class over H * W,
    then top ``k`` of those. scores (C, H, W) -> (score, flat index, class id, y, x), each (k,).
    Needs H * W >= k, as upstream (torch.topk raises otherwise)."""
    num_class, height, width = scores.shape
    per_class, per_class_inds = torch.topk(scores.reshape(num_class, -1), k)
    per_class_inds = per_class_inds % (height * width)
    ys = (per_class_inds // width).float()
    xs = (per_class_inds % width).int().float()
    best, best_ind = torch.topk(per_class.reshape(-1), k)
    classes = (best_ind // k).int()
    return (
        best,
        per_class_inds.reshape(-1)[best_ind],
        classes,
        ys.reshape(-1)[best_ind],
        xs.reshape(-1)[best_ind],
    )


def decode_bbox_from_heatmap(
    maps: dict[str, torch.Tensor], cfg: CenterPointConfig, k: int | None = None
) -> Decoded:
    """center_head.py lines 307-326 then centernet_utils.py lines 173-241 (batch 1, no
    circle NMS, no IoU branch).

    maps: raw head outputs (C, H, W). hm -> sigmoid; dim -> exp; rot channel 0 is cos,
    channel 1 is sin, heading = atan2(sin, cos); x = (col + center[0]) * stride * voxel_x +
    x_min (no half-cell offset: targets are measured from the cell's corner, center_head.py
    lines 126-154); z = center_z as is (the box centre's z). Keeps candidates inside
    POST_CENTER_LIMIT_RANGE (inclusive) with score > SCORE_THRESH (strict).
    """
    k = cfg.max_obj_per_sample if k is None else k
    hm = maps["hm"].sigmoid()
    dim = maps["dim"].exp()
    rot_cos, rot_sin = maps["rot"][0:1], maps["rot"][1:2]
    scores, inds, class_ids, ys, xs = topk(hm, k)
    center = _gather(maps["center"], inds)
    sin = _gather(rot_sin, inds)
    cos = _gather(rot_cos, inds)
    center_z = _gather(maps["center_z"], inds)
    dims = _gather(dim, inds)
    angle = torch.atan2(sin, cos)
    x = xs[:, None] + center[:, 0:1]
    y = ys[:, None] + center[:, 1:2]
    x = x * cfg.feature_map_stride * cfg.voxel_size[0] + cfg.point_cloud_range[0]
    y = y * cfg.feature_map_stride * cfg.voxel_size[1] + cfg.point_cloud_range[1]
    parts = [x, y, center_z, dims, angle]
    if "vel" in maps:  # center_head.py line 313: vel when 'vel' is in HEAD_ORDER
        parts.append(_gather(maps["vel"], inds))
    boxes = torch.cat(parts, dim=-1)
    limit = torch.tensor(cfg.post_center_limit_range, dtype=boxes.dtype)
    mask = (boxes[:, :3] >= limit[:3]).all(dim=1) & (boxes[:, :3] <= limit[3:]).all(dim=1)
    mask &= scores > cfg.score_thresh
    return Decoded(boxes[mask], scores[mask], class_ids[mask])


def class_id_mapping(cfg: CenterPointConfig) -> list[torch.Tensor]:
    """center_head.py lines 64-69: per task, task-local class -> index into class_names."""
    return [
        torch.tensor([cfg.class_names.index(name) for name in names], dtype=torch.long)
        for names in cfg.class_names_each_head
    ]


def generate_predicted_boxes(
    pred_maps: Sequence[dict[str, torch.Tensor]], cfg: CenterPointConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """center_head.py lines 297-365 for one frame -> boxes (N, 9), scores (N,), labels (N,).

    Per task: decode, map task-local class ids to global ones (line 329), class-agnostic
    rotated-BEV NMS within the task (NMS_TYPE nms_gpu, lines 336-341), keep. Tasks are
    concatenated in order and labels become 1-based (line 363).
    """
    mapping = class_id_mapping(cfg)
    boxes, scores, labels = [], [], []
    for task, maps in enumerate(pred_maps):
        decoded = decode_bbox_from_heatmap(maps, cfg)
        task_labels = mapping[task][decoded.class_ids.long()]
        selected = class_agnostic_nms(
            decoded.scores.detach().double().numpy(),
            decoded.boxes.detach().double().numpy(),
            cfg.nms_thresh,
            cfg.nms_pre_maxsize,
            cfg.nms_post_maxsize,
        )
        sel = torch.from_numpy(np.asarray(selected, dtype=np.int64))
        boxes.append(decoded.boxes[sel])
        scores.append(decoded.scores[sel])
        labels.append(task_labels[sel])
    return torch.cat(boxes), torch.cat(scores), torch.cat(labels) + 1
