"""Relay transport: a worker that binds no port serves through a relay, with auth."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
import pytest

import rpc


def listening_ports() -> set[int]:
    return {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


@pytest.fixture(scope="module")
def relay_server() -> Iterator[rpc.ServerThread]:
    relay = rpc.Relay(
        caller_tokens={"caller-token"}, worker_tokens={"pi-07": "pi-token"}, poll_wait_s=1.0
    )
    with relay.start() as srv:
        yield srv


@pytest.fixture(scope="module")
def relayed(relay_server: rpc.ServerThread, worker: rpc.Worker) -> Iterator[rpc.RelayConnection]:
    before = listening_ports()
    conn = worker.start_relay(relay_server.url, "pi-07", token="pi-token")
    # The relay worker opened no listening socket of its own.
    assert listening_ports() <= before
    yield conn
    conn.stop()


@pytest.mark.parametrize("duplex", [False, True], ids=["simplex", "duplex"])
def test_calls_through_the_relay(
    relay_server: rpc.ServerThread, relayed: rpc.RelayConnection, duplex: bool
) -> None:
    remote = rpc.connect(
        relay_server.url + "/pi-07", token="caller-token", duplex=duplex, timeout=15
    )
    arr = np.arange(1000, dtype=np.float32)
    assert remote.add(1, 2) == 3
    assert remote.add.start(3, 4).join() == 7
    assert asyncio.run(remote.add.acall(5, 6)) == 11
    np.testing.assert_array_equal(remote.echo({"x": arr})["x"], arr)
    with pytest.raises(rpc.RemoteError, match="ValueError"):
        remote.raise_value()
    with pytest.raises(rpc.UnknownProcedure):
        remote.missing()


def test_relay_duplex_with_dropped_callback_is_fetched(
    relay_server: rpc.ServerThread, relayed: rpc.RelayConnection
) -> None:
    receiver = rpc.CallbackReceiver(public_url="http://127.0.0.1:9/unreachable")
    remote = rpc.connect(
        relay_server.url + "/pi-07",
        token="caller-token",
        duplex=True,
        callback=receiver,
        timeout=15,
        poll_interval_s=0.5,
    )
    assert remote.add(40, 2) == 42


def test_relay_refuses_unknown_callers(
    relay_server: rpc.ServerThread, relayed: rpc.RelayConnection, clean_probe: Any
) -> None:
    for token in (None, "wrong"):
        with pytest.raises(rpc.AuthError):
            rpc.connect(relay_server.url + "/pi-07", token=token, timeout=10).add(1, 1)
    assert clean_probe.ran == []


def test_relay_refuses_workers_with_a_wrong_token(
    relay_server: rpc.ServerThread, worker: rpc.Worker
) -> None:
    with pytest.raises(rpc.AuthError, match="pi-07"):
        worker.start_relay(relay_server.url, "pi-07", token="stolen")
    with pytest.raises(rpc.AuthError):
        worker.start_relay(relay_server.url, "pi-08", token="pi-token")


def test_relay_hosted_by_a_worker_and_by_fastapi(worker: rpc.Worker) -> None:
    fastapi = pytest.importorskip("fastapi")
    # Hosted by a worker (any worker can host the relay) ...
    host = rpc.Worker(rpc.Registry(), relay=rpc.Relay(poll_wait_s=0.3))
    with host.start() as srv, worker.start_relay(srv.url + "/relay", "edge"):
        assert rpc.connect(srv.url + "/relay/edge", timeout=10).add(2, 2) == 4
    # ... or mounted into a FastAPI app, as the orchestrator does.
    app = fastapi.FastAPI()
    relay = rpc.Relay(poll_wait_s=0.3)
    app.mount("/relay", relay.app)
    with rpc.ServerThread(app).start() as srv, worker.start_relay(srv.url + "/relay", "edge"):
        assert rpc.connect(srv.url + "/relay/edge", duplex=True, timeout=10).add(3, 3) == 6
        assert relay.last_seen("edge") is not None


def test_a_call_whose_poll_answer_was_lost_is_redelivered_once(
    worker: rpc.Worker, clean_probe: Any
) -> None:
    import httpx

    relay = rpc.Relay(poll_wait_s=0.3, redeliver_after_s=0.3)
    with relay.start() as srv:
        # Arrange: a duplex call waits in the relay for worker "edge".
        remote = rpc.connect(srv.url + "/edge", duplex=True, timeout=15, poll_interval_s=0.5)
        handle = remote.add.start(20, 22)
        # A poll takes the call, but its answer is "lost": no ack, no result, ever.
        end = time.monotonic() + 10
        while True:
            lost = httpx.get(f"{srv.url}/edge/_poll", params={"wait": "0.2"})
            if lost.status_code == 200:
                break
            assert time.monotonic() < end, "the call never reached the relay"
        assert lost.headers["x-rpc-procedure"] == "add"
        # Act: the real worker connects; the unacknowledged call is queued again for it.
        with worker.start_relay(srv.url, "edge"):
            result = handle.join(15)
    # Assert
    assert result == 42
    assert clean_probe.ran == ["add"]


def test_large_payload_through_the_relay_is_bit_exact(
    relay_server: rpc.ServerThread, relayed: rpc.RelayConnection
) -> None:
    payload = np.random.default_rng(3).random(2_500_000).astype(np.float32)  # 10 MB
    remote = rpc.connect(relay_server.url + "/pi-07", token="caller-token", timeout=30)
    out = remote.echo({"w": payload})
    assert out["w"].tobytes() == payload.tobytes()


def test_a_wrong_relay_url_fails_fast(server: rpc.ServerThread, worker: rpc.Worker) -> None:
    # A worker's own URL is no relay: the first poll gets a 404.
    with pytest.raises(rpc.TransportError, match="404"):
        worker.start_relay(server.url + "/not-a-relay", "edge")
