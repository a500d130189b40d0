"""Custom teachers in stage one: any torch module behind a factory that a ``cache.teachers``
entry names (``my_pkg.teachers:build``, or ``path/to/file.py:build`` loaded by path), returning
a :class:`~bevkd.models.protocol.Teacher`.

The factory is called as ``build(cfg, device, checkpoint)`` (``checkpoint``: the entry's
``cache.teacher_checkpoints`` path, or ""), once per process and source. Its declared names
are the store's field names; its outputs are checked (:mod:`.teacher_checks`) before a shard
is written. Its provenance: the factory entry, the sha256 of the factory's source file and of
its weights (the ``state_dict``, hashed as :func:`~bevkd.models.checkpoint.weights_sha256`
hashes a checkpoint's), and the labelled frames it declares. A resume compares both hashes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bevkd.datasets.frame import Sample, collate
from bevkd.models.outputs import TeacherOutput
from bevkd.models.protocol import Teacher, TeacherDeclaration
from bevkd.pipeline.config import Config, is_custom_teacher
from bevkd.pipeline.errors import BevkdError
from bevkd.stages.teacher_checks import check_declaration, check_output, expected_shapes


class CustomTeacherError(BevkdError):
    """A custom teacher's factory cannot be found, loaded or called, or returns no Teacher."""


@dataclass(frozen=True)
class Built:
    """A custom teacher as built in this process, with what identifies it."""

    entry: str
    teacher: Teacher
    declaration: TeacherDeclaration
    source: Path
    source_sha256: str
    weights_sha256: str
    checkpoint: str

    @property
    def label(self) -> str:
        """How messages name it: ``teacher NAME (ENTRY)``."""
        return f"teacher {self.declaration.name} ({self.entry})"

    @property
    def identity(self) -> str:
        """sha256 over the source and weights hashes: what the store records as this teacher's
        ``checkpoint_sha256``, so a resume compares custom and built-in teachers alike."""
        text = f"source {self.source_sha256}\nweights {self.weights_sha256}\n"
        return hashlib.sha256(text.encode()).hexdigest()


def split_entry(entry: str) -> tuple[str, str]:
    """``(module or file, factory name)`` of a custom teacher entry."""
    if not is_custom_teacher(entry):
        raise CustomTeacherError(
            f"cache.teachers entry {entry!r} is not my_pkg.teachers:build or path/to/file.py:build"
        )
    where, factory = entry.rsplit(":", 1)
    return where, factory


def source_of(entry: str) -> Path:
    """The file that defines an entry's module, found without running it."""
    where, _ = split_entry(entry)
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise CustomTeacherError(f"custom teacher {entry}: no file {path}")
        return path
    try:
        spec = importlib.util.find_spec(where)
    except (ImportError, ValueError):  # a parent package is missing
        spec = None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise CustomTeacherError(
            f"custom teacher {entry}: no module {where} on the Python path (install its package, "
            "add its folder to PYTHONPATH, or name the file: path/to/file.py:factory)"
        )
    return Path(spec.origin).resolve()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_MODULES: dict[tuple[str, str], Any] = {}  # (module or file, source sha256) -> module
_BUILT: dict[tuple[Any, ...], Built] = {}
_LOCK = threading.RLock()


def _module(entry: str, source: Path, sha: str) -> Any:
    """The entry's module as its source reads now (a changed file is loaded again)."""
    where, _ = split_entry(entry)
    key = (where if not where.endswith(".py") else str(source), sha)
    if key in _MODULES:
        return _MODULES[key]
    try:
        if where.endswith(".py"):
            name = "bevkd_custom_teacher_" + sha256_bytes(str(source).encode())[:12]
            spec = importlib.util.spec_from_file_location(name, source)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses and pickling look classes up here
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
            if any(k[0] == where for k in _MODULES):  # its file changed since: read it again
                module = importlib.reload(module)
    except Exception as exc:  # the user's module failed to import: name it, keep the cause
        message = f"custom teacher {entry}: importing {source} failed: {exc!r}"
        raise CustomTeacherError(message) from exc
    _MODULES[key] = module
    return module


