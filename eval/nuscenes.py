"""nuScenes detection evaluation through the devkit's own ``DetectionEval``.

The config is the devkit's ``detection_cvpr_2019`` with all 10 classes, its class ranges
capped at the BEV grid: with ``eval.class_range = 0`` (the default) each class keeps the
devkit's range (50 m vehicles, 40 m pedestrians and cycles, 30 m barriers and cones) unless
the grid's inscribed radius is smaller, e.g. 25.6 m for the demo's +-25.6 m grid over the
synthetic world's +-30-50 m. Boxes beyond it (GT and predictions alike) are not evaluated, since a
BEV detector cannot see them. ``eval.class_range > 0`` sets one range for every class.

Splits: devkit 1.2.0 reads custom splits from ``<version>/splits.json``, but only for names
that are not official ("val" always means the official nuScenes scene list). A dataset that
brings its own ``splits.json`` (the synthetic world) has every split name routed through the
devkit's custom-split path, so "val" means that file's "val" scenes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bevkd.datasets.nuscenes import SPLITS_FILE, open_nuscenes, read_splits
from bevkd.eval.nuscenes_results import detections_to_results, gt_to_results, write_results
from bevkd.pipeline.config import Config, config_sha256, save_resolved
from bevkd.pipeline.errors import DataError
from bevkd.pipeline.geometry import NUSCENES_CLASSES

__all__ = [
    "class_ranges",
    "detection_config",
    "detections_to_results",
    "gt_to_results",
    "run",
    "write_results",
]

TP_NAMES = {
    "trans_err": "ATE",
    "scale_err": "ASE",
    "orient_err": "AOE",
    "vel_err": "AVE",
    "attr_err": "AAE",
}


def class_ranges(cfg: Config) -> dict[str, float]:
    """Evaluation radius per class (metres); see the module docstring."""
    from nuscenes.eval.common.config import config_factory

    devkit = config_factory("detection_cvpr_2019").class_range
    if cfg.eval.class_range > 0:
        return {name: float(cfg.eval.class_range) for name in NUSCENES_CLASSES}
    x0, y0, _, x1, y1, _ = cfg.grid.point_cloud_range
    inscribed = min(-x0, x1, -y0, y1)
    return {name: float(min(devkit[name], inscribed)) for name in NUSCENES_CLASSES}


def detection_config(cfg: Config) -> Any:
    """The devkit ``DetectionConfig``: ``detection_cvpr_2019`` with :func:`class_ranges`."""
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.data_classes import DetectionConfig

    content = config_factory("detection_cvpr_2019").serialize()
    content["class_range"] = class_ranges(cfg)
    return DetectionConfig.deserialize(content)


@contextlib.contextmanager
def custom_splits(enabled: bool) -> Iterator[None]:
    """While active, the devkit treats every split name as one of the dataset's ``splits.json``."""
    from nuscenes.eval.detection import evaluate as devkit_evaluate

    original = devkit_evaluate.is_predefined_split
    if enabled:
        devkit_evaluate.is_predefined_split = lambda split_name: False
    try:
        yield
    finally:
        devkit_evaluate.is_predefined_split = original


def _read_results(path: Path, expected: set[str], eval_set: str, max_boxes: int) -> None:
    """Check a results file before the devkit (whose checks are bare asserts) reads it."""
    if not path.is_file():
        raise DataError(f"results file {path} not found")
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"results file {path} is not valid JSON ({exc})") from None
    if not isinstance(body, dict) or "results" not in body or "meta" not in body:
        raise DataError(
            f"results file {path} needs top-level 'meta' and 'results' (nuScenes detection format)"
        )
    tokens = set(body["results"])
    missing, extra = expected - tokens, tokens - expected
    if missing or extra:
        raise DataError(
            f"results file {path} covers {len(expected & tokens)} of the {len(expected)} '{eval_set}' "
            f"samples ({len(missing)} missing, {len(extra)} not in '{eval_set}'); every sample of the "
            "split needs an entry (an empty list is fine)"
        )
    for token, boxes in body["results"].items():
        if len(boxes) > max_boxes:
            raise DataError(
                f"results file {path}: sample {token} has {len(boxes)} boxes (at most {max_boxes})"
            )
        for box in boxes:
            if box.get("detection_name") not in NUSCENES_CLASSES:
                raise DataError(
                    f"results file {path}: sample {token} has class {box.get('detection_name')!r}"
                )


def _split_samples(nusc: Any, scenes: list[str]) -> set[str]:
    names = set(scenes)
    return {s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in names}


def restrict_samples(evaluator: Any, path: str, eval_set: str) -> None:
    """Keep only the samples listed in ``path`` (``eval.sample_tokens``) in a loaded devkit
    ``DetectionEval``: its GT, predictions and sample list. Every listed token must be a sample
    of ``eval_set``; the results file still covers the whole split (the devkit checks that)."""
    from nuscenes.eval.common.data_classes import EvalBoxes

    from bevkd.datasets.budget import read_token_file

    wanted = set(read_token_file(path))
    absent = sorted(wanted - set(evaluator.gt_boxes.sample_tokens))
    if absent:
        raise DataError(
            f"eval.sample_tokens {path}: {len(absent)} tokens are not samples of '{eval_set}' "
            f"(first: {absent[:3]})"
        )
    for name in ("gt_boxes", "pred_boxes"):
        boxes, kept = getattr(evaluator, name), EvalBoxes()
        for token in boxes.sample_tokens:
            if token in wanted:
                kept.add_boxes(token, boxes[token])
        setattr(evaluator, name, kept)
    evaluator.sample_tokens = evaluator.gt_boxes.sample_tokens


