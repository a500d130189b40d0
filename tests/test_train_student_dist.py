"""Stage two across processes on the tiny synthetic world: two-rank gloo DDP trains the same
weights as one process accumulating the same global batch, and a student run killed with
SIGKILL mid-epoch and rerun ends at the uninterrupted run's weights.

The runs are real: ``bevkd.stages.train_student.run`` (cmkd over a real cached store, with
unlabelled frames), under ``torchrun`` for DDP (``tests/student_runner.py``), validating on
rank 0 at the final epoch as the loop always does.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from stage_helpers import cached_world, small_config

from bevkd.models.builders import build_student
from bevkd.models.checkpoint import checkpoint_config, load_checkpoint
from bevkd.stages import train_student

RUNNER = Path(__file__).with_name("student_runner.py")
STEPS_PER_EPOCH = 3  # 6 training frames (3 labelled, 3 unlabelled), 2 frames per optimizer step


@pytest.fixture(scope="module")
def world(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private dataset copy and a real store cached by a tiny random LiDAR teacher."""
    root, _, store = cached_world(
        tiny_nuscenes, tmp_path_factory.mktemp("student_dist"), "cache.teachers=[lidar]"
    )
    return {"root": root, "store": store}


def _overrides(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """cmkd with unlabelled frames, one frame per micro-batch, one torch thread, no workers."""
    return [
        "model.kind=camera", "student.recipe=cmkd", f"student.store={world['store']}",
        "student.bev_channels=16", "student.unlabeled=true", "distill.bev_scales=[1,2]",
        "train.batch_size=1", "train.num_workers=0", "train.torch_threads=1",
        "train.log_every=1", f"train.out_dir={out}", *extra,
    ]  # fmt: skip


@contextmanager
def _torch_threads() -> Iterator[None]:
    """``run`` sets this process's torch threads (train.torch_threads); put them back after."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_here(world: dict[str, Path], out: Path, *extra: str) -> train_student.TrainResult:
    with _torch_threads():
        return train_student.run(small_config(world["root"], *_overrides(world, out, *extra)))


def _runner_command(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(RUNNER), str(world["root"]), *_overrides(world, out, *extra)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parameters(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model's parameters in ``checkpoint`` (its buffers left out)."""
    payload = load_checkpoint(checkpoint)
    names = {name for name, _ in build_student(checkpoint_config(payload)).named_parameters()}
    assert names and names <= payload["model"].keys()
    return {name: payload["model"][name] for name in sorted(names)}


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str,
                 rtol: float, atol: float) -> None:  # fmt: skip
    assert actual.keys() == expected.keys(), what
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=rtol, atol=atol,
                                   msg=_prefixed(f"{what} {name}"))  # fmt: skip


def _prefixed(prefix: str) -> Callable[[str], str]:
    return lambda text: f"{prefix}: {text}"


def _train_rows(log: Path) -> list[dict[str, str]]:
    """The training rows of train_log.csv (validation rows carry no loss)."""
    with log.open(newline="") as f:
        return [row for row in csv.DictReader(f) if row["loss"]]