def checkpoint_for(cfg: Config, entry: str) -> str:
    return dict(cfg.cache.teacher_checkpoints).get(entry, "")


def build(cfg: Config, entry: str, device: torch.device) -> Built:
    """The custom teacher of ``entry``, built once per process, source, checkpoint file and
    device, in eval mode and frozen, its declaration checked against the store's grid and
    classes."""
    from bevkd.models.checkpoint import weights_sha256

    source = source_of(entry)
    data = source.read_bytes()
    sha = sha256_bytes(data)
    checkpoint = checkpoint_for(cfg, entry)
    stamp = _stamp(checkpoint)
    key = (entry, sha, checkpoint, stamp, str(device), cfg.grid, tuple(cfg.classes))
    with _LOCK:
        if key in _BUILT:
            return _BUILT[key]
        _, name = split_entry(entry)
        factory = getattr(_module(entry, source, sha), name, None)
        if not callable(factory):
            raise CustomTeacherError(f"custom teacher {entry}: {source} defines no function {name}")
        try:
            teacher = factory(cfg, device, checkpoint)
        except BevkdError:
            raise
        except Exception as exc:  # the user's factory failed: name it, keep the cause
            call = f"{name}(cfg, device, checkpoint={checkpoint!r})"
            raise CustomTeacherError(f"custom teacher {entry}: {call} failed: {exc!r}") from exc
        for attr in ("declaration", "state_dict"):
            if not hasattr(teacher, attr) or not callable(teacher):
                raise CustomTeacherError(
                    f"custom teacher {entry}: {name} returned a {type(teacher).__name__}, which "
                    f"is not a Teacher (callable on a Batch, with `{attr}`): see "
                    "bevkd.models.protocol and docs/teachers.md"
                )
        label = f"teacher {getattr(teacher.declaration, 'name', '?')} ({entry})"
        declaration = check_declaration(label, teacher.declaration, cfg.grid.bev_grid, cfg.classes)
        if isinstance(teacher, nn.Module):
            teacher.eval()
            teacher.requires_grad_(False)
        weights = weights_sha256({"model": dict(teacher.state_dict())})
        built = Built(entry, teacher, declaration, source, sha, weights, checkpoint)
        _BUILT[key] = built
        return built


def _stamp(path: str) -> tuple[int, int] | None:
    """(mtime, size) of a checkpoint file, so a file replaced in place is loaded again."""
    if not path or not Path(path).is_file():
        return None
    stat = Path(path).stat()
    return stat.st_mtime_ns, stat.st_size


def contract_fields(cfg: Config, built: Built, probe: Sample, device: torch.device) -> list[Any]:
    """The store fields of a custom teacher, from its declaration, after one checked forward
    on ``probe``."""
    from bevkd.storage.fields import (
        bev_feature_field,
        box_regression_field,
        boxes_field,
        heatmap_field,
    )

    run(cfg, built, [probe], device)
    overrides = dict(cfg.store.codecs)
    d = built.declaration
    shapes = expected_shapes(d, cfg.grid.bev_grid)
    fields = []
    for name in d.features:
        c, h, w = shapes[name]
        fields.append(bev_feature_field(name, c, h, w, codec=overrides.get(name)))
    if d.heatmap:
        _, h, w = shapes[d.heatmap]
        fields.append(
            heatmap_field(d.heatmap, len(d.classes), h, w, codec=overrides.get(d.heatmap),
                          activation=cfg.cache.heatmap_as)
        )  # fmt: skip
    if d.regression:
        _, h, w = shapes[d.regression]
        fields.append(box_regression_field(d.regression, h, w, codec=overrides.get(d.regression)))
    if d.boxes:
        fields.append(boxes_field(d.boxes, capacity=cfg.head.max_detections))
    return fields


