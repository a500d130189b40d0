"""Checkpoints: weights plus the resolved config and provenance that made them.

A checkpoint carries its own resolved config, so a teacher is rebuilt from the file alone:
``load_teacher(path)`` needs no config of the caller's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bevkd.pipeline.config import Config, ConfigError, config_sha256, recorded_config, to_dict
from bevkd.pipeline.errors import BevkdError
from bevkd.pipeline.provenance import environment, sha256_file

CHECKPOINT_VERSION = 1
# A zip archive ends with a 22-byte record plus a comment of up to 64 KiB.
ZIP_TAIL = 22 + 65_535


class CheckpointError(BevkdError):
    """A checkpoint file that is missing, unreadable or of another kind than expected."""


def save_checkpoint(path: str | Path, model: nn.Module, cfg: Config, **state: Any) -> Path:
    """Write atomically (temp file + rename), so a killed job never leaves a half checkpoint.

    A model built around another checkpoint (the label encoder around its LiDAR teacher) lists
    what it took from it in its ``checkpoint_sources`` attribute (name -> resolved config,
    file, sha256); that is embedded as ``sources``, so :func:`load_model` rebuilds the model
    from this file alone, whatever became of the other one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "config": to_dict(cfg),
        "config_sha256": config_sha256(cfg),
        "sources": dict(getattr(model, "checkpoint_sources", {})),
        "provenance": environment(),
        **state,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The payload of the bevkd checkpoint at ``path``. Every command reads checkpoints here,
    so a file that is not one is a one-line :class:`CheckpointError` saying what it is."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (train it with `bevkd train-teacher`)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # unpickling raises many types; all mean "not a checkpoint"
        raise CheckpointError(
            f"{path} is not a bevkd checkpoint: {unreadable_reason(path, exc)}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is not a bevkd checkpoint: {_holds(payload)}")
    if "model" not in payload:
        raise CheckpointError(f"{path} is not a bevkd checkpoint: it holds no model weights")
    return payload


def unreadable_reason(path: Path, exc: Exception) -> str:
    """Why torch could not read the file at ``path`` (raising ``exc``): what it looks like,
    from its first and last bytes."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(512)
        f.seek(max(0, size - ZIP_TAIL))
        tail = f.read()
    if size == 0:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04") and b"PK\x05\x06" not in tail:
        return f"it is a torch file cut short ({size} bytes, its zip archive has no end record)"
    if all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head):
        first = (head.decode("ascii").strip().splitlines() or [""])[0][:40]
        return f"it is a text file starting {first!r}"
    reason = (str(exc).strip().splitlines() or [""])[0]
    return f"torch cannot read it ({type(exc).__name__}: {reason})"


def _holds(payload: Any) -> str:
    """What a torch file that is not a bevkd checkpoint holds, and who made it where known."""
    if not isinstance(payload, dict):
        return f"it holds a {type(payload).__name__}, not a checkpoint dict"
    for key, maker, source in (
        ("state_dict", "an mmdet3d", "mmdet3d"),
        ("model_state", "an OpenPCDet", "openpcdet"),
    ):
        if key in payload:
            return (
                f"it looks like {maker} checkpoint (it has '{key}'); make a bevkd teacher of it "
                f"with `bevkd teacher import --from {source}`"
            )
    if "version" in payload:
        return f"it records version {payload['version']!r}, this bevkd reads {CHECKPOINT_VERSION}"
    return f"it holds the keys {', '.join(sorted(map(str, payload))[:8]) or '(none)'}"


def weights_sha256(payload: dict[str, Any]) -> str:
    """sha256 over a checkpoint's weights alone (names, dtypes, shapes and bytes, in name
    order): equal for two trainings that reached the same weights, where the file's own
    sha256 differs by its timestamps and provenance."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(payload["model"].items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def checkpoint_config(payload: dict[str, Any]) -> Config:
    return recorded_config(payload["config"])


def load_teacher(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Config, str]:
    """Rebuild a trained teacher from its checkpoint: (model in eval mode and frozen, its config,
    the checkpoint file's sha256)."""
    from bevkd.models.builders import TEACHER_BUILDERS

    model, cfg, sha = load_model(path, device)
    if cfg.model.kind not in TEACHER_BUILDERS:
        raise CheckpointError(
            f"{path} holds a {cfg.model.kind} model, not a teacher ({', '.join(TEACHER_BUILDERS)})"
        )
    for param in model.parameters():
        param.requires_grad_(False)
    return model, cfg, sha


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Config, str]:
    """Rebuild any trained model (teacher or student) from its checkpoint, in eval mode:
    (model, its config, the checkpoint file's sha256)."""
    payload = load_checkpoint(path, map_location=device)
    cfg = checkpoint_config(payload)
    model = _rebuild(payload, cfg, path)
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    return model, cfg, sha256_file(path)


def _rebuild(payload: dict[str, Any], cfg: Config, path: str | Path) -> nn.Module:
    """The untrained architecture of the checkpoint ``payload`` (of file ``path``), built from
    the file alone where its kind's builder would read another checkpoint (REBUILDERS)."""
    from bevkd.models.builders import REBUILDERS, build_model

    rebuild = REBUILDERS.get(cfg.model.kind)
    if rebuild is None:
        return build_model(cfg)
    sources = payload.get("sources") or {}
    if sources:
        try:
            return rebuild(cfg, sources)
        except (KeyError, ConfigError) as exc:
            raise CheckpointError(
                f"{path}: the {cfg.model.kind} model cannot be rebuilt from the sources it "
                f"embeds ({exc}); retrain it with `bevkd train-teacher`"
            ) from exc
    # Written before checkpoints embedded their sources: the builder reads model.checkpoint.
    try:
        return build_model(cfg)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{path} is a {cfg.model.kind} checkpoint from before checkpoints embedded the "
            f"teacher they were built from, so it needs model.checkpoint "
            f"{cfg.model.checkpoint}, which cannot be read ({exc}). Put that checkpoint back "
            f"at that path, or retrain the {cfg.model.kind} model with `bevkd train-teacher` "
            f"(its new checkpoints load on their own)"
        ) from exc


