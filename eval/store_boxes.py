"""Score a teacher store's cached boxes as if they were a detector's output.

That is the pseudo-labels' own quality, measured exactly like a checkpoint's detections
(:func:`bevkd.eval.detections.evaluate_detections`: the nuScenes devkit, KITTI AP|R40, or Waymo
AP/APH and LET-3D-AP).

- Frames: the labelled frames of ``cfg.eval.eval_set`` (every key frame of a nuScenes split,
  which the devkit requires; the object frames of a KITTI list). Each must be in the store: one
  that is not is an error naming it.
- A frame the teacher *skipped* is scored as a frame without boxes, so its GT counts as missed.
  The split stays whole (the devkit evaluates whole splits), a store that lost frames scores
  lower rather than higher, and the summary names every skipped frame with its reason.
- ``score_threshold``: rows with ``score >= threshold`` are kept (0 keeps them all). AP ranks
  by score, so a threshold cuts the precision-recall curve where the student's pseudo-labels
  would be cut. :func:`sweep` reads the store once and scores it at several thresholds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bevkd.datasets.frame import Frame
from bevkd.models.outputs import Detections
from bevkd.pipeline.config import Config
from bevkd.pipeline.errors import DataError
from bevkd.storage.reader import FrameSkipped, TeacherStore
from bevkd.storage.schema import StoreError


@dataclass(frozen=True)
class StoreBoxes:
    """One boxes field of a store, read for the frames of a split.

    ``detections[i]`` belongs to ``frames[i]``: boxes ``(N_i, 9)`` in its ego frame, scores
    ``(N_i,)``, labels ``(N_i,)`` indexing ``classes``; a skipped frame has none. ``skipped``:
    token -> the teacher's reason.
    """

    url: str
    field: str
    classes: tuple[str, ...]
    frames: list[Frame]
    detections: list[Detections]
    skipped: dict[str, str]


def store_config(
    store: TeacherStore, config_path: str | None = None, overrides: Sequence[str] = ()
) -> Config:
    """The config the store was cached with (its provenance), or ``config_path``; then
    ``overrides`` (``--set``)."""
    import yaml

    from bevkd.pipeline.config import ConfigError, load_config, recorded_config, with_overrides

    if config_path:
        return load_config(config_path, overrides)
    text = store.provenance.get("config", "")
    if not text:
        raise StoreError(
            f"{store.url}: its provenance records no config, so the dataset is unknown; give "
            "--config (the config it was cached with)"
        )
    try:
        cfg = recorded_config(yaml.safe_load(text))
    except ConfigError as exc:
        raise StoreError(
            f"{store.url}: the config in its provenance no longer loads ({exc}); give --config"
        ) from None
    return with_overrides(cfg, overrides)


def eval_frames(cfg: Config, labelled_only: bool = True) -> list[Frame]:
    """The labelled frames (every frame, unless ``labelled_only``) of ``cfg.eval.eval_set``, a
    split name, of the dataset ``cfg.data`` names; an error if none is labelled."""
    from bevkd.datasets.dataset import load_frames

    data = dataclasses.replace(cfg.data, val_split=cfg.eval.eval_set)
    every = load_frames(dataclasses.replace(cfg, data=data), "val")
    frames = [f for f in every if f.has_label]
    if not frames:
        raise DataError(
            f"{cfg.data.root}: split '{cfg.eval.eval_set}' has no labelled frame to evaluate "
            "against; choose another with --set eval.eval_set=..."
        )
    return frames if labelled_only else every


def read_store_boxes(store: TeacherStore, field: str, frames: Sequence[Frame]) -> StoreBoxes:
    """Read ``field`` (rows x, y, z, l, w, h, yaw, vx, vy, score, label) for every frame."""
    boxes_fields = [f.name for f in store.contract.fields if f.kind == "boxes"]
    if field not in boxes_fields:
        what = "is not a boxes field" if field in store.contract.field_names else "no such field"
        raise StoreError(
            f"{store.url}: {field!r}: {what}; its boxes fields are {boxes_fields} (--boxes-field)"
        )
    missing = [f for f in frames if f.token not in store]
    if missing:
        named = ", ".join(f"{f.token} ({f.scene})" for f in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise StoreError(
            f"{store.url}: {len(missing)} of the {len(frames)} '{frames[0].split}' frames to "
            f"evaluate are not in the store: {named}{more}. Cache that split into it "
            "(cache.splits), or evaluate one it holds with --set eval.eval_set=... (it holds "
            f"{sorted(set(store.splits))})"
        )
    classes = tuple(store.contract.classes)
    detections, skipped = [], {}
    for frame in frames:
        try:
            rows = store.read_frame(frame.token, [field]).get(field)
        except FrameSkipped:
            skipped[frame.token] = store.skipped.get(store.index_of(frame.token), "")
            rows = np.zeros((0, 11), np.float32)
        if rows is None:  # a labeled-only field of a frame the store holds without labels
            raise StoreError(
                f"{store.url}: frame {frame.token} has no {field!r} rows (a labelled-only field "
                "of a frame stored without labels)"
            )
        labels = rows[:, 10]
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise StoreError(
                f"{store.url}: frame {frame.token}, field {field!r}: labels "
                f"{sorted(set(labels.tolist()))} outside the store's {len(classes)} classes"
            )
        detections.append(
            Detections(
                torch.from_numpy(np.ascontiguousarray(rows[:, :9])),
                torch.from_numpy(np.ascontiguousarray(rows[:, 9])),
                torch.from_numpy(labels.astype(np.int64)),
            )
        )
    return StoreBoxes(store.url, field, classes, list(frames), detections, skipped)


def above(detections: Detections, threshold: float) -> Detections:
    """The detections with ``score >= threshold``."""
    keep = detections.scores >= threshold
    return Detections(detections.boxes[keep], detections.scores[keep], detections.labels[keep])


def score(
    cfg: Config, boxes: StoreBoxes, out_dir: str | Path, score_threshold: float = 0.0
) -> dict[str, Any]:
    """Evaluate ``boxes`` above ``score_threshold``; writes results and metrics into ``out_dir``.

    The summary is the checkpoint path's, plus ``"source"`` (a line saying what was scored) and
    ``"store"`` (url, field, threshold, box count, skipped frames).
    """
    from bevkd.eval.detections import evaluate_detections
    from bevkd.storage.fields import teacher_writing

    kept = [above(d, score_threshold) for d in boxes.detections]
    num_boxes = sum(len(d.scores) for d in kept)
    source = (
        f"store `{boxes.url}`, field `{boxes.field}`, score >= {score_threshold:g}: "
        f"{num_boxes} boxes over {len(kept)} frames"
    )
    if boxes.skipped:
        source += f"; {len(boxes.skipped)} frames skipped by the teacher, scored without boxes"
    extra = {
        "source": source,
        "store": {
            "url": boxes.url,
            "field": boxes.field,
            "score_threshold": score_threshold,
            "num_boxes": num_boxes,
            "num_frames": len(kept),
            "skipped_frames": dict(boxes.skipped),
        },
    }
    # The results file's sensor flags (not scored): the fusion teacher sees cameras too.
    meta = {"use_lidar": True, "use_camera": teacher_writing(boxes.field) == "fusion"}
    return evaluate_detections(
        cfg, boxes.frames, kept, out_dir, classes=boxes.classes, meta=meta, extra=extra
    )


def evaluate_store(
    cfg: Config,
    store: TeacherStore,
    field: str,
    out_dir: str | Path,
    score_threshold: float = 0.0,
) -> dict[str, Any]:
    """Score ``field`` of ``store`` on ``cfg.eval.eval_set`` (see the module docstring)."""
    return score(cfg, read_store_boxes(store, field, eval_frames(cfg)), out_dir, score_threshold)


def sweep(
    cfg: Config,
    store: TeacherStore,
    field: str,
    thresholds: Sequence[float],
    out_dir: str | Path,
) -> dict[float, dict[str, Any]]:
    """Score one read of the store at each threshold, into ``<out_dir>/score_<t>/``; writes
    ``<out_dir>/sweep.json`` (the headline numbers per threshold) and returns
    ``{threshold: summary}``: pseudo-label quality against the score cut."""
    boxes = read_store_boxes(store, field, eval_frames(cfg))
    out = Path(out_dir)
    results = {
        t: score(cfg, boxes, out / f"score_{t:g}", t) for t in sorted(float(t) for t in thresholds)
    }
    headline = ("mAP", "NDS", "class_ap", "ap", "num_gt", "mean", "LET")
    table = [
        {
            "score_threshold": t,
            "num_boxes": s["store"]["num_boxes"],
            **{k: s[k] for k in headline if k in s},
        }
        for t, s in results.items()
    ]
    body = {
        "store": boxes.url,
        "field": field,
        "eval_set": cfg.eval.eval_set,
        "skipped_frames": boxes.skipped,
        "thresholds": table,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(body, indent=2) + "\n")
    return results


def default_out_dir(url: str, eval_set: str, field: str, thresholds: Sequence[float]) -> Path:
    """``<store>.eval/<split>_<field>[_score<t> | _sweep]/`` beside a local store."""
    from bevkd.storage.remote import is_local

    if not is_local(url):
        raise StoreError(f"{url} is not a local path: give --out for the metrics")
    name = f"{eval_set}_{field}"
    if len(thresholds) > 1:
        name += "_sweep"
    elif thresholds and thresholds[0] > 0:
        name += f"_score{thresholds[0]:g}"
    return Path(url.rstrip("/") + ".eval") / name


def sweep_table(results: dict[float, dict[str, Any]]) -> str:
    """One line per threshold: box count and mAP / NDS (nuScenes), moderate 3D AP (KITTI) or
    mAPH and LET-3D-APL (Waymo)."""
    lines = []
    for t, s in results.items():
        head = f"score >= {t:<6g} {s['store']['num_boxes']:>7} boxes"
        if "mAP" in s:
            lines.append(f"{head}  mAP {s['mAP']:.4f}  NDS {s['NDS']:.4f}")
            continue
        if s.get("metric") == "waymo":
            mean = s["mean"]
            lines.append(
                f"{head}  mAPH L1 {mean['L1']['APH']:.4f}  L2 {mean['L2']['APH']:.4f}  "
                f"LET-3D-APL {s['LET']['mean']['APL']:.4f}"
            )
            continue
        cells = [
            f"{cls} {'-' if v['3d']['moderate'] is None else format(v['3d']['moderate'], '.2f')}"
            for cls, v in s["ap"].items()
        ]
        lines.append(f"{head}  3D AP|R40 moderate: {'  '.join(cells)}")
    return "\n".join(lines)
