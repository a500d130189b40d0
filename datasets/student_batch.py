"""What one student step consumes, typed: :class:`StudentBatch` (inputs, GT, ``has_label``)
with :class:`Targets` (the store fields, already moved by each sample's BEV augmentation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bevkd.datasets.frame import Sample


@dataclass
class Targets:
    """Collated store fields of a batch.

    ``fields[name]``: (B, C, H, W), zeros where ``present[name]`` (B,) is False (a field a
    frame lacks: ``label_bev`` on an unlabeled frame); ``boxes[name]``: B tensors (N_b, 11)
    of box rows (9 box values, score, label), empty where absent.
    """

    fields: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    boxes: dict[str, list[torch.Tensor]]

    def to(self, device: torch.device | str) -> Targets:
        return Targets(
            {k: v.to(device, non_blocking=True) for k, v in self.fields.items()},
            {k: v.to(device, non_blocking=True) for k, v in self.present.items()},
            {k: [b.to(device, non_blocking=True) for b in v] for k, v in self.boxes.items()},
        )

    def pin_memory(self) -> Targets:
        """Page-locked copies (the DataLoader calls this with ``pin_memory=True``), so the
        later ``to(device, non_blocking=True)`` overlaps with compute."""
        return Targets(
            {k: v.pin_memory() for k, v in self.fields.items()},
            {k: v.pin_memory() for k, v in self.present.items()},
            {k: [b.pin_memory() for b in v] for k, v in self.boxes.items()},
        )

    def field(self, name: str) -> torch.Tensor:
        """``fields[name]``, or a KeyError that names what the batch has."""
        if name not in self.fields:
            raise KeyError(f"no store field {name!r} in this batch (it has {sorted(self.fields)})")
        return self.fields[name]


@dataclass
class StudentBatch:
    """One step's frames. For ``B`` frames of ``K`` cameras:

    - ``images`` (B, K, 3, H, W) normalised; ``cam2img``, ``cam2ego`` (B, K, 4, 4) of the
      network input and the augmented ego frame; ``img_aug`` (B, K, 4, 4); ``bev_aug`` (B, 4, 4);
    - ``depth`` (B, K, H/s, W/s) LiDAR depth in metres (0 = no return);
    - ``gt_boxes`` B tensors (N_b, 9) and ``gt_labels`` B tensors (N_b,), empty without labels;
    - ``has_label`` (B,) bool: GT terms apply only where it is True;
    - ``targets``: the cached teacher fields (:class:`Targets`).
    """

    tokens: list[str]
    indices: torch.Tensor
    has_label: torch.Tensor
    images: torch.Tensor
    cam2img: torch.Tensor
    cam2ego: torch.Tensor
    img_aug: torch.Tensor
    bev_aug: torch.Tensor
    depth: torch.Tensor
    gt_boxes: list[torch.Tensor]
    gt_labels: list[torch.Tensor]
    targets: Targets

    @property
    def size(self) -> int:
        return len(self.tokens)

    def to(self, device: torch.device | str) -> StudentBatch:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return StudentBatch(
            tokens=self.tokens, indices=move(self.indices), has_label=move(self.has_label),
            images=move(self.images), cam2img=move(self.cam2img), cam2ego=move(self.cam2ego),
            img_aug=move(self.img_aug), bev_aug=move(self.bev_aug), depth=move(self.depth),
            gt_boxes=[move(b) for b in self.gt_boxes], gt_labels=[move(b) for b in self.gt_labels],
            targets=self.targets.to(device),
        )  # fmt: skip

    def pin_memory(self) -> StudentBatch:
        """Page-locked copies of every tensor (see :meth:`Targets.pin_memory`)."""
        pin = lambda t: t.pin_memory()  # noqa: E731
        return StudentBatch(
            tokens=self.tokens, indices=pin(self.indices), has_label=pin(self.has_label),
            images=pin(self.images), cam2img=pin(self.cam2img), cam2ego=pin(self.cam2ego),
            img_aug=pin(self.img_aug), bev_aug=pin(self.bev_aug), depth=pin(self.depth),
            gt_boxes=[pin(b) for b in self.gt_boxes], gt_labels=[pin(b) for b in self.gt_labels],
            targets=self.targets.pin_memory(),
        )  # fmt: skip


def collate_targets(targets: list[dict[str, torch.Tensor]]) -> Targets:
    """Stack per-sample target dicts; a field absent in some samples is zero-filled and masked."""
    names = sorted({n for t in targets for n in t})
    fields, present, boxes = {}, {}, {}
    for name in names:
        have = torch.tensor([name in t for t in targets], dtype=torch.bool)
        example = next(t[name] for t in targets if name in t)
        if example.ndim == 2:  # boxes rows
            boxes[name] = [t.get(name, torch.zeros((0, example.shape[1]))) for t in targets]
            continue
        fields[name] = torch.stack(
            [t[name] if name in t else torch.zeros_like(example) for t in targets]
        )
        present[name] = have
    return Targets(fields, present, boxes)


def collate_student(items: list[tuple[Sample, dict[str, torch.Tensor]]]) -> StudentBatch:
    """DataLoader ``collate_fn`` for :class:`bevkd.datasets.cached.CachedTargets` items."""
    samples = [s for s, _ in items]
    return StudentBatch(
        tokens=[s.token for s in samples],
        indices=torch.tensor([s.index for s in samples], dtype=torch.int64),
        has_label=torch.tensor([s.has_label for s in samples], dtype=torch.bool),
        images=torch.stack([s.images for s in samples]),
        cam2img=torch.stack([s.cam2img for s in samples]),
        cam2ego=torch.stack([s.cam2ego for s in samples]),
        img_aug=torch.stack([s.img_aug for s in samples]),
        bev_aug=torch.stack([s.bev_aug for s in samples]),
        depth=torch.stack([s.depth for s in samples]),
        gt_boxes=[s.gt_boxes for s in samples],
        gt_labels=[s.gt_labels for s in samples],
        targets=collate_targets([t for _, t in items]),
    )


def samples_only(items: list[Any]) -> Any:
    """Collate for a loader of plain samples (no store): a :class:`StudentBatch` whose targets
    are empty (what baseline students and evaluation read)."""
    return collate_student([(s, {}) for s in items])
