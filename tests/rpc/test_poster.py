"""Delivery of duplex results to callback receivers (rpc._http.deliver and rpc._poster).

Real receivers on 127.0.0.1 (plain and TLS), real stale keep-alive connections, and raw
asyncio servers that answer the way other HTTP servers may (chunked, close-delimited, garbage).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import rpc
from rpc._http import ClientPool, Outcome, deliver
from rpc._poster import Poster

CALL = "c" * 32


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    out = tmp_path_factory.mktemp("poster-tls")
    paths = {"ca": out / "ca.pem", "cert": out / "cert.pem", "key": out / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return {k: str(Path(v)) for k, v in paths.items()}


@pytest.fixture()
def receiver() -> Iterator[rpc.CallbackReceiver]:
    with rpc.CallbackReceiver().start() as rec:
        yield rec


def _deliver(pool: ClientPool, url: str, secret: str | None, call_id: str, value: Any) -> bool:
    async def go() -> bool:
        try:
            return await deliver(pool, url, secret, call_id, Outcome.result(value))
        finally:
            pool.poster().close()  # the loop ends here; so do its connections

    return asyncio.run(go())


def test_result_reaches_a_waiting_receiver(receiver: rpc.CallbackReceiver) -> None:
    # Arrange
    waiter = receiver.expect(CALL)
    assert receiver.public_url is not None
    # Act
    ok = _deliver(ClientPool(), receiver.public_url, receiver.secret, CALL, {"x": [1, 2]})
    # Assert
    assert ok
    assert waiter.outcome is not None and waiter.outcome.status == 200
    assert rpc.decode(waiter.outcome.body) == {"value": {"x": [1, 2]}}


def test_connection_is_kept_alive_and_a_stale_one_is_replaced() -> None:
    # Arrange: one loop delivers three results; the receiver restarts (same port) in between,
    # so the connection kept from the first delivery is dead when the third goes out.
    pool = ClientPool()
    first = rpc.CallbackReceiver().start()
    assert first.public_url is not None
    url, port = first.public_url, int(first.public_url.rsplit(":", 1)[1])
    results: list[bool] = []

    async def go() -> None:
        for i in range(2):
            first.expect(f"{CALL}{i}")
            results.append(await deliver(pool, url, first.secret, f"{CALL}{i}", Outcome.result(i)))
        idle = pool.poster()._idle
        assert sum(len(v) for v in idle.values()) == 1  # one connection, reused
        await asyncio.to_thread(first.stop)
        second = rpc.CallbackReceiver(token=first.secret)
        await asyncio.to_thread(second.start, port=port)
        try:
            waiter = second.expect(CALL)
            results.append(await deliver(pool, url, first.secret, CALL, Outcome.result("new")))
            assert waiter.outcome is not None
        finally:
            await asyncio.to_thread(second.stop)

    # Act
    asyncio.run(go())
    # Assert
    assert results == [True, True, True]


def test_tls_receiver_with_the_callers_ca(certs: dict[str, str]) -> None:
    # Arrange
    with rpc.CallbackReceiver().start(ssl_certfile=certs["cert"], ssl_keyfile=certs["key"]) as rec:
        assert rec.public_url is not None and rec.public_url.startswith("https://")
        waiter = rec.expect(CALL)
        # Act
        trusted = _deliver(ClientPool(certs["ca"]), rec.public_url, rec.secret, CALL, 7)
        untrusted = _deliver(ClientPool(), rec.public_url, rec.secret, CALL, 8)
    # Assert: delivered with the CA; refused (not raised) without it.
    assert trusted and not untrusted
    assert waiter.outcome is not None and rpc.decode(waiter.outcome.body) == {"value": 7}


def test_duplex_call_over_tls_gets_its_result_by_callback(certs: dict[str, str]) -> None:
    # Arrange: worker and receiver both on HTTPS, as deployed.
    reg = rpc.Registry()

    @reg.procedure
    def add(a: int, b: int) -> int:
        return a + b

    worker = rpc.Worker(reg, callback_verify=certs["ca"])
    cert, key = certs["cert"], certs["key"]
    with worker.start(ssl_certfile=cert, ssl_keyfile=key) as srv, rpc.CallbackReceiver().start(
        ssl_certfile=cert, ssl_keyfile=key
    ) as rec:
        assert rec.public_url is not None
        body = rpc.encode({"args": [2, 3], "kwargs": {}}).join()
        for i in range(3):
            call_id = f"{CALL}{i}"
            waiter = rec.expect(call_id)
            # Act: a raw duplex call; only the worker's callback can set the waiter.
            resp = httpx.post(
                f"{srv.url}/call/add",
                content=body,
                headers={"content-type": rpc.CONTENT_TYPE, "x-rpc-mode": "duplex",
                         "x-rpc-call-id": call_id, "x-rpc-callback": rec.public_url,
                         "x-rpc-callback-token": rec.secret},
                verify=ssl.create_default_context(cafile=certs["ca"]),
            )
            # Assert
            assert resp.status_code == 202
            assert waiter.wait(20), "the result never came by callback"
            assert waiter.outcome is not None
            assert rpc.decode(waiter.outcome.body) == {"value": 5}
    worker.close()


def test_wrong_secret_or_nobody_waiting_is_not_delivered(
    receiver: rpc.CallbackReceiver,
) -> None:
    assert receiver.public_url is not None
    receiver.expect(CALL)
    assert not _deliver(ClientPool(), receiver.public_url, "wrong", CALL, 1)
    assert not _deliver(ClientPool(), receiver.public_url, receiver.secret, "d" * 32, 1)


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1:1/x", "http://[bad", "http://127.0.0.1:99999/x", "http:///nohost",
            "http://127.0.0.1:1/a b", "not a url"]
)
def test_bad_callback_urls_are_refused_without_raising(url: str) -> None:
    assert not _deliver(ClientPool(), url, "s", CALL, 1)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _with_raw_server(answer: bytes, close: bool) -> tuple[bool, int]:
    """Deliver to a raw server that reads one request head and writes `answer`; returns
    (delivered, number of requests the server saw)."""
    seen = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1]) for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                seen += 1
                writer.write(answer)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def go() -> bool:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await deliver(ClientPool(), f"http://127.0.0.1:{port}", "s", CALL,
                                 Outcome.result(1))
        finally:
            server.close()

    return asyncio.run(go()), seen


@pytest.mark.parametrize(
    ("answer", "close", "delivered"),
    [
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False, True),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nclose-delimited", True, True),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", True, True),
        (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", False, False),
        (b"SSH-2.0-OpenSSH\r\n\r\n", True, False),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 99999999\r\n\r\n", True, False),
    ],
    ids=["chunked", "close-delimited", "http-1.0", "404", "garbage", "huge-answer"],
)
def test_answers_of_other_servers(answer: bytes, close: bool, delivered: bool) -> None:
    ok, seen = _with_raw_server(answer, close)
    assert ok is delivered
    # A refused or unreadable answer is tried twice at most; a good one once.
    assert 1 <= seen <= (1 if delivered else 2)


def test_a_proxy_in_the_environment_hands_delivery_to_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert Poster.applies("http://10.1.2.3:8000/result/x")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    assert not Poster.applies("http://10.1.2.3:8000/result/x")
    assert Poster.applies("https://10.1.2.3:8000/result/x")
    monkeypatch.setenv("NO_PROXY", "10.1.2.3")
    assert Poster.applies("http://10.1.2.3:8000/result/x")


def test_a_large_result_is_streamed_whole(receiver: rpc.CallbackReceiver) -> None:
    # Arrange: 3 MB, more than one send and more than one 256 KiB slice.
    import numpy as np

    arr = np.random.default_rng(0).random(750_000, dtype=np.float32)
    waiter = receiver.expect(CALL)
    assert receiver.public_url is not None
    # Act
    ok = _deliver(ClientPool(), receiver.public_url, receiver.secret, CALL, arr)
    # Assert
    assert ok and waiter.outcome is not None
    assert np.array_equal(rpc.decode(waiter.outcome.body)["value"], arr)
