"""The Teacher protocol: what any torch module offers to be cached (and run online) as a bevkd
teacher, next to the built-in LiDAR, fusion and label-encoder teachers.

A ``cache.teachers`` entry ``my_pkg.teachers:build`` (an importable module) or
``path/to/file.py:build`` (a file, loaded by path) names a factory (:data:`TeacherFactory`)::

    build(cfg: Config, device: torch.device, checkpoint: str) -> Teacher

``cfg`` is the resolved cache config (its grid, classes, data settings), ``checkpoint`` the path
``cache.teacher_checkpoints`` gives the entry ("" when none). The factory returns the teacher on
``device``; bevkd puts it in eval mode and runs it under ``torch.no_grad()``.

What the teacher gives is in its :class:`TeacherDeclaration`; the declared names are the store's
field names. A teacher that names its fields as the LiDAR teacher's (``lidar_bev``,
``heatmap``, ``box_regression``, ``boxes``) stands in for it: every recipe reads them unchanged.
The stage-one writer checks each output against the declaration before writing it
(``bevkd.stages.custom_teacher``). docs/teachers.md has a complete example.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from bevkd.datasets.frame import Batch
from bevkd.models.outputs import Detections, HeadOutput, TeacherOutput
from bevkd.pipeline.config import TEACHER_KINDS, Config
from bevkd.pipeline.errors import BevkdError
from bevkd.pipeline.geometry import BEVGrid

# The output types too, so that a teacher file needs one import from bevkd.
__all__ = [
    "Detections",
    "FeatureDecl",
    "HeadOutput",
    "Teacher",
    "TeacherDeclaration",
    "TeacherFactory",
    "TeacherOutput",
]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class FeatureDecl:
    """One BEV feature map a teacher gives: ``(B, channels, H / stride, W / stride)`` on the
    declared grid of ``(H, W)`` cells."""

    channels: int
    stride: int = 1


@dataclass(frozen=True)
class TeacherDeclaration:
    """What a teacher's :class:`TeacherOutput` holds, named as the store names it.

    - ``name``: the teacher's name in provenance, errors and ``student.teacher_checkpoints``
      (not one of the built-in kinds).
    - ``grid`` and ``classes``: the BEV grid its maps live on and its heatmap's class order;
      both must equal the cache config's (the store's).
    - ``features``: ``TeacherOutput.features`` key -> :class:`FeatureDecl`; the key is the
      store field's name.
    - ``heatmap`` / ``regression`` / ``boxes``: the store field names of ``head.heatmap``
      ((B, K, H, W) logits, K = len(classes)), ``head.regression`` ((B, 10, H, W) in
      ``REGRESSION_CHANNELS`` order) and ``detections`` (one :class:`Detections` per frame);
      "" when it does not give them (then ``head`` holds empty tensors and ``detections`` is
      empty).
    - ``labeled_tokens``: the frame tokens whose GT trained it; None when unknown (a label
      budget then refuses the store, as for any teacher that does not say what it saw).
    """

    name: str
    grid: BEVGrid
    classes: tuple[str, ...]
    features: Mapping[str, FeatureDecl] = field(default_factory=dict)
    heatmap: str = ""
    regression: str = ""
    boxes: str = ""
    labeled_tokens: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "features", dict(self.features))
        if self.labeled_tokens is not None:
            object.__setattr__(self, "labeled_tokens", tuple(self.labeled_tokens))
        where = f"teacher declaration {self.name!r}"
        if not _NAME.match(self.name) or self.name in TEACHER_KINDS:
            raise BevkdError(
                f"{where}: the name must be letters, digits, '_' or '-' and not one of the "
                f"built-in teachers {list(TEACHER_KINDS)}"
            )
        names = self.field_names
        if not names:
            raise BevkdError(
                f"{where}: it declares no field (features, heatmap, regression, boxes)"
            )
        if bad := [n for n in names if not _NAME.match(n)]:
            raise BevkdError(f"{where}: field names {bad} must be letters, digits, '_' or '-'")
        if len(set(names)) != len(names):
            raise BevkdError(f"{where}: a field name is declared twice in {list(names)}")
        for key, spec in self.features.items():
            if not isinstance(spec, FeatureDecl) or spec.channels < 1 or spec.stride < 1:
                raise BevkdError(
                    f"{where}: feature {key!r} must be a FeatureDecl with channels >= 1 and "
                    f"stride >= 1, got {spec!r}"
                )

    @property
    def field_names(self) -> tuple[str, ...]:
        """Every store field this teacher writes, features first."""
        head = (self.heatmap, self.regression, self.boxes)
        return (*self.features, *(n for n in head if n))


@runtime_checkable
class Teacher(Protocol):
    """Any object with a :class:`TeacherDeclaration`, called on a collated :class:`Batch`
    (``points`` (sum P, 6) with the batch index in column 0, ``images`` (B, K, 3, H, W), ...),
    returning a :class:`TeacherOutput` with exactly the declared fields, and a ``state_dict``
    (hashed into the store's provenance). Any ``nn.Module`` with a ``declaration`` attribute
    qualifies."""

    declaration: TeacherDeclaration

    def __call__(self, batch: Batch) -> TeacherOutput: ...

    def state_dict(self) -> Mapping[str, Any]: ...


# build(cfg, device, checkpoint) -> Teacher
TeacherFactory = Callable[[Config, torch.device, str], Teacher]
