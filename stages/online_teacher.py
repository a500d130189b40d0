"""Online teacher targets (``train.targets=online``): the teacher in the loop, as every seed
method runs it, and the reference the store is measured against.

The teachers are the checkpoints the store's provenance names (or
``student.teacher_checkpoints``), each checked against the sha256 the store recorded. They
run inside every student step, in eval mode under ``no_grad``, on the *augmented* input: the
frame loaded as the store's teachers read it (their sweeps, cameras and image size, no image
augmentation) and moved by the student sample's ``bev_aug``. The LiDAR teacher reads the
student's own points when the student loads them the same way (sweeps, camera crop), as a
seed's pipeline loads one point cloud per step; the label encoder reads the student's GT,
already moved. Their outputs become the :class:`~bevkd.datasets.student_batch.Targets` the
store path collates: the same field names, shapes, heatmap activation (the store's), box
capacity, and ``present`` masks (label-encoder fields only on frames that keep their GT), so
a recipe cannot tell the two paths apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from bevkd.datasets.dataset import FrameDataset
from bevkd.datasets.frame import Batch, Sample, collate
from bevkd.datasets.student_batch import StudentBatch, Targets, collate_student
from bevkd.pipeline.config import Config, DataConfig
from bevkd.pipeline.errors import BevkdError
from bevkd.storage.fields import TEACHER_FIELDS, TeacherFields, teacher_writing
from bevkd.storage.schema import StoreContract

# The data settings that decide what a teacher reads from a frame.
POINT_SETTINGS = ("lidar_sweeps", "crop_points_to_camera")
IMAGE_SETTINGS = ("cameras", "image_size")


class OnlineTeacherError(BevkdError):
    """The store's teachers cannot run online as asked (a checkpoint missing or not the one
    that made the store)."""


def custom_fields(made: Mapping[str, Any]) -> dict[str, TeacherFields]:
    """Custom teacher -> its store fields, from the declaration a store's provenance records
    (``made``: ``provenance.teachers``)."""
    return {
        name: TeacherFields(
            features={f: f for f in rec["declaration"]["features"]},
            heatmap=rec["declaration"]["heatmap"],
            regression=rec["declaration"]["regression"],
            boxes=rec["declaration"]["boxes"],
        )
        for name, rec in made.items()
        if "factory" in rec
    }


def teachers_for(
    fields: Iterable[str], made: Mapping[str, Any] | None = None
) -> dict[str, list[str]]:
    """Teacher -> the fields among ``fields`` it writes (in :data:`TEACHER_FIELDS` order, then
    the custom teachers of ``made``, a store's ``provenance.teachers``)."""
    custom = custom_fields(made or {})
    owner = {
        f: name
        for name, spec in custom.items()
        for f in (*spec.features.values(), spec.heatmap, spec.regression, spec.boxes)
        if f
    }
    out: dict[str, list[str]] = {}
    for name in fields:
        teacher = owner.get(name) or teacher_writing(name)
        if teacher not in TEACHER_FIELDS and teacher not in custom:
            raise OnlineTeacherError(f"store field {name!r} is written by no bevkd teacher")
        out.setdefault(teacher, []).append(name)
    return {t: out[t] for t in (*TEACHER_FIELDS, *custom) if t in out}


def load_online_teachers(
    store: Any, names: Iterable[str], checkpoints: Mapping[str, str], device: torch.device
) -> dict[str, tuple[nn.Module, Config]]:
    """Each teacher of ``names`` from the checkpoint the store's provenance names (or
    ``checkpoints[name]``), refused unless its sha256 is the one the store recorded."""
    from bevkd.models.checkpoint import load_teacher
    from bevkd.pipeline.provenance import sha256_file

    made = store.provenance.get("teachers", {})
    loaded: dict[str, tuple[nn.Module, Config]] = {}
    for name in names:
        if name not in made:
            raise OnlineTeacherError(
                f"store {store.url} was made by the teachers {sorted(made)}, not {name!r}: "
                "an online run reads the teachers that made the store"
            )
        if "factory" in made[name]:
            loaded[name] = load_custom(store, name, checkpoints.get(name), device)
            continue
        recorded, recorded_sha = made[name]["checkpoint"], made[name]["checkpoint_sha256"]
        path = checkpoints.get(name) or recorded
        if not Path(path).is_file():
            raise OnlineTeacherError(
                f"online teacher {name}: no checkpoint file {path} (the store {store.url} "
                f"records {recorded}, sha256 {recorded_sha}); name where it is with "
                f"--set 'student.teacher_checkpoints=[[{name}, PATH]]'"
            )
        sha = sha256_file(path)
        if sha != recorded_sha:
            raise OnlineTeacherError(
                f"online teacher {name}: checkpoint {path} has sha256 {sha}, but the store "
                f"{store.url} was made by {recorded} with sha256 {recorded_sha}; an online run "
                "must run the teacher that made the store, or the two paths are not comparable"
            )
        model, teacher_cfg, _ = load_teacher(path, device)
        loaded[name] = (model, teacher_cfg)
    return loaded


def load_custom(
    store: Any, name: str, checkpoint: str | None, device: torch.device
) -> tuple[nn.Module, Config]:
    """Custom teacher ``name`` of ``store``, built by its recorded factory (a file: the recorded
    path) with the store's config and its checkpoint (or ``checkpoint``), refused unless its
    source and weights hash as recorded."""
    from bevkd.eval.store_boxes import store_config
    from bevkd.stages import custom_teacher

    rec = store.provenance["teachers"][name]
    where, factory = custom_teacher.split_entry(rec["factory"])
    entry = f"{rec['source']}:{factory}" if where.endswith(".py") else rec["factory"]
    cfg = store_config(store)
    path = checkpoint or rec.get("checkpoint", "")
    paths = ((entry, path),) if path else ()
    cache = dataclasses.replace(cfg.cache, teachers=(entry,), teacher_checkpoints=paths)
    built = custom_teacher.build(dataclasses.replace(cfg, cache=cache), entry, device)
    now = {**custom_teacher.describe(built), "factory": rec["factory"]}
    if now["checkpoint_sha256"] != rec["checkpoint_sha256"]:
        raise OnlineTeacherError(
            f"online teacher {name}: "
            + "; ".join(custom_teacher.changes(name, rec, now))
            + f" (store {store.url}); an online run must run the teacher that made the store"
        )
    return cast(nn.Module, built.teacher), cfg  # a Teacher, called like a module


def reader_settings(store: Any, data: DataConfig) -> DataConfig:
    """``data`` (the student's dataset root and splits) with the input settings the store's
    teachers read frames with (the config in its provenance)."""
    from bevkd.eval.store_boxes import store_config

    made = store_config(store).data
    return dataclasses.replace(
        data, **{key: getattr(made, key) for key in (*POINT_SETTINGS, *IMAGE_SETTINGS)}
    )


def _same(a: DataConfig, b: DataConfig, keys: Iterable[str]) -> bool:
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def own_views(teachers: Iterable[str], student: DataConfig, teacher_data: DataConfig) -> dict[str, tuple[str, ...]]:  # fmt: skip
    """Teacher -> the cameras of the view of each frame it loads for itself. Absent: it reads
    the student's batch (the label encoder always: GT boxes; the LiDAR teacher when the
    student loads points as the store's teachers did). The fusion teacher always loads its
    own view: its cameras at its image size, without the student's image augmentation."""
    out: dict[str, tuple[str, ...]] = {}
    for name in teachers:
        if name == "lidar" and not _same(student, teacher_data, POINT_SETTINGS):
            out[name] = ()  # points only: no image is opened
        elif name == "fusion" or name not in TEACHER_FIELDS:  # a custom teacher reads anything
            out[name] = tuple(teacher_data.cameras)
    return out


class TeacherViews(torch.utils.data.Dataset):
    """``(sample, views)``: the student's augmented sample and, per teacher that reads its own
    input, the same frame as that teacher reads it, moved by the same ``bev_aug`` (no image
    augmentation: the store's teachers saw none). A view takes the student's points, already
    loaded and moved, when it reads points the same way. Keys as :class:`FrameDataset`'s."""

    def __init__(self, base: FrameDataset, teacher_data: DataConfig, cameras: Mapping[str, tuple[str, ...]]):  # fmt: skip
        self.base = base
        self.readers = {
            name: FrameDataset(
                base.frames,
                teacher_data,
                train=False,
                with_depth=False,
                cameras=cams,
                first_number=base.first_number,
            )
            for name, cams in cameras.items()
        }
        self.same_points = _same(base.data, teacher_data, POINT_SETTINGS)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Any) -> tuple[Sample, dict[str, Sample]]:
        index, bev_aug, rng = self.base.draw(key)
        sample = self.base.load(index, bev_aug, rng)
        points = sample.points.numpy() if self.same_points else None
        return sample, {
            name: reader.load(index, bev_aug, points=points)
            for name, reader in self.readers.items()
        }

    def collate(self, items: list[tuple[Sample, dict[str, Sample]]]) -> StudentBatch:
        batch = collate_student([(sample, {}) for sample, _ in items])
        batch.teacher_inputs = {
            name: collate([views[name] for _, views in items]) for name in self.readers
        }
        return batch


