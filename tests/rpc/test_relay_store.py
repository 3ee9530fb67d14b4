"""The relay's durable store and its gone-worker rule, in one process (fast); the SIGKILL
restarts with real processes are in test_relay_durable.py."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

import rpc
from rpc._relay_store import DONE, QUEUED, RUNNING
from rpc._wire import CONTENT_TYPE, decode_result, encode_call


def test_the_sqlite_store_keeps_calls_in_order_until_dropped(tmp_path: Path) -> None:
    store = rpc.SqliteRelayStore(tmp_path / "relay.db")
    store.put(rpc.RelayRecord("w/a1234567", "add", body=b"one", callback_url="http://cb"))
    store.put(rpc.RelayRecord("w/b1234567", "add", body=b"two"))
    store.put(rpc.RelayRecord("w/c1234567", "add", body=b"three"))
    store.mark_running("w/b1234567")
    store.finish("w/c1234567", 200, CONTENT_TYPE, b"result", time.time() - 60)
    store.close()
    again = rpc.SqliteRelayStore(tmp_path / "relay.db")  # as after a restart
    records = again.load()
    assert [(r.key, r.state, r.body) for r in records] == [
        ("w/a1234567", QUEUED, b"one"), ("w/b1234567", RUNNING, None),
        ("w/c1234567", DONE, None)]
    assert records[0].callback_url == "http://cb" and records[2].result == b"result"
    again.drop("w/a1234567")
    # A result nobody fetched within the TTL is removed when a later one finishes.
    after_c = time.time()
    again.finish("w/b1234567", 200, CONTENT_TYPE, b"r2", after_c)
    assert [r.key for r in again.load()] == ["w/b1234567"]
    again.close()


def test_a_call_accepted_by_one_relay_is_served_by_the_next_over_the_same_store(
        tmp_path: Path, worker: rpc.Worker) -> None:
    path = tmp_path / "relay.db"
    call_id = uuid.uuid4().hex
    with rpc.Relay(store=rpc.SqliteRelayStore(path), poll_wait_s=0.2).start() as first:
        body = encode_call((2, 3), {}).join()
        answer = httpx.post(f"{first.url}/w1/call/add", content=body, headers={
            "content-type": CONTENT_TYPE, "x-rpc-mode": "duplex", "x-rpc-call-id": call_id})
        assert answer.status_code == 202
    # The first relay is gone with the call still queued; a new one opens the same file.
    with rpc.Relay(store=rpc.SqliteRelayStore(path), poll_wait_s=0.2).start() as second, \
            worker.start_relay(second.url, "w1"):
        end = time.monotonic() + 30
        while (got := httpx.get(f"{second.url}/w1/calls/{call_id}")).status_code == 202:
            assert time.monotonic() < end, "the restored call was not run"
            time.sleep(0.05)
        assert got.status_code == 200 and decode_result(got.content) == 5


def test_a_call_for_a_worker_that_never_polls_fails_with_worker_gone(tmp_path: Path) -> None:
    relay = rpc.Relay(poll_wait_s=0.2, gone_after_s=0.5)
    with relay.start() as srv:
        remote = rpc.connect(f"{srv.url}/nobody", timeout=30)
        started = time.monotonic()
        with pytest.raises(rpc.WorkerGone) as gone:
            remote.add(1, 2)  # queued, then failed once the worker is known gone
        assert time.monotonic() - started < 10
        assert gone.value.code == "worker_gone"
        started = time.monotonic()
        with pytest.raises(rpc.WorkerGone):
            remote.add(1, 2)  # refused at once
        assert time.monotonic() - started < 2


def test_gone_after_s_must_exceed_the_poll_wait() -> None:
    with pytest.raises(ValueError, match="gone_after_s"):
        rpc.Relay(poll_wait_s=2.0, gone_after_s=1.0)
