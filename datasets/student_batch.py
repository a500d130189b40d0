"""What one student step consumes, typed: :class:`StudentBatch`, a dataset batch (inputs, GT,
``has_label``, points for a teacher run inside the step) with :class:`Targets` (the store
fields, already moved by each sample's BEV augmentation)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from bevkd.datasets.frame import Batch, Sample, collate


@dataclass
class Targets:
    """Collated store fields of a batch.

    ``fields[name]``: (B, C, H, W), zeros where ``present[name]`` (B,) is False (a field a
    frame lacks: ``label_bev`` on an unlabeled frame); ``boxes[name]``: B tensors (N_b, 11)
    of box rows (9 box values, score, label), empty where absent.
    """

    fields: dict[str, torch.Tensor] = field(default_factory=dict)
    present: dict[str, torch.Tensor] = field(default_factory=dict)
    boxes: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def field(self, name: str) -> torch.Tensor:
        """``fields[name]``, or a KeyError that names what the batch has."""
        if name not in self.fields:
            raise KeyError(f"no store field {name!r} in this batch (it has {sorted(self.fields)})")
        return self.fields[name]


@dataclass
class StudentBatch(Batch):
    """One step's frames: a dataset :class:`~bevkd.datasets.frame.Batch` (images, ``cam2img``,
    ``cam2ego``, LiDAR depth maps, points, GT boxes and labels, ``has_label``: GT terms apply
    only where it is True) plus ``targets``, the cached teacher fields moved by each frame's BEV
    augmentation (:class:`Targets`). ``teacher_inputs``: with ``train.targets=online``, the
    batch each teacher that loads its own view of the frames reads (teacher name -> batch;
    :mod:`bevkd.stages.online_teacher`). ``to`` and ``pin_memory`` move both too."""

    targets: Targets = field(default_factory=Targets)
    teacher_inputs: dict[str, Batch] = field(default_factory=dict)


def collate_targets(
    targets: list[dict[str, torch.Tensor]], expected: Mapping[str, Sequence[int]] | None = None
) -> Targets:
    """Stack per-sample target dicts; a field absent in some samples is zero-filled and masked
    (``present``). ``expected`` (field -> per-frame shape: (C, H, W), or (capacity, 11) for
    boxes) names the fields every batch has, even one where no sample holds it (a batch of
    unlabelled frames has no ``label_bev`` to collate): zeros, ``present`` all False."""
    shapes = dict(expected or {})
    names = sorted(set(shapes) | {n for t in targets for n in t})
    fields, present, boxes = {}, {}, {}
    for name in names:
        have = torch.tensor([name in t for t in targets], dtype=torch.bool)
        example = next((t[name] for t in targets if name in t), None)
        if example is None:
            example = torch.zeros(tuple(shapes[name]))
        present[name] = have
        if example.ndim == 2:  # boxes rows
            boxes[name] = [t.get(name, torch.zeros((0, example.shape[1]))) for t in targets]
            continue
        fields[name] = torch.stack(
            [t[name] if name in t else torch.zeros_like(example) for t in targets]
        )
    return Targets(fields, present, boxes)


def collate_student(
    items: list[tuple[Sample, dict[str, torch.Tensor]]],
    expected: Mapping[str, Sequence[int]] | None = None,
) -> StudentBatch:
    """DataLoader ``collate_fn`` for :class:`bevkd.datasets.cached.CachedTargets` items (its
    ``collate`` passes the fields it reads as ``expected``)."""
    batch = collate([s for s, _ in items])
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return StudentBatch(**fields, targets=collate_targets([t for _, t in items], expected))
