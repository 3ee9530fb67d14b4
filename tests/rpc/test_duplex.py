"""Duplex specifics: 202 at once, results kept for fetching when callbacks fail, expiry."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import pytest

import rpc


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def poll(url: str, until: Any, deadline_s: float = 10.0) -> httpx.Response:
    """GET `url` until `until(response)` holds or the deadline passes."""
    end = time.monotonic() + deadline_s
    while True:
        resp = httpx.get(url)
        if until(resp):
            return resp
        assert time.monotonic() < end, f"gave up polling {url}: last {resp.status_code}"
        time.sleep(0.02)


def duplex_post(url: str, call_id: str, callback: str | None, *args: Any) -> httpx.Response:
    body = rpc.encode({"args": list(args), "kwargs": {}}).join()
    headers = {
        "content-type": rpc.CONTENT_TYPE,
        "x-rpc-mode": "duplex",
        "x-rpc-call-id": call_id,
    }
    if callback:
        headers["x-rpc-callback"] = callback
        headers["x-rpc-callback-token"] = "t"
    return httpx.post(url, content=body, headers=headers)


def test_duplex_answers_202_while_the_procedure_still_runs(
    server: rpc.ServerThread, clean_probe: Any
) -> None:
    # Arrange: `block` runs until released, like a long training call.
    # Act
    resp = duplex_post(f"{server.url}/call/block", "a" * 32, None)
    # Assert: the request is answered (and closed) while the procedure is still running.
    assert resp.status_code == 202
    assert resp.json() == {"call_id": "a" * 32}
    assert clean_probe.started.wait(10)
    running = httpx.get(f"{server.url}/calls/{'a' * 32}")
    assert running.status_code == 202 and running.json()["state"] == "running"
    clean_probe.release.set()
    done = poll(f"{server.url}/calls/{'a' * 32}", lambda r: r.status_code == 200)
    assert rpc.decode(bytearray(done.content)) == {"value": "released"}


def test_dropped_callback_is_fetched_by_id(server: rpc.ServerThread) -> None:
    # Arrange: a receiver whose advertised URL is unreachable, so every callback fails.
    receiver = rpc.CallbackReceiver(public_url=closed_port_url())
    remote = rpc.connect(
        server.url, duplex=True, callback=receiver, timeout=15.0, poll_interval_s=0.5
    )
    # Act
    result = remote.add(20, 22)
    # Assert: the caller fell back to fetching the result by id.
    assert result == 42


def test_undelivered_result_is_kept_for_its_ttl(server: rpc.ServerThread) -> None:
    call_id = "b" * 32
    resp = duplex_post(f"{server.url}/call/add", call_id, closed_port_url() + "/cb", 1, 2)
    assert resp.status_code == 202
    fetched = poll(f"{server.url}/calls/{call_id}", lambda r: r.status_code == 200)
    assert fetched.headers["content-type"] == rpc.CONTENT_TYPE
    assert rpc.decode(bytearray(fetched.content)) == {"value": 3}
    # Fetching again still works until the caller forgets it (or the TTL passes).
    assert httpx.get(f"{server.url}/calls/{call_id}").status_code == 200
    assert httpx.delete(f"{server.url}/calls/{call_id}").status_code == 200
    gone = httpx.get(f"{server.url}/calls/{call_id}")
    assert gone.status_code == 404 and gone.json()["error"] == "call_not_found"


def test_results_expire_after_ttl() -> None:
    reg = rpc.Registry()
    reg.add(lambda: "v", name="value")
    # The result is kept for 2 s after the call ends: the poll for it must land inside that
    # window, which a loaded machine delaying one poll by 0.3 s (the old TTL) once missed.
    with rpc.Worker(reg, result_ttl_s=2.0).start() as srv:
        call_id = "c" * 32
        assert duplex_post(f"{srv.url}/call/value", call_id, None).status_code == 202
        poll(f"{srv.url}/calls/{call_id}", lambda r: r.status_code == 200)
        expired = poll(f"{srv.url}/calls/{call_id}", lambda r: r.status_code == 404)
        assert expired.json()["error"] == "call_not_found"


def push(server_url: str, receiver: rpc.CallbackReceiver, call_id: str, *args: Any) -> Any:
    """Make a raw duplex call to `add` whose result must be pushed to `receiver`."""
    waiter = receiver.expect(call_id)
    body = rpc.encode({"args": list(args), "kwargs": {}}).join()
    headers = {
        "content-type": rpc.CONTENT_TYPE,
        "x-rpc-mode": "duplex",
        "x-rpc-call-id": call_id,
        "x-rpc-callback": str(receiver.public_url),
        "x-rpc-callback-token": receiver.secret,
    }
    assert httpx.post(f"{server_url}/call/add", content=body, headers=headers).status_code == 202
    assert waiter.wait(10), "the callback never arrived"
    assert waiter.outcome is not None and waiter.outcome.status == 200
    return rpc.decode(waiter.outcome.body)


def test_delivered_callback_frees_the_result(server: rpc.ServerThread) -> None:
    # A receiver that does listen: the result is pushed, and the worker forgets it.
    with rpc.CallbackReceiver().start() as receiver:
        assert push(server.url, receiver, "e" * 32, 2, 3) == {"value": 5}
        gone = poll(f"{server.url}/calls/{'e' * 32}", lambda r: r.status_code == 404)
        assert gone.json()["error"] == "call_not_found"


def test_callback_with_wrong_secret_is_refused() -> None:
    with rpc.CallbackReceiver(token="right").start() as receiver:
        waiter = receiver.expect("d" * 32)
        resp = httpx.post(
            f"{receiver.public_url}/result/{'d' * 32}",
            content=b"{}",
            headers={"authorization": "Bearer wrong", "x-rpc-status": "200"},
        )
        assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"
        assert waiter.outcome is None


def test_receiver_mounted_in_fastapi(server: rpc.ServerThread) -> None:
    # The orchestrator's way: mount the receiver into its own FastAPI app.
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()
    receiver = rpc.CallbackReceiver()
    app.mount("/rpc-callbacks", receiver.app)
    with rpc.ServerThread(app).start() as host:
        receiver.public_url = host.url + "/rpc-callbacks"
        assert push(server.url, receiver, "f" * 32, 7, 8) == {"value": 15}
        remote = rpc.connect(server.url, duplex=True, callback=receiver, timeout=10.0)
        assert remote.add(1, 1) == 2


def test_a_long_duplex_call_keeps_no_request_open() -> None:
    # Arrange: a worker whose app is wrapped by an ASGI layer that times every request.
    import asyncio

    reg = rpc.Registry()

    @reg.procedure
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    worker = rpc.Worker(reg)
    durations: list[tuple[str, float]] = []

    async def timed_app(scope: Any, receive: Any, send: Any) -> None:
        start = time.monotonic()
        await worker.app(scope, receive, send)
        if scope["type"] == "http":
            durations.append((scope["path"], time.monotonic() - start))

    # A receiver nobody can reach, so the caller must also poll while the call runs.
    receiver = rpc.CallbackReceiver(public_url=closed_port_url())
    with rpc.ServerThread(timed_app).start() as srv:
        remote = rpc.connect(
            srv.url, duplex=True, callback=receiver, timeout=20, poll_interval_s=0.3
        )
        # Act
        began = time.monotonic()
        assert remote.slow(4.0) == "done"
        took = time.monotonic() - began
    # Assert: the call lasted 4 s, yet every request (call, polls, fetch) was short: none was
    # held open for as much as half of the call.
    assert took >= 4.0
    assert any(path.startswith("/calls/") for path, _ in durations)
    assert max(d for _, d in durations) < 2.0, durations


def test_call_store_purges_expired_results_but_not_a_reused_id() -> None:
    # Arrange: "a" finishes and is fetched (dropped), then its id is reused by a running call;
    # "b" finishes and is left to expire.
    from rpc._http import CallStore, Outcome

    store = CallStore(ttl_s=0.05)
    a, b = "a" * 16, "b" * 16
    store.begin(a)
    store.finish(a, Outcome.result(1))
    store.drop(a)
    store.begin(a)
    store.begin(b)
    store.finish(b, Outcome.result(2))
    # Act: wait (polling) until b's result has expired.
    end = time.monotonic() + 10
    while store.get(b) is not None:
        assert time.monotonic() < end, "the finished result never expired"
        time.sleep(0.01)
    # Assert: the expiry of a's first use did not take its running second use with it.
    running = store.get(a)
    assert running is not None and running.outcome is None
    assert len(store) == 1