# Module prefixes that carry over when one teacher kind initialises another: BEVFusion trains
# its fusion stage from the LiDAR-only model's encoder, BEV decoder, neck and head.
INIT_RENAMES: dict[tuple[str, str], dict[str, str]] = {
    ("lidar", "fusion"): {
        "encoder.": "lidar_encoder.",
        "backbone.": "decoder.",
        "neck_module.": "neck.",
        "head.": "head.",
    },
    # A student from a student (CMKD's phase 2 starts from phase 1), or its camera branch
    # from the fusion teacher's.
    ("camera", "camera"): {"": ""},
    ("fusion", "camera"): {"camera.": "camera."},
    # SimDistill's student: from itself, or its camera branch from a student's or the fusion
    # teacher's (whose fuser, decoder, neck and head have its shapes where the channels agree).
    ("camera_sim", "camera_sim"): {"": ""},
    ("camera", "camera_sim"): {"camera.": "camera."},
    ("fusion", "camera_sim"): {
        "camera.": "camera.",
        "fuser.": "fuser.",
        "decoder.": "encoder.",
        "neck.": "neck.",
        "head.": "head.",
    },
}


def init_from_checkpoint(model: nn.Module, kind: str, path: str | Path) -> tuple[int, int]:
    """Copy every weight of the teacher at ``path`` whose renamed key and shape match a weight
    of ``model`` (of kind ``kind``); returns (copied, skipped) tensor counts."""
    payload = load_checkpoint(path)
    source_kind = checkpoint_config(payload).model.kind
    renames = INIT_RENAMES.get((source_kind, kind))
    if renames is None:
        known = ", ".join(f"{a} -> {b}" for a, b in INIT_RENAMES)
        raise CheckpointError(
            f"model.init_from: cannot initialise a {kind} teacher from a {source_kind} one ({known})"
        )
    target = model.state_dict()
    copied, skipped = {}, 0
    for key, value in payload["model"].items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        name = renames[prefix] + key[len(prefix) :] if prefix is not None else None
        if name is not None and name in target and target[name].shape == value.shape:
            copied[name] = value
        else:
            skipped += 1
    model.load_state_dict(copied, strict=False)
    return len(copied), skipped


# What a camera student takes from a LiDAR teacher (CMKD's phase 2 starts from the teacher's
# BEV backbone and head): teacher prefix -> student prefix. The student's BEV encoder is the
# teacher's SECONDBackbone class, its neck SECONDFPN and its head CenterHead, so with matching
# sizes every tensor (BatchNorm statistics included) carries over one to one.
TEACHER_TO_STUDENT: dict[str, str] = {
    "backbone.": "encoder.",
    "neck_module.": "neck.",
    "head.": "head.",
}


def init_from_teacher(model: nn.Module, cfg: Config, path: str | Path) -> int:
    """Copy the 2D backbone, neck and head of the LiDAR teacher at ``path`` into the camera
    student ``model`` (built from ``cfg``): its BEV encoder, neck and head. Every one of those
    tensors must fit, both ways, or nothing is copied and the error names the settings to match.
    Returns the number of tensors copied."""
    where = f"student.init_from_teacher {path}"
    if cfg.model.kind != "camera":
        raise CheckpointError(
            f"{where}: only the camera student (model.kind camera) has the teacher's BEV "
            f"backbone, neck and head; this is a {cfg.model.kind} model"
        )
    payload = load_checkpoint(path)
    teacher = checkpoint_config(payload)
    if teacher.model.kind != "lidar":
        raise CheckpointError(f"{where}: a LiDAR teacher checkpoint is needed, this holds a {teacher.model.kind} model")  # fmt: skip
    if tuple(teacher.classes) != tuple(cfg.classes):
        raise CheckpointError(f"{where}: the teacher's head detects {list(teacher.classes)}, the student's config has {list(cfg.classes)}")  # fmt: skip
    source = {
        TEACHER_TO_STUDENT[p] + key[len(p) :]: value
        for key, value in payload["model"].items()
        for p in TEACHER_TO_STUDENT
        if key.startswith(p)
    }
    target = {k: v for k, v in model.state_dict().items() if k.startswith(tuple(TEACHER_TO_STUDENT.values()))}  # fmt: skip
    misfits = [f"{k}: teacher {tuple(source[k].shape)}, student {tuple(target[k].shape)}"
               for k in sorted(set(source) & set(target)) if source[k].shape != target[k].shape]  # fmt: skip
    misfits += [f"{k}: the student has none" for k in sorted(set(source) - set(target))]
    misfits += [f"{k}: the teacher has none" for k in sorted(set(target) - set(source))]
    if misfits:
        in_channels = payload["model"]["backbone.block1.0.0.weight"].shape[1]
        raise CheckpointError(
            f"{where}: {len(misfits)} tensors of the student's BEV encoder, neck and head do not "
            f"fit the teacher's ({'; '.join(misfits[:3])}). Build the student with the teacher's "
            f"sizes: model.camera_bev_channels={in_channels} (its map-to-BEV channels), "
            f"student.bev_channels={teacher.model.bev_channels}, student.bev_layers="
            f"{list(teacher.model.bev_backbone_layers)}, model.head_channels="
            f"{teacher.model.head_channels}"
        )
    model.load_state_dict(source, strict=False)
    return len(source)
