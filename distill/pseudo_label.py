"""Pseudo-labels from the store: the teacher's cached boxes as detection targets on frames
without GT (LPCG, Peng et al., ECCV 2022; CMKD's first version, Hong et al., ECCV 2022,
distilled through pseudo-labels on unlabeled KITTI raw frames too)."""

from __future__ import annotations

import torch

from bevkd.datasets.student_batch import StudentBatch
from bevkd.distill.base import Recipe
from bevkd.models.camera_student import StudentOutput
from bevkd.models.outputs import HeadOutput
from bevkd.models.targets import build_targets, check_finite, detection_loss
from bevkd.pipeline.config import Config, ConfigError
from bevkd.pipeline.geometry import BEVGrid

# Columns of a cached box row (storage.schema.BOX_ROW_CHANNELS): 9 box values, score, label.
SCORE, LABEL = 9, 10


def select_pseudo_boxes(rows: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The cached box rows (N, 11) whose score is at or above their class's threshold
    (``thresholds`` (K,)): boxes (M, 9), labels (M,) long, scores (M,)."""
    labels = rows[:, LABEL].long()
    known = (labels >= 0) & (labels < len(thresholds))
    keep = known & (rows[:, SCORE] >= thresholds[labels.clamp(0, len(thresholds) - 1)])
    kept = rows[keep]
    return kept[:, :9], kept[:, LABEL].long(), kept[:, SCORE]


def soft_detection_loss(head: HeadOutput, boxes: list[torch.Tensor], labels: list[torch.Tensor],
                        scores: list[torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:  # fmt: skip
    """CenterPoint's loss with each pseudo-box weighted by the teacher's score: the focal
    loss's positive term at a box's centre cell is multiplied by its score ``s``, and so is its
    L1 regression; the negatives keep CenterPoint's ``(1 - g)^4`` penalty reduction. Sums are
    divided by the summed score of the positives (a frame of confident boxes weighs like one of
    GT boxes; one of doubtful boxes weighs less):

    ``heatmap = (sum_pos s (1-p)^2 (-log p) + sum_neg (1-g)^4 p^2 (-log(1-p))) / max(1, sum s)``
    """
    grid, head_cfg, k = cfg.grid.bev_grid, cfg.head, len(cfg.classes)
    targets = build_targets(boxes, labels, grid, k, head_cfg)
    heat = targets.heatmap.to(head.heatmap.device)
    # each box's score at its centre cell, in its class's channel
    peaks = torch.zeros_like(heat)
    for i, (b, lab, s) in enumerate(zip(boxes, labels, scores, strict=True)):
        if len(b):
            cls, row, col, on_grid = _peak_index(b, lab, grid, k)
            peaks[i].index_put_((cls, row, col), s[on_grid].float().to(heat.device))
    pos = heat.eq(1).float()
    weight = peaks * pos
    logits = head.heatmap.float()
    prob = torch.sigmoid(logits)
    pos_loss = -torch.nn.functional.logsigmoid(logits) * (1 - prob) ** 2 * weight
    neg_loss = -torch.nn.functional.logsigmoid(-logits) * prob**2 * (1 - heat) ** 4 * (1 - pos)
    heatmap = (pos_loss.sum() + neg_loss.sum()) / weight.sum().clamp(min=1.0)
    # regression: the score of the box at each centre cell
    cell_score = weight.amax(dim=1)  # (B, H, W)
    mask = targets.mask.to(heat.device).float() * cell_score
    cw = torch.tensor(head_cfg.code_weights, device=heat.device).view(1, -1, 1, 1)
    err = (head.regression.float() - targets.regression.to(heat.device)).abs() * cw
    regression = (err.sum(dim=1) * mask).sum() / mask.sum().clamp(min=1.0)
    return check_finite(
        {
            "heatmap": head_cfg.heatmap_weight * heatmap,
            "regression": head_cfg.regression_weight * regression,
        }
    )


def _peak_index(
    boxes: torch.Tensor, labels: torch.Tensor, grid: BEVGrid, k: int
) -> tuple[torch.Tensor, ...]:
    """(class, row, col) of the centre cells of the boxes on the grid, and which boxes those are
    (a box off the grid draws no gaussian; clamped into the grid, its score would overwrite
    that of a box in the edge cell)."""
    col = torch.floor((boxes[:, 0] - grid.x_min) / grid.cell).long()
    row = torch.floor((boxes[:, 1] - grid.y_min) / grid.cell).long()
    lab = labels.long()
    on = (col >= 0) & (col < grid.W) & (row >= 0) & (row < grid.H) & (lab >= 0) & (lab < k)
    return lab[on], row[on], col[on], on


class PseudoLabel(Recipe):
    """The teacher's cached boxes as labels where there are none.

    On every frame without GT (and on labelled frames too if ``distill.pseudo_on_labelled``),
    the rows of ``distill.pseudo_boxes`` (``boxes``: the LiDAR teacher's; ``fusion_boxes``)
    scoring at or above their class's threshold (``distill.pseudo_threshold``, per class
    ``distill.pseudo_class_thresholds``) become targets of the same CenterPoint loss as GT:
    ``pseudo_heatmap`` + ``pseudo_regression`` (weight ``distill.pseudo_weight``). The boxes
    were moved by each frame's BEV augmentation when read, exactly as its GT is.
    ``distill.pseudo_soft`` weights each box's positive heatmap cell and its regression by its
    score (:func:`soft_detection_loss`) instead of counting every kept box as certain.

    Labelled frames keep their GT terms and, unless asked, never see teacher boxes. It
    combines with other recipes by name: ``cmkd+pseudo_label`` adds these terms to CMKD's.
    """

    thresholds: torch.Tensor  # (K,) per-class score threshold (a buffer: moves with the module)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, use_gt=cfg.distill.mode == "gt+kd")
        self.cfg, d = cfg, self.d
        self.field = d.pseudo_boxes
        self.expects = {self.field: None}
        per_class = dict(d.pseudo_class_thresholds)
        if unknown := sorted(set(per_class) - set(cfg.classes)):
            raise ConfigError(
                f"distill.pseudo_class_thresholds names classes {unknown} that are not in "
                f"classes {list(cfg.classes)}"
            )
        self.register_buffer(
            "thresholds",
            torch.tensor([per_class.get(c, d.pseudo_threshold) for c in cfg.classes]),
            persistent=False,
        )

    def pseudo_frames(self, batch: StudentBatch) -> torch.Tensor:
        """(B,) bool: the frames that take pseudo-labels."""
        if self.d.pseudo_on_labelled:
            return torch.ones_like(batch.has_label, dtype=torch.bool)
        return ~batch.has_label.bool()

    def pseudo_targets(self, batch: StudentBatch) -> tuple[list[torch.Tensor], ...]:
        """Per frame: the kept boxes (M, 9), labels (M,), scores (M,); empty where the frame
        takes no pseudo-labels or the store has no boxes for it."""
        rows = batch.targets.boxes[self.field]
        chosen = self.pseudo_frames(batch)
        out: tuple[list[torch.Tensor], ...] = ([], [], [])
        for i, frame_rows in enumerate(rows):
            if not bool(chosen[i]):
                frame_rows = frame_rows[:0]  # this frame takes no pseudo-labels
            kept = select_pseudo_boxes(frame_rows, self.thresholds.to(frame_rows.device))
            for part, value in zip(out, kept, strict=True):
                part.append(value)
        return out

    def kd_terms(self, out: StudentOutput, batch: StudentBatch) -> dict[str, torch.Tensor]:
        boxes, labels, scores = self.pseudo_targets(batch)
        frames = self.pseudo_frames(batch)
        device = out.head.heatmap.device
        boxes = [b.to(device) for b in boxes]
        labels = [lab.to(device) for lab in labels]
        if not bool(frames.any()):
            zero = out.head.heatmap.sum() * 0.0 + out.head.regression.sum() * 0.0
            return {"pseudo_heatmap": zero, "pseudo_regression": zero.clone()}
        sel = torch.nonzero(frames).squeeze(1).to(device)
        head = HeadOutput(
            out.head.heatmap.index_select(0, sel), out.head.regression.index_select(0, sel)
        )
        pick = [int(i) for i in sel]
        if self.d.pseudo_soft:
            det = soft_detection_loss(
                head, [boxes[i] for i in pick], [labels[i] for i in pick],
                [scores[i].to(device) for i in pick], self.cfg,
            )  # fmt: skip
        else:
            tgt = build_targets(
                [boxes[i] for i in pick], [labels[i] for i in pick], self.grid,
                self.num_classes, self.head_cfg,
            )  # fmt: skip
            det = detection_loss(head, tgt, self.head_cfg)
        w = self.d.pseudo_weight
        return {"pseudo_heatmap": w * det["heatmap"], "pseudo_regression": w * det["regression"]}
