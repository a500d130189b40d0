"""The two stages against S3 under injected faults (a fault proxy in front of moto): a
cache-teacher run and a student run give what they give without faults, and a store object
that never answers stops the student within the deadline, naming it; a rerun resumes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from stage_helpers import cache_config, cached_world, small_config
from test_storage_faults import same_store

from bevkd.pipeline.cli import one_line
from bevkd.pipeline.errors import BevkdError
from bevkd.stages import cache_teacher, train_student
from bevkd.storage import layout
from bevkd.storage.copy import copy_store
from bevkd.storage.fastread import FastArray
from bevkd.storage.faults import FaultPlan, FaultProxy
from bevkd.storage.reader import open_store
from bevkd.storage.retry import StoreIOError
from bevkd.storage.verify import verify_store


@pytest.fixture(scope="module")
def world(tiny_nuscenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("faults_world")
    root, teachers, url = cached_world(tiny_nuscenes, base)
    return {"base": base, "root": root, "teachers": teachers, "url": str(url)}


@pytest.fixture
def proxy(s3_server: dict) -> Any:
    with FaultProxy(s3_server["endpoint_url"]) as running:
        yield running


def _pairs(options: dict[str, str]) -> str:
    """fsspec options as the config's list of [key, value] pairs."""
    return json.dumps([[k, v] for k, v in options.items()])


def _fast(*overrides: str) -> list[str]:
    return ["io.retry_attempts=50", *overrides]


def test_cache_teacher_to_s3_at_5_percent_faults_gives_the_fault_free_store_even_if_killed(
    world: dict, proxy: FaultProxy, s3_server: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bevkd.storage.writer import StoreWriter

    url = "s3://bevkd-test/faults-pipeline/cached.zarr"  # fixed: see on_s3
    through = {**s3_server, "endpoint_url": proxy.endpoint}
    cfg = cache_config(world["root"], world["teachers"], url,
                       f"store.storage_options={_pairs(through)}", *_fast())  # fmt: skip
    proxy.plan = FaultPlan(rate=0.05, seed=21)
    # Killed after its second shard (a crash mid-run), then rerun: it resumes.
    real, done = StoreWriter.write_shard, []

    def dies_after_two(self: StoreWriter, *args: Any, **kwargs: Any) -> None:
        if len(done) == 2:
            raise KeyboardInterrupt("killed")
        real(self, *args, **kwargs)
        done.append(args[0])

    monkeypatch.setattr(StoreWriter, "write_shard", dies_after_two)
    with pytest.raises(BevkdError, match="killed"):
        cache_teacher.run(cfg)
    monkeypatch.setattr(StoreWriter, "write_shard", real)
    result = cache_teacher.run(cfg)
    assert 0 < result.shards_written < open_store(world["url"]).num_shards  # resumed, not redone
    assert proxy.injected() >= 5
    same_store(world["url"], url, None, s3_server)
    assert verify_store(url, through).ok


def _run_student(world: dict, out: Path, url: str, options: dict, *extra: str) -> Any:
    cfg = small_config(
        world["root"], "model.kind=camera", "student.recipe=cmkd", f"student.store={url}",
        f"student.storage_options={_pairs(options)}", "student.bev_channels=16",
        "train.epochs=2", f"train.out_dir={out}", "train.log_every=1", *extra,
    )  # fmt: skip
    return train_student.run(cfg)


def _losses(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    timing = re.compile(r"time|wait|per_s|_s$")  # how long, not what was learned
    return [{k: v for k, v in row.items() if not timing.search(k)} for row in rows]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "last.pt", map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def on_s3(world: dict, s3_server: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The world's store copied to S3, and a fault-free student run from it."""
    # A fixed path: the proxy's faults are seeded per (method, path, n-th request), so a random
    # path would make which requests fail (and whether any does) a matter of chance.
    url = "s3://bevkd-test/faults-pipeline/teacher.zarr"
    copy_store(world["url"], url, None, s3_server)
    out = tmp_path_factory.mktemp("clean_student")
    _run_student(world, out, url, s3_server)
    return {"url": url, "out": out}


def test_a_student_from_s3_at_5_percent_faults_logs_the_fault_free_losses(
    world: dict, on_s3: dict, proxy: FaultProxy, s3_server: dict, tmp_path: Path
) -> None:
    proxy.plan = FaultPlan(rate=0.05, seed=7)
    _run_student(world, tmp_path, on_s3["url"], {**s3_server, "endpoint_url": proxy.endpoint},
                 *_fast())  # fmt: skip
    assert proxy.injected() >= 1  # seeded: 2 of its requests fail
    assert _losses(tmp_path) == _losses(on_s3["out"])  # step for step
    for name, value in _weights(on_s3["out"]).items():
        assert torch.equal(value, _weights(tmp_path)[name]), name


def test_an_object_that_never_answers_stops_the_student_and_a_rerun_resumes_to_the_same_weights(
    world: dict, on_s3: dict, proxy: FaultProxy, s3_server: dict, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from bevkd.stages import loop

    store = open_store(on_s3["url"], storage_options=s3_server)
    frame = store.splits.index("train")
    key = FastArray(store._array(layout.field_key("heatmap", "data"))).key(frame)
    # Epoch 1 runs clean; from its checkpoint on, that object answers 503 to every request.
    real_save, saved = loop.save_checkpoint, []

    def save_then_break_the_object(path: Path, *args: Any, **kwargs: Any) -> Any:
        out = real_save(path, *args, **kwargs)
        if Path(path).name == "last.pt" and not saved:
            saved.append(path)
            proxy.plan = FaultPlan(rate=1.0, kinds={"503": 1.0}, only=re.escape(key) + "$")
        return out

    monkeypatch.setattr(loop, "save_checkpoint", save_then_break_the_object)
    through = {**s3_server, "endpoint_url": proxy.endpoint}
    deadline = "io.retry_deadline_s=3"
    with pytest.raises(StoreIOError) as caught:
        _run_student(world, tmp_path, on_s3["url"], through, *_fast(deadline),
                     "train.num_workers=1")  # fmt: skip
    message = one_line(str(caught.value))  # as the CLI prints it
    assert "\n" not in message and key in message and "DataLoader worker" in message
    assert f"token {store.tokens[frame]}" in message and "field 'heatmap'" in message
    assert re.search(r"failed \d+ times? in [0-9.]+ s \(retry budget: 50 tries, 3 s", message), (
        message
    )
    proxy.plan = FaultPlan(rate=0.0)  # the object answers again
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    _run_student(world, tmp_path, on_s3["url"], through, *_fast(deadline), "train.num_workers=1")
    assert _losses(tmp_path) == _losses(on_s3["out"])
    for name, value in _weights(on_s3["out"]).items():
        assert torch.equal(value, _weights(tmp_path)[name]), name
