"""What a custom teacher (:mod:`bevkd.models.protocol`) declares and gives, checked before the
store is planned and before each shard is written.

Every error names the teacher (its declared name and factory entry), the frames (tokens) and the
field: a missing or undeclared name, a shape that is not the declared channels on the store's
grid at the declared stride, a dtype that is not floating point, a non-finite value (the frame
that holds it), detections that do not fit the store's box rows, and a grid or class list that
differs from the store's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import torch

from bevkd.models.outputs import Detections, TeacherOutput
from bevkd.models.protocol import TeacherDeclaration
from bevkd.pipeline.errors import BevkdError
from bevkd.pipeline.geometry import REGRESSION_CHANNELS, BEVGrid
from bevkd.storage.schema import grid_text


class TeacherOutputError(BevkdError):
    """A custom teacher gave something other than what it declares, or than the store holds."""


# fail(frames, field, what) raises a TeacherOutputError naming the teacher, frames and field
Fail = Callable[[Sequence[str], str, str], NoReturn]


def frames_text(tokens: Sequence[str]) -> str:
    return f"frame {tokens[0]}" if len(tokens) == 1 else f"frames {', '.join(tokens)}"


def check_declaration(
    label: str, declaration: Any, grid: BEVGrid, classes: Sequence[str]
) -> TeacherDeclaration:
    """The teacher's declaration, refused unless it fits the store: its grid and classes are
    the store's, and every feature's stride divides the grid."""
    if not isinstance(declaration, TeacherDeclaration):
        raise TeacherOutputError(
            f"{label}: its `declaration` is a {type(declaration).__name__}, not a "
            "bevkd.models.protocol.TeacherDeclaration"
        )
    if declaration.grid != grid:
        raise TeacherOutputError(
            f"{label}: it declares the BEV grid {grid_text(declaration.grid)}, the store's is "
            f"{grid_text(grid)} (grid.point_cloud_range, voxel_size, bev_stride): build the "
            "teacher on cfg.grid.bev_grid, or set the cache config's grid to the teacher's"
        )
    if tuple(declaration.classes) != tuple(classes):
        raise TeacherOutputError(
            f"{label}: it declares the classes {list(declaration.classes)}, the store's are "
            f"{list(classes)} (the config's `classes`, in heatmap channel order)"
        )
    for name, spec in declaration.features.items():
        if grid.H % spec.stride or grid.W % spec.stride:
            raise TeacherOutputError(
                f"{label}: feature {name!r} has stride {spec.stride}, which does not divide the "
                f"store's {grid.H}x{grid.W} grid"
            )
    return declaration


def expected_shapes(declaration: TeacherDeclaration, grid: BEVGrid) -> dict[str, tuple[int, ...]]:
    """Store field -> per-frame shape of every spatial field the teacher declares."""
    h, w = grid.shape
    out: dict[str, tuple[int, ...]] = {
        name: (spec.channels, h // spec.stride, w // spec.stride)
        for name, spec in declaration.features.items()
    }
    if declaration.heatmap:
        out[declaration.heatmap] = (len(declaration.classes), h, w)
    if declaration.regression:
        out[declaration.regression] = (len(REGRESSION_CHANNELS), h, w)
    return out


def check_output(
    label: str, declaration: TeacherDeclaration, out: Any, tokens: Sequence[str], capacity: int
) -> None:
    """Refuse ``out`` (the teacher's output on the frames ``tokens``) unless it holds exactly
    the declared fields, each finite, floating point and of the declared shape on the
    declaration's (the store's) grid, and, if declared, one :class:`Detections` per frame of at
    most ``capacity`` boxes."""

    def fail(frames: Sequence[str], name: str, what: str) -> NoReturn:
        raise TeacherOutputError(f"{label}, {frames_text(frames)}: field {name!r}: {what}")

    if not isinstance(out, TeacherOutput):
        raise TeacherOutputError(
            f"{label}, {frames_text(tokens)}: it returned a {type(out).__name__}, not a "
            "bevkd.models.outputs.TeacherOutput"
        )
    declared = set(declaration.features)
    for name in sorted(declared - set(out.features)):
        fail(
            tokens,
            name,
            f"declared but not in TeacherOutput.features (it has {sorted(out.features)})",
        )
    for name in sorted(set(out.features) - declared):
        fail(tokens, name, "in TeacherOutput.features but not declared: declare it or drop it")
    tensors: dict[str, Any] = {name: out.features[name] for name in declaration.features}
    for part, stored in (("heatmap", declaration.heatmap), ("regression", declaration.regression)):
        value = getattr(out.head, part, None) if out.head is not None else None
        if stored:
            tensors[stored] = value
        elif isinstance(value, torch.Tensor) and value.numel():
            fail(
                tokens,
                f"head.{part}",
                f"given but not declared: set {part}= in the declaration, or return an empty tensor",
            )
    shapes = expected_shapes(declaration, declaration.grid)
    for name, value in tensors.items():
        check_tensor(fail, name, value, (len(tokens), *shapes[name]), tokens)
    if declaration.boxes:
        check_detections(fail, declaration, out.detections, tokens, capacity)
    elif out.detections:
        fail(
            tokens,
            "detections",
            "given but not declared: set boxes= in the declaration, or return []",
        )


def check_tensor(
    fail: Fail, name: str, value: Any, shape: tuple[int, ...], tokens: Sequence[str]
) -> None:
    """One (B, C, H', W') field: a floating-point tensor of ``shape``, finite in every frame."""
    if not isinstance(value, torch.Tensor):
        fail(tokens, name, f"a {type(value).__name__}, not a torch.Tensor")
    if not value.is_floating_point():
        fail(
            tokens,
            name,
            f"dtype {value.dtype}; a teacher gives floating-point maps (stored as float32)",
        )
    if value.ndim and value.shape[0] != len(tokens):
        fail(tokens, name, f"{value.shape[0]} frames in the output for a batch of {len(tokens)}")
    if tuple(value.shape) != shape:
        fail(
            tokens,
            name,
            f"shape {tuple(value.shape)}, declared {shape} (B, channels, the store's grid at the field's stride)",
        )
    finite = torch.isfinite(value.detach().float()).reshape(len(tokens), -1)
    for i in torch.nonzero(~finite.all(dim=1)).flatten().tolist():
        fail([tokens[i]], name, f"{int((~finite[i]).sum())} non-finite values (NaN or inf)")


def check_detections(
    fail: Fail,
    declaration: TeacherDeclaration,
    detections: Any,
    tokens: Sequence[str],
    capacity: int,
) -> None:
    """One :class:`Detections` per frame: boxes (N, 9) and scores (N,) finite floats, labels
    (N,) integer class ids of the declared classes, N at most the store's ``capacity``."""
    name = declaration.boxes
    if not isinstance(detections, list | tuple) or len(detections) != len(tokens):
        count = (
            len(detections) if isinstance(detections, list | tuple) else type(detections).__name__
        )
        fail(
            tokens,
            name,
            f"{count} detections for a batch of {len(tokens)} frames (one Detections per frame)",
        )
    for token, det in zip(tokens, detections, strict=True):
        if not isinstance(det, Detections):
            fail([token], name, f"a {type(det).__name__}, not a bevkd.models.outputs.Detections")
        n = det.boxes.shape[0] if det.boxes.ndim == 2 else -1
        if det.boxes.shape != (n, 9) or det.scores.shape != (n,) or det.labels.shape != (n,):
            fail(
                [token],
                name,
                f"boxes {tuple(det.boxes.shape)}, scores {tuple(det.scores.shape)}, labels {tuple(det.labels.shape)}; expected (N, 9), (N,), (N,)",
            )
        if not (det.boxes.is_floating_point() and det.scores.is_floating_point()):
            fail(
                [token],
                name,
                f"boxes {det.boxes.dtype} and scores {det.scores.dtype} must be floating point",
            )
        if (
            det.labels.is_floating_point()
            or det.labels.is_complex()
            or det.labels.dtype == torch.bool
        ):
            fail([token], name, f"labels are {det.labels.dtype}; they are integer class ids")
        if n > capacity:
            fail(
                [token],
                name,
                f"{n} boxes, more than the store's {capacity} rows (head.max_detections): keep the top {capacity} by score",
            )
        if not (torch.isfinite(det.boxes).all() and torch.isfinite(det.scores).all()):
            fail([token], name, "non-finite box or score values (NaN or inf)")
        k = len(declaration.classes)
        if n and (int(det.labels.min()) < 0 or int(det.labels.max()) >= k):
            fail(
                [token],
                name,
                f"class ids {sorted(set(det.labels.tolist()))} outside 0..{k - 1} (the declared classes)",
            )