def _clean(value: Any) -> Any:
    """NaN -> None so metrics.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def run(
    cfg: Config,
    results_path: str | Path,
    out_dir: str | Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a results JSON on ``cfg.eval.eval_set`` of ``cfg.data``; writes ``metrics.json``,
    ``summary.md``, the resolved config (and curves when ``eval.render_curves``) into ``out_dir``.

    Returns ``{"mAP", "NDS", "class_ap": {class: AP}, "tp_errors": {ATE..AAE}, ...}``, with
    ``extra`` merged in (a ``"source"`` string there becomes a line of ``summary.md``).
    """
    from nuscenes.eval.detection.evaluate import DetectionEval

    results_path, out = Path(results_path), Path(out_dir)
    nusc = open_nuscenes(cfg.data.root, cfg.data.version)
    splits = read_splits(cfg.data.root, cfg.data.version)
    eval_set = cfg.eval.eval_set
    if eval_set not in splits:
        raise DataError(
            f"{cfg.data.root}: no split '{eval_set}' (splits: {', '.join(splits)}); set eval.eval_set"
        )
    config = detection_config(cfg)
    _read_results(
        results_path, _split_samples(nusc, splits[eval_set]), eval_set, config.max_boxes_per_sample
    )
    out.mkdir(parents=True, exist_ok=True)
    if not any(json.loads(results_path.read_text())["results"].values()):
        # The devkit cannot evaluate a results file without a single box (it reads the class
        # field off the first box); nothing detected scores 0 on every class.
        empty = _empty_summary(cfg, results_path, eval_set, config)
        return _write_summary({**empty, **(extra or {})}, {}, cfg, out)
    has_splits_file = (Path(cfg.data.root) / cfg.data.version / SPLITS_FILE).is_file()
    # The devkit's GT loader draws a tqdm bar on stderr even when not verbose.
    with custom_splits(has_splits_file), contextlib.redirect_stderr(io.StringIO()):
        evaluator = DetectionEval(
            nusc, config, str(results_path), eval_set, str(out), verbose=False
        )
    if cfg.eval.sample_tokens:
        restrict_samples(evaluator, cfg.eval.sample_tokens, eval_set)
    metrics, metric_data = evaluator.evaluate()
    if cfg.eval.render_curves:
        evaluator.render(metrics, metric_data)
    serialized = metrics.serialize()
    summary = {
        "mAP": serialized["mean_ap"],
        "NDS": serialized["nd_score"],
        "class_ap": serialized["mean_dist_aps"],
        "tp_errors": {TP_NAMES[k]: v for k, v in serialized["tp_errors"].items()},
        "class_tp_errors": {
            c: {TP_NAMES[k]: v for k, v in errs.items()}
            for c, errs in serialized["label_tp_errors"].items()
        },
        "eval_set": eval_set,
        "sample_tokens": cfg.eval.sample_tokens or None,
        "num_samples": len(evaluator.sample_tokens),
        "gt_classes": sorted({box.detection_name for box in evaluator.gt_boxes.all}),
        "class_range": config.class_range,
        "dataset": {"root": str(cfg.data.root), "version": cfg.data.version},
        "results": str(results_path),
        "config_sha256": config_sha256(cfg),
        **(extra or {}),
    }
    return _write_summary(summary, serialized, cfg, out)


def _write_summary(
    summary: dict[str, Any], devkit: dict[str, Any], cfg: Config, out: Path
) -> dict[str, Any]:
    (out / "metrics.json").write_text(json.dumps(_clean({**summary, "devkit": devkit}), indent=2))
    (out / "summary.md").write_text(summary_markdown(summary))
    save_resolved(cfg, out)
    return summary


def _empty_summary(cfg: Config, results_path: Path, eval_set: str, config: Any) -> dict[str, Any]:
    nan_errors = dict.fromkeys(TP_NAMES.values(), float("nan"))
    return {
        "mAP": 0.0,
        "NDS": 0.0,
        "class_ap": dict.fromkeys(NUSCENES_CLASSES, 0.0),
        "tp_errors": dict(nan_errors),
        "class_tp_errors": {c: dict(nan_errors) for c in NUSCENES_CLASSES},
        "eval_set": eval_set,
        "num_samples": len(json.loads(results_path.read_text())["results"]),
        "gt_classes": [],
        "class_range": config.class_range,
        "dataset": {"root": str(cfg.data.root), "version": cfg.data.version},
        "results": str(results_path),
        "config_sha256": config_sha256(cfg),
        "note": "no detections at all in the results file",
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    """A markdown report: headline numbers, then AP and TP errors per class."""
    lines = [
        f"# nuScenes detection, {summary['eval_set']} ({summary['num_samples']} samples)",
        "",
        f"- results: `{summary['results']}`",
        *([f"- detections: {summary['source']}"] if "source" in summary else []),
        f"- dataset: `{summary['dataset']['root']}` ({summary['dataset']['version']})",
        f"- mAP **{summary['mAP']:.4f}**, NDS **{summary['NDS']:.4f}**",
        f"- classes with GT: {', '.join(summary['gt_classes']) or 'none'}",
        "",
        "| class | range m | AP | ATE | ASE | AOE | AVE | AAE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, ap in summary["class_ap"].items():
        errs = summary["class_tp_errors"][name]
        cells = [_fmt(errs[k]) for k in ("ATE", "ASE", "AOE", "AVE", "AAE")]
        lines.append(
            f"| {name} | {summary['class_range'][name]:g} | {ap:.4f} | {' | '.join(cells)} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"
