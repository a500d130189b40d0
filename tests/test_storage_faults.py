"""A store under object-store faults: reads, writes and copies through a fault-injecting proxy
in front of a real S3 API (moto), retries with a deadline, and one writer per store.

Faults are injected on the wire (:class:`bevkd.storage.faults.FaultProxy`), so botocore,
s3fs and bevkd's own retries see them as they would from S3. Fault choices are seeded and
deterministic per request, so these tests fail or pass the same way every run.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bevkd.storage import layout
from bevkd.storage.copy import copy_store
from bevkd.storage.fastread import FastArray
from bevkd.storage.faults import FaultPlan, FaultProxy
from bevkd.storage.lease import LEASE_SUFFIX, Lease, LeaseHeld, object_store_lease
from bevkd.storage.reader import open_store
from bevkd.storage.retry import (
    STATS,
    RetryingStore,
    RetryPolicy,
    StoreIOError,
    call_with_retries,
    is_transient,
    set_default_policy,
)
from bevkd.storage.schema import StoreError
from bevkd.storage.testing import small_contract, write_store
from bevkd.storage.verify import verify_store

FAST = RetryPolicy(attempts=8, deadline_s=60.0, base_delay_s=0.01, max_delay_s=0.1)


@pytest.fixture(autouse=True)
def fast_retries() -> Any:
    """Short backoff in these tests (the budget, not the sleeps, is what they check)."""
    set_default_policy(FAST)
    yield
    set_default_policy(RetryPolicy())


@pytest.fixture
def proxy(s3_server: dict) -> Any:
    with FaultProxy(s3_server["endpoint_url"]) as running:
        yield running


def _through(proxy: FaultProxy, s3_server: dict, validate: bool = True) -> dict[str, Any]:
    options = {**s3_server, "endpoint_url": proxy.endpoint}
    if not validate:  # botocore's own response checksums off: only the chunks' crc32c guard
        options["config_kwargs"] = {"response_checksum_validation": "when_required"}
    return options


_URLS: dict[str, int] = {}


def _url() -> str:
    """A store URL named after the running test (and how many it asked for before): the
    proxy's faults are seeded per (method, path, n-th request), so a random path would make
    which requests fail, and whether enough do, a matter of chance."""
    test = re.sub(
        r"[^A-Za-z0-9_-]", "-", os.environ["PYTEST_CURRENT_TEST"].split("::")[-1].split(" ")[0]
    )
    _URLS[test] = _URLS.get(test, -1) + 1
    return f"s3://bevkd-test/{test}-{_URLS[test]}/store.zarr"


def same_store(a: str, b: str, a_options: dict | None, b_options: dict | None) -> None:
    """Every array of two stores equal, read with plain zarr (not bevkd's reader), and the
    attrs that describe the content (not when or by whom it was made)."""
    import zarr

    left = zarr.open_group(a, mode="r", storage_options=a_options)
    right = zarr.open_group(b, mode="r", storage_options=b_options)
    names = sorted(k for k, _ in left.arrays())
    assert names == sorted(k for k, _ in right.arrays())
    for group in ("fields", "index", "shards"):
        if group not in left:
            continue
        for path, array in left[group].arrays():
            other = right[group][path]
            np.testing.assert_array_equal(array[:], other[:], err_msg=f"{group}/{path}")
        for sub, node in left[group].groups():
            for path, array in node.arrays():
                np.testing.assert_array_equal(
                    array[:], right[group][sub][path][:], err_msg=f"{group}/{sub}/{path}"
                )
    la, ra = dict(left.attrs), dict(right.attrs)
    assert bool(la.get("finalized")) == bool(ra.get("finalized"))
    for key in ("frames_sha256", "skipped", "codec_error", "num_frames", "fields", "stats"):
        assert la.get(key) == ra.get(key), key


def _frames(url: str, options: dict | None) -> list[dict[str, np.ndarray]]:
    store = open_store(url, storage_options=options)
    return [store.read_frame(i) for i in range(len(store)) if i not in store.skipped]


def _assert_same_frames(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for x, y in zip(got, want, strict=True):
        assert x.keys() == y.keys()
        for name in x:
            np.testing.assert_array_equal(x[name], y[name])


# -- the plan and the retry loop, without a network --------------------------------------


def test_fault_choices_are_seeded_per_request_and_near_the_rate() -> None:
    plan = FaultPlan(rate=0.1, seed=3)
    draws = [plan.choose("GET", f"/b/k{i}", 0) for i in range(4000)]
    assert draws == [plan.choose("GET", f"/b/k{i}", 0) for i in range(4000)]  # deterministic
    share = sum(d is not None for d in draws) / len(draws)
    assert 0.08 < share < 0.12
    assert {d for d in draws if d} == {"500", "503", "reset", "truncate", "corrupt"}
    assert draws != [FaultPlan(rate=0.1, seed=4).choose("GET", f"/b/k{i}", 0) for i in range(4000)]
    only = FaultPlan(rate=1.0, only=r"/heatmap/")
    assert only.choose("GET", "/b/x/heatmap/c.0", 5) and not only.choose("GET", "/b/x/boxes", 0)
    with pytest.raises(ValueError, match="unknown fault kinds"):
        FaultPlan(kinds={"fire": 1.0})


def test_transient_failures_are_retried_and_permanent_ones_are_not() -> None:
    import aiohttp

    assert is_transient(OSError(5, "Service Unavailable"))
    assert is_transient(aiohttp.ClientPayloadError("Response payload is not completed"))
    assert is_transient(TimeoutError())
    for permanent in (FileNotFoundError("x"), PermissionError("denied"), ValueError("bad")):
        assert not is_transient(permanent)

    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    rng = random.Random(0)
    assert asyncio.run(call_with_retries("GET", "k", flaky, FAST, rng)) == "ok"
    assert len(calls) == 3

    async def denied() -> None:
        calls.append(1)
        raise PermissionError("AccessDenied")

    calls.clear()
    with pytest.raises(PermissionError):
        asyncio.run(call_with_retries("GET", "k", denied, FAST, rng))
    assert len(calls) == 1  # not retried


def test_the_retry_budget_ends_in_an_error_naming_the_object_tries_and_last_failure() -> None:
    async def down() -> None:
        raise OSError(5, "SlowDown")

    policy = RetryPolicy(attempts=4, deadline_s=30.0, base_delay_s=0.001, max_delay_s=0.01)
    with pytest.raises(StoreIOError, match=r"GET s3://b/x/c\.3: failed 4 times .* SlowDown"):
        asyncio.run(call_with_retries("GET", "s3://b/x/c.3", down, policy, random.Random(0)))

    async def hangs() -> None:
        await asyncio.sleep(10)

    deadline = RetryPolicy(attempts=100, deadline_s=0.3, base_delay_s=0.01, max_delay_s=0.05)
    started = time.monotonic()
    with pytest.raises(StoreIOError, match="no reply before the deadline"):
        asyncio.run(call_with_retries("GET", "k", hangs, deadline, random.Random(0)))
    assert time.monotonic() - started < 1.5  # a hung request is cut at the deadline


def test_remote_stores_are_wrapped_in_retries_and_local_ones_are_not(tmp_path: Path) -> None:
    from bevkd.storage.remote import open_zarr_store

    assert isinstance(open_zarr_store("memory://x/y.zarr", read_only=False), RetryingStore)
    assert not isinstance(open_zarr_store(str(tmp_path), read_only=False), RetryingStore)


# -- reads ---------------------------------------------------------------------------------


def test_reads_at_mixed_faults_give_the_fault_free_frames(
    proxy: FaultProxy, s3_server: dict
) -> None:
    url = _url()
    write_store(url, small_contract(), n_frames=8, shard_size=4, storage_options=s3_server)
    want = _frames(url, s3_server)
    proxy.plan = FaultPlan(rate=0.2, seed=11)
    _assert_same_frames(_frames(url, _through(proxy, s3_server)), want)
    assert proxy.injected() >= 10  # the reads really went through faults
    assert verify_store(url, _through(proxy, s3_server)).ok


def test_a_frame_read_from_s3_costs_one_get_per_chunk_and_no_head(
    proxy: FaultProxy, s3_server: dict
) -> None:
    """s3fs sizes a whole-object GET with a HEAD unless max_concurrency is 1 (bevkd's default
    for s3://): without it, every chunk read was two requests."""
    url = _url()
    write_store(url, small_contract(), n_frames=4, shard_size=2, storage_options=s3_server)
    store = open_store(url, storage_options=_through(proxy, s3_server))
    store.read_frame(1)  # opens the arrays: their metadata
    before = dict(proxy.methods)
    got = store.read_frame(2)
    chunks = sum(len(layout.field_parts(store.contract.field(name))) for name in got)
    assert proxy.methods["GET"] - before.get("GET", 0) == chunks
    assert proxy.methods["HEAD"] == before.get("HEAD", 0)


def test_a_damaged_body_is_caught_by_the_crc_and_read_again(
    proxy: FaultProxy, s3_server: dict
) -> None:
    url = _url()
    write_store(url, small_contract(), n_frames=8, shard_size=4, storage_options=s3_server)
    want = _frames(url, s3_server)
    proxy.plan = FaultPlan(rate=0.3, kinds={"corrupt": 1.0}, seed=2, only=r"/fields/")
    before = STATS.snapshot()["rereads"]
    _assert_same_frames(_frames(url, _through(proxy, s3_server, validate=False)), want)
    assert proxy.counts["corrupt"] > 0
    assert STATS.snapshot()["rereads"] - before == proxy.counts["corrupt"]
    # verify reads through the same path (zarr's, for its bookkeeping arrays: 3 reads a chunk)
    damaged = proxy.counts["corrupt"]
    proxy.plan = FaultPlan(rate=0.05, kinds={"corrupt": 1.0}, seed=3, only=r"/fields/")
    assert verify_store(url, _through(proxy, s3_server, validate=False)).ok
    assert proxy.counts["corrupt"] > damaged


def test_a_chunk_damaged_in_the_store_is_reported_corrupt_after_two_equal_reads(
    s3_server: dict,
) -> None:
    import s3fs

    url = _url()
    write_store(url, small_contract(), n_frames=4, shard_size=2, storage_options=s3_server)
    store = open_store(url, storage_options=s3_server)
    key = FastArray(store._array(layout.field_key("heatmap", "data"))).key(1)
    fs = s3fs.S3FileSystem(**{k: v for k, v in s3_server.items() if k != "endpoint_url"},
                           endpoint_url=s3_server["endpoint_url"])  # fmt: skip
    path = url[len("s3://") :] + "/" + key
    raw = bytearray(fs.cat_file(path))
    raw[len(raw) // 2] ^= 0xFF
    fs.pipe_file(path, bytes(raw))
    before = STATS.snapshot()["rereads"]
    with pytest.raises(StoreError, match=r"frame 1 \(token tok00001\), field 'heatmap'.*corrupt"):
        open_store(url, storage_options=s3_server).read_frame(1)
    assert STATS.snapshot()["rereads"] - before == 1  # read twice, the same bad bytes: stop


def test_an_object_that_never_answers_fails_within_the_deadline_naming_frame_and_field(
    proxy: FaultProxy, s3_server: dict
) -> None:
    url = _url()
    write_store(url, small_contract(), n_frames=4, shard_size=2, storage_options=s3_server)
    key = FastArray(open_store(url, storage_options=s3_server)._array(
        layout.field_key("heatmap", "data"))).key(2)  # fmt: skip
    proxy.plan = FaultPlan(rate=1.0, kinds={"503": 1.0}, only=re_escape(key))
    policy = RetryPolicy(attempts=50, deadline_s=2.0, base_delay_s=0.01, max_delay_s=0.2)
    store = open_store(url, storage_options=_through(proxy, s3_server), retry=policy)
    store.read_frame(1)  # other objects answer
    started = time.monotonic()
    with pytest.raises(StoreIOError) as caught:
        store.read_frame(2)
    assert time.monotonic() - started < policy.deadline_s + 1.0
    text = str(caught.value)
    assert "frame 2 (token tok00002), field 'heatmap'" in text and key in text
    assert "last failure" in text


def re_escape(key: str) -> str:
    import re

    return re.escape(key) + "$"


# -- writes and copies -----------------------------------------------------------------------


def test_writes_at_mixed_faults_make_the_fault_free_store(
    proxy: FaultProxy, s3_server: dict
) -> None:
    clean, faulty = _url(), _url()
    write_store(clean, small_contract(), n_frames=10, shard_size=4, storage_options=s3_server,
                skipped={3: "no sweep"})  # fmt: skip
    proxy.plan = FaultPlan(rate=0.05, seed=5)
    options = _through(proxy, s3_server)
    write_store(faulty, small_contract(), n_frames=10, shard_size=4, storage_options=options,
                skipped={3: "no sweep"})  # fmt: skip
    assert proxy.injected() >= 5
    same_store(clean, faulty, s3_server, s3_server)
    assert verify_store(faulty, s3_server).ok


def test_copy_to_and_from_s3_at_mixed_faults_is_exact(
    tmp_path: Path, proxy: FaultProxy, s3_server: dict
) -> None:
    local = str(tmp_path / "src.zarr")
    write_store(local, small_contract(), n_frames=10, shard_size=4, skipped={2: "bad calib"})
    proxy.plan = FaultPlan(rate=0.05, seed=9)
    options = _through(proxy, s3_server)
    remote = _url()
    assert copy_store(local, remote, None, options).report.ok
    back = str(tmp_path / "back.zarr")
    assert copy_store(remote, back, options, None).report.ok
    assert proxy.injected() >= 5
    same_store(local, remote, None, s3_server)
    same_store(local, back, None, None)


def test_a_copy_to_s3_killed_halfway_then_rerun_is_exact(
    tmp_path: Path, proxy: FaultProxy, s3_server: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = str(tmp_path / "src.zarr")
    write_store(local, small_contract(), n_frames=10, shard_size=4)
    proxy.plan = FaultPlan(rate=0.05, seed=13)
    options, remote = _through(proxy, s3_server), _url()
    real_set, puts = RetryingStore.set, []

    async def dies_at_the_40th_put(self: RetryingStore, key: str, value: Any) -> None:
        if len(puts) == 40:  # the process dies here (an error no retry catches stands in)
            raise RuntimeError("killed")
        puts.append(key)
        await real_set(self, key, value)

    monkeypatch.setattr(RetryingStore, "set", dies_at_the_40th_put)
    with pytest.raises(RuntimeError, match="killed"):
        copy_store(local, remote, None, options, concurrency=1)
    monkeypatch.setattr(RetryingStore, "set", real_set)
    with pytest.raises(StoreError):
        open_store(remote, storage_options=s3_server)  # no root zarr.json yet: not a store
    result = copy_store(local, remote, None, options)
    assert result.report.ok and result.skipped >= 40  # the first run's objects were kept
    same_store(local, remote, None, s3_server)


def test_a_shard_is_marked_only_after_its_objects_are_confirmed(
    s3_server: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object store that takes a PUT but keeps other bytes: the shard is rewritten once,
    then refused (never marked)."""
    from bevkd.storage import fastwrite
    from bevkd.storage.writer import StoreWriter

    url = _url()
    writer = write_store(url, small_contract(), n_frames=4, shard_size=2,
                         storage_options=s3_server, finalize=False)  # fmt: skip
    real_confirm, confirmed = fastwrite.confirm_objects, []

    def counted_confirm(store: Any, objects: list[tuple[str, bytes]]) -> None:
        confirmed.append([key for key, _ in objects])
        real_confirm(store, objects)

    monkeypatch.setattr(fastwrite, "confirm_objects", counted_confirm)
    real_set = RetryingStore.set
    puts: list[str] = []

    async def lossy_set(self: RetryingStore, key: str, value: Any) -> None:
        puts.append(key)
        if key.startswith("fields/heatmap/"):  # the store keeps a truncated object
            value = type(value).from_bytes(value.to_bytes()[:-3])
        await real_set(self, key, value)

    monkeypatch.setattr(RetryingStore, "set", lossy_set)
    writer.unmark([1])
    fresh = StoreWriter.open(url, s3_server)
    from bevkd.storage.testing import shard_payload

    arrays, boxes = shard_payload(fresh, 1, 0, {})
    with pytest.raises(StoreError, match=r"fields/heatmap/.*does not hold the bytes just put"):
        fresh.write_shard(1, arrays, boxes)
    assert not fresh.is_written(1)
    heatmap_puts = [k for k in puts if k.startswith("fields/heatmap/")]
    assert len(heatmap_puts) == 2 * len(set(heatmap_puts))  # put, checked, put again, refused
    assert set(heatmap_puts) <= {k for keys in confirmed for k in keys}  # the check that refused it


# -- one writer per store --------------------------------------------------------------------


def test_two_concurrent_creators_of_one_s3_store_one_wins_the_other_names_it(
    s3_server: dict,
) -> None:
    url = _url()
    gate = threading.Barrier(2)
    outcomes: list[Any] = []
    release = threading.Event()

    def creator() -> None:
        gate.wait()
        try:
            with object_store_lease(url, s3_server):
                outcomes.append("won")
                release.wait(10)
        except LeaseHeld as exc:
            outcomes.append(exc)
            release.set()

    threads = [threading.Thread(target=creator) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert outcomes.count("won") == 1
    (lost,) = [o for o in outcomes if isinstance(o, LeaseHeld)]
    assert "being written by another run" in str(lost) and "pid" in str(lost)
    with object_store_lease(url, s3_server):  # released: the next run gets it
        pass


def test_a_stale_lease_is_taken_over_and_a_live_one_is_not(s3_server: dict) -> None:
    url = _url()
    dead = Lease(url, s3_server, ttl_s=0.5)
    dead.acquire()
    dead._stop.set()  # the run died: no more renewals, no release
    with pytest.raises(LeaseHeld, match="being written by another run"):
        Lease(url, s3_server, ttl_s=0.5).acquire()  # still fresh
    time.sleep(0.8)
    with pytest.warns(UserWarning, match="took over a stale writer lease"):
        taker = Lease(url, s3_server, ttl_s=30)
        taker.acquire()
    assert Lease(url, s3_server).current()["id"] == taker.id
    taker.release()
    assert Lease(url, s3_server).current() is None


def test_a_live_lease_is_renewed_past_its_ttl(s3_server: dict) -> None:
    url = _url()
    with object_store_lease(url, s3_server, ttl_s=0.6):
        time.sleep(1.0)  # longer than the ttl: renewals keep it fresh
        with pytest.raises(LeaseHeld):
            Lease(url, s3_server, ttl_s=0.6).acquire()


def test_cache_teacher_to_s3_holds_the_lease_and_a_second_run_is_refused(
    s3_server: dict,
) -> None:
    from bevkd.storage.writer import writer_lock

    url = _url()
    with writer_lock(url, s3_server):
        held = Lease(url, s3_server)
        assert held.path.endswith("store.zarr" + LEASE_SUFFIX) and held.current() is not None
        with (
            pytest.raises(StoreError, match="being written by another run"),
            writer_lock(url, s3_server),
        ):
            pass


def test_without_conditional_writes_a_second_creator_is_caught_after_the_fact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An endpoint that refuses conditional PUTs: a warning, and two creators of one store are
    caught by the store's creator record (never merged)."""
    from bevkd.storage.testing import synthetic_frame_list, synthetic_provenance
    from bevkd.storage.writer import StoreWriter

    url = f"memory://bevkd/{uuid.uuid4().hex}.zarr"
    real = Lease._put

    async def unconditional_only(self: Lease, **condition: Any) -> None:
        if condition:
            raise NotImplementedError("conditional writes")
        await real(self)

    monkeypatch.setattr(Lease, "_put", unconditional_only)
    with pytest.warns(UserWarning, match="refused a conditional write"), object_store_lease(url):
        pass

    frames = synthetic_frame_list(4)
    args = (small_contract(), frames["tokens"], frames["scenes"], frames["splits"],
            frames["has_label"])  # fmt: skip
    first = StoreWriter.create(url, *args, synthetic_provenance(frames["tokens"]), shard_size=2)
    # The second creator's create overwrote the root record between the first's steps:
    other = {**synthetic_provenance(frames["tokens"]), "teacher": "another teacher"}
    import zarr

    zarr.open_group(url, mode="r+").attrs["provenance"] = other
    with pytest.raises(
        StoreError, match=r"created at the same moment by another run.*another teacher"
    ):
        first.finalize()