def test_two_rank_ddp_trains_the_weights_of_one_process_accumulating(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """2 gloo ranks x 1 frame equal 1 process x 2 accumulated frames, step for step.

    EpochBatches gives rank r of step s the frame that the single process reads at micro-step
    r of step s, and each micro-batch is one frame in both runs, so BatchNorm's batch
    statistics, the losses and the averaged gradients agree. Only parameters are compared:
    DDP broadcasts rank 0's buffers at every forward, so rank 0's BatchNorm running statistics
    (the ones it saves) have seen only its own frames, while the single process's have seen
    all of them; they differ by design. A run with another seed must differ, so the
    comparison can fail.

    Every process trains on one torch thread (train.torch_threads=1; torchrun would give the
    ranks one anyway): AdamW's first steps move each weight by about lr * sign(grad), so a
    rounding-level gradient difference from another thread count turns into lr-sized weight
    differences (3e-3 after 3 steps here). With equal threads the runs agree to the bit.
    """
    epochs = "train.epochs=1"
    single = _run_here(world, tmp_path / "single", epochs, "train.grad_accum=2")

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    ddp_out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port),
        *_runner_command(world, ddp_out, epochs, "train.grad_accum=1")[1:],
    ]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"steps": single.steps}
    assert single.steps == STEPS_PER_EPOCH

    for checkpoint in ("last.pt", "best.pt"):  # best.pt: rank 0 validated the final epoch
        one = _parameters(single.out_dir / checkpoint)
        two = _parameters(ddp_out / checkpoint)
        _assert_same(two, one, checkpoint, rtol=1e-4, atol=1e-5)
    ddp_state = load_checkpoint(ddp_out / "last.pt")
    assert ddp_state["step"] == single.steps and ddp_state["epoch"] == 0
    assert (ddp_out / "eval" / "metrics.json").is_file()
    # both runs' losses (DDP: the mean over ranks) agree step for step
    for a, b in zip(_train_rows(single.out_dir / "train_log.csv"),
                    _train_rows(ddp_out / "train_log.csv"), strict=True):  # fmt: skip
        assert a["step"] == b["step"]
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4)

    other = _run_here(world, tmp_path / "seed1", epochs, "train.grad_accum=2", "train.seed=1")
    reseeded = _parameters(other.out_dir / "last.pt")
    differ = [n for n in one if not torch.allclose(reseeded[n], one[n], rtol=1e-4, atol=1e-5)]
    assert len(differ) > len(one) // 2, differ


def test_a_run_killed_mid_epoch_and_rerun_reaches_the_uninterrupted_weights(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """SIGKILL during epoch 2 of 3, rerun the same command: the same final weights, exactly,
    the same step count, and a train log whose steps are each written once."""
    settings = ("train.epochs=3", "train.grad_accum=2")
    whole = _run_here(world, tmp_path / "whole", *settings)

    out = tmp_path / "killed"
    command = _runner_command(world, out, *settings)
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Kill once epoch 2 has logged its first step: epoch 1's last.pt is on disk (it is
            # written before epoch 2 starts) and epoch 2 is under way.
            deadline = time.monotonic() + 120
            while not _logged_step(out / "train_log.jsonl", STEPS_PER_EPOCH + 1):
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the run never reached epoch 2"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    interrupted = load_checkpoint(out / "last.pt")
    assert (interrupted["epoch"], interrupted["step"]) == (0, STEPS_PER_EPOCH)  # killed mid-epoch 2
    # the killed run had logged steps past its checkpoint: the rerun must drop and redo them
    assert _logged_step(out / "train_log.jsonl", STEPS_PER_EPOCH + 1)

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert json.loads(rerun.stdout.strip().splitlines()[-1]) == {"steps": whole.steps}

    a, b = load_checkpoint(whole.out_dir / "last.pt"), load_checkpoint(out / "last.pt")
    _assert_same(b["model"], a["model"], "last.pt", rtol=0, atol=0)  # buffers too
    assert b["step"] == a["step"] == whole.steps == 3 * STEPS_PER_EPOCH

    whole_rows = _train_rows(whole.out_dir / "train_log.csv")
    rows = _train_rows(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, whole.steps + 1))
    assert [r["loss"] for r in rows] == [r["loss"] for r in whole_rows]
    with (out / "train_log.csv").open(newline="") as f:
        validations = [row for row in csv.DictReader(f) if row.get("val_NDS")]
    assert [int(row["step"]) for row in validations] == [whole.steps]  # the final epoch only


def _logged_step(log: Path, step: int) -> bool:
    if not log.is_file():
        return False
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    try:
        return any(json.loads(line)["step"] >= step for line in lines)
    except json.JSONDecodeError:  # a line being appended
        return False
