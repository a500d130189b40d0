"""Teacher training loop: a killed-and-resumed run equals an uninterrupted one; a non-finite
loss stops with the step and term named; the run leaves checkpoint, log, curve and metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from stage_helpers import copy_dataset, small_config

from bevkd.models.checkpoint import load_checkpoint
from bevkd.stages import train_teacher


@pytest.fixture(scope="module")
def root(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_dataset(tiny_nuscenes, tmp_path_factory.mktemp("train") / "data")


def _cfg(root: Path, out: Path, epochs: int, *extra: str):
    return small_config(
        root, "model.kind=lidar", "model.lidar_encoder=pillar", f"train.epochs={epochs}",
        f"train.out_dir={out}", "train.log_every=1", *extra,
    )  # fmt: skip


def test_resume_after_an_interrupted_run_gives_the_same_weights(root: Path, tmp_path: Path) -> None:
    whole = train_teacher.run(_cfg(root, tmp_path / "whole", 2, "train.keep_checkpoints=true"))
    # The same run killed after its first epoch: only that epoch's checkpoint is left.
    (tmp_path / "resumed").mkdir()
    shutil.copyfile(tmp_path / "whole" / "epoch_001.pt", tmp_path / "resumed" / "last.pt")
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["epoch"] == 0
    resumed = train_teacher.run(_cfg(root, tmp_path / "resumed", 2, "train.keep_checkpoints=true"))
    a = load_checkpoint(whole.checkpoint)["model"]
    b = load_checkpoint(resumed.checkpoint)["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert resumed.steps == whole.steps
    for name in (
        "config.yaml",
        "config.sha256",
        "train_log.jsonl",
        "loss.png",
        "eval/metrics.json",
    ):
        assert (tmp_path / "whole" / name).is_file(), name
    metrics = json.loads((tmp_path / "whole" / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0 and "class_ap" in metrics
    assert (
        load_checkpoint(whole.checkpoint)["config_sha256"]
        == (tmp_path / "whole" / "config.sha256").read_text().strip()
    )


def test_a_non_finite_loss_names_the_step_and_term(root: Path, tmp_path: Path) -> None:
    # A learning rate this large drives the weights to inf within a few steps.
    cfg = _cfg(root, tmp_path / "nan", 30, "train.lr=1.0e+30", "train.grad_clip=1.0e+30")
    with pytest.raises(train_teacher.NonFiniteLoss, match=r"step \d+ .*loss term '\w+'"):
        train_teacher.run(cfg)


def test_evaluate_command_runs_a_teacher_checkpoint(root: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner
    from stage_helpers import make_teachers

    from bevkd.pipeline.cli import cli

    lidar, _ = make_teachers(root, tmp_path / "teachers")
    result = CliRunner().invoke(
        cli, ["evaluate", "--checkpoint", str(lidar), "--out", str(tmp_path / "eval")]
    )
    assert result.exit_code == 0, result.output
    assert "mAP" in result.output and "NDS" in result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["eval_set"] == "val" and metrics["num_samples"] > 0
    both = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(lidar), "--results", "x.json"])
    assert both.exit_code != 0 and "exactly one" in both.output