class OnlineTeacher:
    """Runs the teachers on a :class:`StudentBatch` and returns its :class:`Targets`, as the
    store path would collate them. Not an ``nn.Module``: the teachers stay out of the
    student's parameters, optimizer, DDP and checkpoints. They move to the batch's device on
    first use."""

    def __init__(self, teachers: Mapping[str, nn.Module], fields: Iterable[str], contract: StoreContract,
                 made: Mapping[str, Any] | None = None, fov_only: bool = False):  # fmt: skip
        self.teachers = dict(teachers)
        self.contract = contract
        self.fov_only = fov_only  # mask to the student's cameras, as CachedTargets does
        self.fields = teachers_for(fields, made)
        self.specs = {**TEACHER_FIELDS, **custom_fields(made or {})}
        self._device: torch.device | None = None

    def _to(self, device: torch.device) -> None:
        if self._device != device:
            for model in self.teachers.values():
                if isinstance(model, nn.Module):  # a custom Teacher need not be a module
                    model.to(device).eval()
            self._device = device

    def _custom(self, name: str, model: Any, source: Batch) -> Any:
        from bevkd.stages.teacher_checks import check_output

        out = model(source)
        capacity = self.contract.field(b).shape[0] if (b := self.specs[name].boxes) else 0
        check_output(f"online teacher {name}", model.declaration, out, source.tokens, capacity)
        return out

    @torch.no_grad()
    def __call__(self, batch: StudentBatch) -> Targets:
        from bevkd.stages.teacher_runner import stored_heatmap

        device = batch.images.device
        self._to(device)
        targets = Targets()
        everyone = torch.ones(batch.size, dtype=torch.bool, device=device)
        for name, wanted in self.fields.items():
            spec = self.specs[name]
            model = self.teachers[name]
            if getattr(model, "training", False):
                raise RuntimeError(f"online teacher {name} is in training mode")
            source: Batch = batch.teacher_inputs.get(name, batch)
            # A labelled-only teacher (the label encoder) is per-sample: it runs on the whole
            # batch, and its fields exist where the frame keeps its GT, as in the store.
            present = source.has_label.to(device) if spec.labeled_only else everyone
            if name in TEACHER_FIELDS:
                out = model(source, decode=spec.boxes in wanted)
            else:  # a custom teacher (models/protocol.py), checked as when it was cached
                out = self._custom(name, model, source)
            made = {dst: out.features[src].float() for src, dst in spec.features.items() if dst in wanted}  # fmt: skip
            if spec.heatmap in wanted:
                activation = self.contract.field(spec.heatmap).heatmap_activation or "logits"
                made[spec.heatmap] = stored_heatmap(out.head.heatmap, activation)
            if spec.regression in wanted:
                made[spec.regression] = out.head.regression.float()
            for dst, value in made.items():
                targets.fields[dst] = value * present.view(-1, *[1] * (value.ndim - 1))
                targets.present[dst] = present
            if spec.boxes in wanted:
                capacity = self.contract.field(spec.boxes).shape[0]
                targets.boxes[spec.boxes] = [
                    torch.cat([d.boxes.float(), d.scores.float()[:, None], d.labels.float()[:, None]], 1)[:capacity]
                    for d in out.detections
                ]  # fmt: skip
                targets.present[spec.boxes] = present
        return self._in_view(targets, batch) if self.fov_only else targets

    def _in_view(self, targets: Targets, batch: StudentBatch) -> Targets:
        """``targets`` masked frame by frame to what the student's cameras see, on the batch's
        device, by the rules of :func:`bevkd.datasets.fov.mask_targets` (the store path's):
        background outside the view (a logits heatmap's channel minimum, else 0), boxes outside
        dropped. Only the cameras and the boxes come to the CPU."""
        from bevkd.datasets import fov

        view = fov.TargetView.of(self.contract, [*targets.fields, *targets.boxes])
        cam2img, cam2ego = batch.cam2img.cpu().numpy(), batch.cam2ego.cpu().numpy()
        widths = [batch.images.shape[-1]] * cam2img.shape[1]
        for i in range(batch.size):
            inside = fov.cell_masks(view.grids, cam2img[i], cam2ego[i], widths)
            for name, value in targets.fields.items():
                frame = value[i]
                fill = frame.flatten(1).amin(1)[:, None, None] if name in view.logits else 0.0
                keep = torch.from_numpy(inside[name]).to(frame.device)
                value[i] = torch.where(keep, frame, fill)
            for rows in targets.boxes.values():
                seen = fov.visible(rows[i][:, :2].cpu().numpy(), cam2img[i], cam2ego[i], widths)
                rows[i] = rows[i][torch.from_numpy(seen).to(rows[i].device)]
        return targets


