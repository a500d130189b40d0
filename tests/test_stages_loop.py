"""Pieces of the shared training loop that need no training: resuming under another config is
refused with the differences named, and best.pt's metric is read from nested metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from bevkd.pipeline.config import config_sha256, load_config, to_dict
from bevkd.pipeline.errors import BevkdError
from bevkd.stages.loop import check_same_config, metric_value


def _state(*overrides: str) -> dict:
    cfg = load_config(None, list(overrides))
    return {"config": to_dict(cfg), "config_sha256": config_sha256(cfg)}


def test_resuming_under_another_config_is_refused_naming_the_keys() -> None:
    state = _state("train.epochs=2", "student.recipe=cmkd")
    check_same_config(
        state, load_config(None, ["train.epochs=2", "student.recipe=cmkd"]), Path("x")
    )
    # Only the output folder moved (a checkpoint copied elsewhere): fine.
    check_same_config(state, load_config(None, ["train.epochs=2", "student.recipe=cmkd",
                                                "train.out_dir=elsewhere"]), Path("x"))  # fmt: skip
    # How the run is done and reported, and the metric that picks best.pt: fine too (a run
    # that stopped at its final validation on a wrong metric resumes with the right one).
    check_same_config(state, load_config(None, [
        "train.epochs=2", "student.recipe=cmkd", "train.best_metric=ap.Car.bev.moderate",
        "train.num_workers=0", "train.torch_threads=1", "train.log_every=1", "train.eval_every=1",
    ]), Path("x"))  # fmt: skip
    with pytest.raises(BevkdError, match=r"last.pt was written by another config \(student.recipe: 'cmkd' -> 'baseline'; train.epochs: 2 -> 3\)"):  # fmt: skip
        check_same_config(
            state, load_config(None, ["train.epochs=3", "student.recipe=baseline"]), Path("last.pt")
        )


def test_metric_value_reads_nested_keys_and_names_what_is_missing() -> None:
    metrics = {"NDS": 0.25, "ap": {"car": {"bev": {"moderate": 41.5, "hard": None}}}}
    assert metric_value(metrics, "NDS") == 0.25
    assert metric_value(metrics, "ap.car.bev.moderate") == 41.5
    assert metric_value(metrics, "ap.car.bev.hard") == float("-inf")
    with pytest.raises(BevkdError, match=r"no 'mAP'.*NDS"):
        metric_value(metrics, "mAP")
