"""A file that is not a bevkd checkpoint, given where one is read (``evaluate --checkpoint``,
``train.out_dir``'s last.pt on resume, cache-teacher's teacher checkpoints), is a one-line
error naming the file and what it is, never an UnpicklingError or EOFError traceback."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from bevkd.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bevkd.pipeline.cli import main
from bevkd.pipeline.config import Config


def _real_checkpoint(path: Path) -> Path:
    return save_checkpoint(path, nn.Linear(64, 64), Config(), epoch=0)


def _write(kind: str, path: Path) -> Path:
    """A file of ``kind`` at ``path`` that is not a bevkd checkpoint."""
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "text":
        path.write_text("epochs: 3\nlr: 0.1\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        whole = _real_checkpoint(path).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "mmdet3d":
        torch.save({"state_dict": {}, "meta": {}}, path)
    elif kind == "openpcdet":
        torch.save({"model_state": {}, "epoch": 20}, path)
    elif kind == "weights":
        torch.save(nn.Linear(2, 2).state_dict(), path)
    return path


# What the message says each file is.
READS_AS = {
    "random": r"torch cannot read it \(UnpicklingError: ",
    "text": r"it is a text file starting 'epochs: 3'",
    "empty": r"the file is empty",
    "truncated": r"it is a torch file cut short \(\d+ bytes, its zip archive has no end record\)",
    "list": r"it holds a list, not a checkpoint dict",
    "mmdet3d": r"an mmdet3d checkpoint .*`bevkd teacher import --from mmdet3d`",
    "openpcdet": r"an OpenPCDet checkpoint .*`bevkd teacher import --from openpcdet`",
    "weights": r"it holds the keys bias, weight",
}


def test_a_real_checkpoint_loads(tmp_path: Path) -> None:
    payload = load_checkpoint(_real_checkpoint(tmp_path / "ok.pt"))
    assert payload["epoch"] == 0 and "weight" in payload["model"]


@pytest.mark.parametrize("kind", sorted(READS_AS))
def test_load_checkpoint_says_what_the_file_is(kind: str, tmp_path: Path) -> None:
    path = _write(kind, tmp_path / f"{kind}.pt")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    message = str(exc.value)
    assert message.startswith(f"{path} is not a bevkd checkpoint: ") and "\n" not in message
    assert re.search(READS_AS[kind], message), message


@pytest.mark.parametrize("kind", ["random", "text", "empty", "truncated"])
def test_evaluate_names_the_file_in_one_line(kind: str, tmp_path: Path) -> None:
    path = _write(kind, tmp_path / f"{kind}.pt")
    with CliRunner().isolation() as (_, _, output), pytest.raises(SystemExit) as exc:
        main(["evaluate", "--checkpoint", str(path)])
    text = output.getvalue().decode()
    assert exc.value.code == 2, text
    assert "Traceback" not in text and text.count("\n") == 1, text
    assert text.startswith(f"error: {path} is not a bevkd checkpoint: "), text