def prepare(cfg: Config, store: Any, fields: Iterable[str], samples: FrameDataset,
            device: torch.device) -> tuple[OnlineTeacher, Any]:  # fmt: skip
    """The online teacher of ``cfg`` over ``store``'s teachers, and the training dataset that
    feeds it (:class:`TeacherViews` when a teacher reads its own view of the frames)."""
    made = store.provenance.get("teachers", {})
    wanted = teachers_for(fields, made)
    loaded = load_online_teachers(store, wanted, dict(cfg.student.teacher_checkpoints), device)
    teacher_data = reader_settings(store, cfg.data)
    online = OnlineTeacher({n: m for n, (m, _) in loaded.items()}, fields, store.contract, made,
                           fov_only=cfg.data.fov_only)  # fmt: skip
    return online, TeacherViews(samples, teacher_data, own_views(wanted, cfg.data, teacher_data))


def describe(online: OnlineTeacher, views: TeacherViews) -> str:
    """One line: which teachers run online and what each reads."""
    parts = []
    for name in online.fields:
        if name in views.readers:
            reader = views.readers[name]
            what = (
                f"its own view ({reader.data.lidar_sweeps} sweeps, {len(reader.cameras)} cameras)"
            )
        else:
            what = "the student's batch"
        parts.append(f"{name} on {what}")
    return "teachers online: " + "; ".join(parts)
