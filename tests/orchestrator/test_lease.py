"""The driver lease on its own (SQLite and PostgreSQL): one holder, takeover after expiry, and
a round commit refused to an instance that lost it; two services in one process. Two real
orchestrator processes on one database are in test_lease_processes.py (extended tier)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import Conflict
from orchestrator.store import Store, lease
from plexus.spec import parse_spec
from tests.orchestrator.postgres import fresh_database, postgres_url

SPEC = parse_spec({"name": "s", "dataset": {"name": "synthetic", "samples": 200},
                   "partition": {"shard_size": 50}, "sync": {"rounds": 3}})


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(tmp_path / "data")
        yield s
        s.close()
        return
    with fresh_database(postgres_url()) as url:
        s = Store(tmp_path / "data", url)
        try:
            yield s
        finally:
            s.close()


def _round(index: int) -> dict[str, Any]:
    return {"index": index, "started_at": time.time(), "allocation": {}, "shards": {},
            "samples": {}, "left_out": {}, "plan_s": 0.0, "round_time_s": 1.0,
            "truancy": 0.0, "loss": None, "accuracy": 0.5, "model_version": index + 1}


def test_one_holder_until_it_expires_then_another_takes_over(store: Store) -> None:
    now = 1000.0
    assert lease.acquire(store, "a", 10.0, now)
    assert not lease.acquire(store, "b", 10.0, now + 1)  # a holds it
    assert lease.acquire(store, "a", 10.0, now + 5)  # a renews: until now + 15
    assert not lease.acquire(store, "b", 10.0, now + 14)
    assert lease.holder(store) == ("a", now + 15)
    assert lease.acquire(store, "b", 10.0, now + 16)  # a stopped renewing
    assert not lease.acquire(store, "a", 10.0, now + 17)  # and cannot take it back
    assert lease.holder(store) == ("b", now + 26)


def test_release_frees_it_at_once(store: Store) -> None:
    assert lease.acquire(store, "a", 60.0, time.time())
    lease.release(store, "b")  # not the holder: nothing happens
    assert not lease.acquire(store, "b", 60.0, time.time())
    lease.release(store, "a")
    assert lease.acquire(store, "b", 60.0, time.time())


def test_a_dead_holder_of_this_host_is_replaced_at_once_a_live_one_is_not(
        store: Store) -> None:
    import os
    import socket
    import subprocess
    import sys

    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)
    dead = f"{socket.gethostname()}:{int(exited.stdout)}:0000"
    now = time.time()
    assert lease.acquire(store, dead, 60.0, now)
    assert not lease.acquire(store, "b", 60.0, now + 1)  # not expired
    assert lease.take_from_dead(store, "b", 60.0, now + 1)  # but its process is gone
    assert lease.holder(store) == ("b", now + 61)
    alive = f"{socket.gethostname()}:{os.getpid()}:0000"
    assert lease.acquire(store, alive, 60.0, now + 200)  # b's expired
    assert not lease.take_from_dead(store, "c", 60.0, now + 201)  # a live process holds it
    remote = "another-host:1:0000"
    assert lease.acquire(store, remote, 60.0, now + 400)
    assert not lease.take_from_dead(store, "c", 60.0, now + 401)  # cannot tell: wait


def test_a_round_commit_is_refused_once_another_instance_took_the_lease(store: Store) -> None:
    # No data files: the lease is about the rows (record_round only stores the model path).
    task = store.create_task(SPEC.to_dict(), lambda _tid, _d: {}, time.time())
    store.set_state(task.id, "running", None, time.time())
    now = time.time()
    assert lease.acquire(store, "a", 1.0, now)
    store.fence = lambda s: lease.check(s, "a")
    model = store.layout.model(task.id, 0)
    store.record_round(task.id, _round(0), model, now)  # a holds it: committed
    # a's renewal came late: it expired but nobody took it, so a still commits.
    store.record_round(task.id, _round(1), model, now + 5)
    assert lease.acquire(store, "b", 1.0, now + 5)  # b takes over
    with pytest.raises(Conflict) as refused:
        store.record_round(task.id, _round(2), model, now + 6)
    assert refused.value.code == "lease_lost"
    assert [r.index for r in store.rounds(task.id)] == [0, 1]  # nothing of round 2
    assert store.task(task.id).rounds_done == 2


def test_a_second_service_stands_by_and_takes_over_when_the_first_shuts_down(
        tmp_path: Path) -> None:
    from orchestrator.service import Service, Settings

    async def scenario() -> None:
        settings = Settings(data_dir=tmp_path / "data", lease_ttl_s=1.5)
        first, second = Service(settings), Service(settings)
        first.start()
        second.start()
        try:
            assert first.leader and not second.leader
            with pytest.raises(Conflict) as refused:
                second.require_leader()
            assert refused.value.code == "standby" and first.owner in refused.value.detail
            await first.stop()  # gives the lease back: no need to wait for its expiry
            end = time.monotonic() + 20
            while not second.leader:
                assert time.monotonic() < end, "the standby did not take over"
                await asyncio.sleep(0.05)
            second.require_leader()
        finally:
            await second.stop()

    asyncio.run(scenario())
