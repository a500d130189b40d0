"""Stage two: train a camera student against the teacher store (``bevkd train-student``).

Start-up does the checks that must not wait for a DataLoader worker: the recipe's store fields
against the store's contract (grid, classes, fields and shapes; :mod:`bevkd.stages.student_contract`),
every training frame present in the store, and the frames the teacher skipped left out (their
count printed). With ``train.targets=online`` the store's teachers run inside every step
instead of its fields being read (:mod:`bevkd.stages.online_teacher`); the checks and the
frames are the same, so the two runs are comparable. Then :func:`bevkd.stages.loop.fit` trains ``StudentObjective`` (the student
and its recipe) and validates on the val split with the dataset's own metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from torch import nn

from bevkd.datasets import budget
from bevkd.datasets.cached import CachedTargets, SamplesOnly, worker_context
from bevkd.datasets.dataset import FrameDataset, load_frames
from bevkd.datasets.frame import Frame
from bevkd.distill.recipes import Recipe, build_recipe, with_recipe_defaults
from bevkd.models.checkpoint import init_from_checkpoint, init_from_teacher
from bevkd.pipeline.config import Config, ConfigError, save_resolved
from bevkd.pipeline.distributed import DistInfo, cleanup_distributed, setup_distributed
from bevkd.pipeline.errors import BevkdError
from bevkd.stages.loop import TrainResult, fit
from bevkd.stages.student_contract import check_store


class StudentObjective(nn.Module):
    """The student's forward, scored by its recipe: ``{term: weighted loss}``. With an
    ``online`` teacher (``train.targets=online``) the batch's targets are computed first, by
    the teachers in the loop; otherwise they came from the store with the batch."""

    def __init__(self, model: nn.Module, recipe: Recipe, online: Any | None = None) -> None:
        super().__init__()
        self.model, self.recipe = model, recipe
        self.online = online  # not a module: the teachers stay out of parameters and checkpoints

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        if self.online is not None:
            batch.targets = self.online(batch)
        return self.recipe(self.model(batch), batch)  # type: ignore[no-any-return]


def training_frames(cfg: Config, store: Any | None, say: Any = print) -> list[Frame]:
    """The labelled train frames, plus every unlabelled frame of the train and unlabeled splits
    when ``student.unlabeled``; frames the teacher skipped are left out (and counted). A frame
    the store lacks is an error naming it."""
    train = load_frames(cfg, "train")
    chosen = budget.choose(cfg.data, train)
    if chosen.active:
        train = budget.hide_labels(train, chosen)
        say(
            f"[train-student] {chosen.describe(cfg.data)}; the others are unlabelled frames"
            + ("" if cfg.student.unlabeled else " (left out: student.unlabeled is false)")
        )
        if oracle := check_teacher_labels(cfg, store, chosen):
            say(f"[train-student] ORACLE TEACHER: {oracle}")
    elif cfg.student.teacher_saw_hidden_labels:
        raise ConfigError(
            "student.teacher_saw_hidden_labels=true needs a label budget (data.labeled_fraction "
            "< 1 or data.labeled_tokens): without one no label is hidden"
        )
    frames = [f for f in train if f.has_label]
    if cfg.student.unlabeled:
        frames += [f for f in train if not f.has_label] + load_frames(cfg, "unlabeled")
        # a train list that already holds the unlabeled frames (KITTI's
        # kitti_train_and_eigen_clean with unlabeled_split eigen_clean) names them once
        unique: dict[str, Frame] = {}
        for frame in frames:
            unique.setdefault(frame.token, frame)
        frames = list(unique.values())
    skipped: dict[str, str] = {}
    if store is not None:
        absent = [f.token for f in frames if f.token not in store]
        if absent:
            raise BevkdError(
                f"store {store.url} has no entry for {len(absent)} of the {len(frames)} training "
                f"frames (first: {absent[:3]}); it was cached from other splits (its provenance "
                f"lists {store.provenance.get('dataset', {}).get('splits')}): re-cache with "
                "cache.splits covering them"
            )
        skipped = {store.tokens[i]: why for i, why in store.skipped.items()}
    kept = [f for f in frames if f.token not in skipped]
    dropped = len(frames) - len(kept)
    labelled = sum(f.has_label for f in kept)
    say(
        f"[train-student] {labelled} labelled + {len(kept) - labelled} unlabelled frames"
        + (f"; {dropped} left out because the teacher skipped them" if store is not None else "")
        + (f" (e.g. {next(iter(skipped.values()))})" if dropped else "")
    )
    return kept


def labels_seen_by(cfg: Config, store: Any | None) -> list[tuple[str, dict[str, Any] | None]]:
    """What each source of this run's teacher knowledge says it saw: every teacher of the store
    (its recorded ``labeled_tokens``), and the checkpoints the student starts from
    (``student.init_from``, ``student.init_from_teacher``: their ``labeled_tokens``; a student
    checkpoint of an oracle-teacher run counts as having seen every label)."""
    from bevkd.models.checkpoint import load_checkpoint

    out: list[tuple[str, dict[str, Any] | None]] = []
    if store is not None:
        for name, made in store.provenance.get("teachers", {}).items():
            out.append((f"teacher {name} of store {store.url}", made.get("labeled_tokens")))
    for key in ("init_from", "init_from_teacher"):
        path = getattr(cfg.student, key)
        if not path:
            continue
        payload = load_checkpoint(path)
        tokens = payload.get("labeled_tokens")
        record = None if tokens is None else {"tokens": list(tokens), "count": len(tokens)}
        if payload.get("oracle_teacher"):
            record = None  # its teachers saw labels it does not list
        out.append((f"student.{key} {path}", record))
    return out


def check_teacher_labels(cfg: Config, store: Any | None, chosen: budget.LabelBudget) -> str:
    """Under an active label budget, refuse teacher knowledge that saw the GT of frames this
    student hides (or does not say what it saw): the store's teachers and the checkpoints the
    student starts from (:func:`labels_seen_by`). ``student.teacher_saw_hidden_labels`` lets
    it through as an "oracle teacher" run, and the returned line says why; the key is an error
    where nothing saw a hidden label. Returns "" when nothing did."""
    allowed = cfg.student.teacher_saw_hidden_labels
    hidden = set(chosen.hidden)
    seen: list[str] = []
    for source, record in labels_seen_by(cfg, store):
        if record is None:
            seen.append(f"{source} does not record which labelled frames it trained on")
        elif count := len(hidden.intersection(record["tokens"])):
            seen.append(
                f"{source} trained on the GT of {count} of the {len(hidden)} frames this "
                f"student hides ({record['count']} labelled frames in all)"
            )
    if seen and not allowed:
        raise BevkdError(
            "; ".join(seen) + ". Pseudo-labels, soft targets and weights from them carry those "
            "labels. Use teachers (and checkpoints) trained under the same label budget "
            "(train-teacher with the same data.labeled_fraction and data.label_seed, or "
            "data.labeled_tokens), or set student.teacher_saw_hidden_labels=true to run it as "
            "an oracle-teacher run"
        )
    if allowed and not seen:
        raise ConfigError(
            "student.teacher_saw_hidden_labels=true, but nothing this run learns from saw a "
            "hidden label: drop the key (the run is not an oracle run)"
        )
    return "; ".join(seen)


def oracle_teacher(cfg: Config) -> bool:
    """Whether a run of ``cfg`` is an oracle-teacher run (its teachers saw hidden labels)."""
    return cfg.student.teacher_saw_hidden_labels


def open_for(cfg: Config, recipe: Recipe) -> Any | None:
    """The store, checked against what the recipe reads (None: the recipe reads no field)."""
    if not recipe.expects:
        return None
    from bevkd.storage.reader import open_store

    url = cfg.student.store
    store = open_store(url, storage_options=dict(cfg.student.storage_options) or None)
    if not store.finalized:
        marks = store.written_shards()
        raise BevkdError(
            f"store {url} is not finalized ({int(marks.sum())} of {len(marks)} shards "
            "written): its cache-teacher run is still going, crashed or was repaired, so frames "
            "may be missing or about to change. Finish it (rerun the same `bevkd cache-teacher`: "
            "it resumes and finalizes), then train"
        )
    check_store(store.contract, cfg, recipe.expects, url)
    recipe.bind({name: store.contract.field(name) for name in recipe.expects})
    return store


def build(cfg: Config, info: DistInfo) -> tuple[StudentObjective, Any]:
    """The objective (student + recipe) and the training dataset of ``cfg``."""
    from bevkd.models.builders import STUDENT_BUILDERS, build_student

    cfg = with_recipe_defaults(cfg)
    if cfg.model.kind not in STUDENT_BUILDERS:
        raise ConfigError(
            f"train-student trains the students {sorted(STUDENT_BUILDERS)}, not model.kind "
            f"'{cfg.model.kind}'"
        )
    torch.manual_seed(cfg.train.seed)
    model = build_student(cfg)
    if cfg.student.init_from:
        copied, skipped = init_from_checkpoint(model, cfg.model.kind, cfg.student.init_from)
        if info.is_main:
            click.echo(f"[train-student] initialised {copied} tensors from {cfg.student.init_from} ({skipped} did not fit)")  # fmt: skip
    if cfg.student.init_from_teacher:  # after init_from: CMKD's phase 2 (phase 1 + the teacher's)
        copied = init_from_teacher(model, cfg, cfg.student.init_from_teacher)
        if info.is_main:
            click.echo(f"[train-student] the BEV encoder, neck and head ({copied} tensors) from the teacher {cfg.student.init_from_teacher}")  # fmt: skip
    recipe = build_recipe(cfg)
    store = open_for(cfg, recipe)
    frames = training_frames(cfg, store, click.echo if info.is_main else (lambda _: None))
    samples = FrameDataset(frames, cfg.data, train=True, seed=cfg.train.seed)
    if store is None:
        if cfg.train.targets == "online" and info.is_main:
            click.echo(f"[train-student] train.targets=online: recipe {cfg.student.recipe} reads no teacher field, so no teacher runs")  # fmt: skip
        return StudentObjective(model, recipe), SamplesOnly(samples)
    if cfg.train.targets == "online":
        from bevkd.stages import online_teacher

        online, views = online_teacher.prepare(cfg, store, recipe.expects, samples, info.device)
        if info.is_main:
            click.echo(f"[train-student] {online_teacher.describe(online, views)}")
        return StudentObjective(model, recipe, online), views
    dataset = CachedTargets(samples, cfg.student.store, fields=list(recipe.expects),
                            storage_options=dict(cfg.student.storage_options) or None,
                            fov_only=cfg.data.fov_only)  # fmt: skip
    return StudentObjective(model, recipe), dataset


def run(cfg: Config) -> TrainResult:
    """Train the student of ``cfg`` and evaluate it on val; returns where it all went."""
    from bevkd.stages.predict import evaluate_model
    from bevkd.storage.retry import use_config

    cfg = with_recipe_defaults(cfg)  # the recipe's own weights, saved with the run
    use_config(cfg)  # the store's requests retry under io.* (its DataLoader workers inherit it)
    info = setup_distributed()
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    try:
        objective, dataset = build(cfg, info)
        if info.is_main:
            save_resolved(cfg, cfg.train.out_dir)
            terms = ", ".join(sorted(objective.recipe.expects)) or "none"
            how = "computed online by the teachers" if objective.online else "read from the store"
            click.echo(
                f"[train-student] recipe {cfg.student.recipe}; teacher fields {how}: {terms}"
                + (
                    " (ORACLE TEACHER: it saw labels this student hides)"
                    if oracle_teacher(cfg)
                    else ""
                )
            )

        # Which frames kept their GT: in the out folder and in every checkpoint.
        kept = sorted(f.token for f in dataset.base.frames if f.has_label)
        if info.is_main:
            Path(cfg.train.out_dir, "labeled_frames.txt").write_text(
                "".join(f"{t}\n" for t in kept)
            )

        def validate(model: nn.Module, out: Path) -> dict[str, Any]:
            return evaluate_model(model, cfg, out)

        extra = worker_context(cfg.student.store)
        labelled = np.array([f.has_label for f in dataset.base.frames], dtype=bool)
        return fit(
            cfg, objective, dataset, dataset.collate, info, validate, extra,
            record={"labeled_tokens": kept, "oracle_teacher": oracle_teacher(cfg)},
            labelled=labelled,
            labelled_per_batch=cfg.student.labelled_per_batch,
        )  # fmt: skip
    finally:
        cleanup_distributed()