def run(
    cfg: Config, built: Built, samples: Sequence[Sample], device: torch.device
) -> TeacherOutput:
    """One checked eval-mode, no-grad forward of a custom teacher over ``samples``."""
    if torch.is_grad_enabled():
        raise RuntimeError("teachers must run under torch.no_grad() when caching")
    batch = collate(list(samples)).to(device)
    out = built.teacher(batch)
    check_output(built.label, built.declaration, out, batch.tokens, cfg.head.max_detections)
    return out


def stored_fields(
    declaration: TeacherDeclaration, out: TeacherOutput, heatmap_as: str
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """A checked output as the store keeps it: field -> (B, C, H', W') float32 (the heatmap as
    ``heatmap_as``), and one (N, 11) box-row tensor per frame (empty if no boxes declared)."""
    from bevkd.stages.teacher_runner import stored_heatmap

    d = declaration
    made = {name: out.features[name].float() for name in d.features}
    if d.heatmap:
        made[d.heatmap] = stored_heatmap(out.head.heatmap, heatmap_as)
    if d.regression:
        made[d.regression] = out.head.regression.float()
    rows = [
        torch.cat([x.boxes.float(), x.scores.float()[:, None], x.labels.float()[:, None]], dim=1)
        for x in (out.detections if d.boxes else [])
    ]
    return made, rows


def forward_into(
    cfg: Config,
    entry: str,
    samples: Sequence[Sample],
    device: torch.device,
    batch_size: int,
    arrays: dict[str, list[np.ndarray]],
    boxes: dict[str, list[np.ndarray]],
) -> None:
    """Run custom teacher ``entry`` over one shard's ``samples``, appending its checked fields
    to ``arrays`` and its box rows to ``boxes`` (as :func:`teacher_runner.forward_shard`)."""
    built = build(cfg, entry, device)
    for start in range(0, len(samples), batch_size):
        out = run(cfg, built, samples[start : start + batch_size], device)
        made, rows = stored_fields(built.declaration, out, cfg.cache.heatmap_as)
        for name, value in made.items():
            arrays.setdefault(name, []).append(value.cpu().numpy())
        if built.declaration.boxes:
            boxes.setdefault(built.declaration.boxes, []).extend(r.cpu().numpy() for r in rows)


def describe(built: Built) -> dict[str, Any]:
    """A custom teacher's provenance record (the store's ``provenance.teachers[name]``)."""
    from bevkd.pipeline.provenance import sha256_lines

    d = built.declaration
    tokens = d.labeled_tokens
    return {
        "architecture": f"{type(built.teacher).__name__} (custom teacher {built.entry})",
        "factory": built.entry,
        "source": str(built.source),
        "source_sha256": built.source_sha256,
        "checkpoint": built.checkpoint,
        "checkpoint_sha256": built.identity,
        "weights_sha256": built.weights_sha256,
        "labeled_tokens": None
        if tokens is None
        else {"count": len(tokens), "sha256": sha256_lines(list(tokens)), "tokens": list(tokens)},
        "declaration": {
            "features": {
                k: {"channels": v.channels, "stride": v.stride} for k, v in d.features.items()
            },
            "heatmap": d.heatmap,
            "regression": d.regression,
            "boxes": d.boxes,
        },
    }


def changes(name: str, then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How custom teacher ``name`` differs from the one that wrote a store (``then``, its
    recorded provenance): another factory, source file or weights."""
    label = f"teacher {name} ({now['factory']})"
    out = []
    if then.get("factory") != now["factory"]:
        out.append(f"{label}: the store was made by the factory {then.get('factory')}")
    if then.get("source_sha256") != now["source_sha256"]:
        out.append(
            f"{label}: its source file {now['source']} has sha256 {now['source_sha256'][:12]}; "
            f"the store was written by {then.get('source')} with sha256 "
            f"{str(then.get('source_sha256'))[:12]}"
        )
    if then.get("weights_sha256") != now["weights_sha256"]:
        out.append(
            f"{label}: its weights (state_dict sha256 {now['weights_sha256'][:12]}) are not the "
            f"ones that wrote the store (sha256 {str(then.get('weights_sha256'))[:12]})"
        )
    return out or [f"{label}: it is not the teacher that wrote the store"]
