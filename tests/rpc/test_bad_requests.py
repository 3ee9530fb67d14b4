"""Bad requests get typed 4xx answers, run nothing, and the worker keeps serving."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

import rpc

# pickle.dumps({"args": [1], "kwargs": {}}, protocol=4): a payload that must never be unpickled.
PICKLE_BODY = (
    b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04args\x94]\x94K\x01a"
    b"\x8c\x06kwargs\x94}\x94u."
)


def garbage_json_body() -> bytes:
    head = b"{not json at all"
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head


def deeply_nested_body() -> bytes:
    head = json.dumps({"__metadata__": {"rpc": "[" * 100_000 + "]" * 100_000}}).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head


def truncated_body() -> bytes:
    body = rpc.encode({"args": [np.ones(1000, np.float32)], "kwargs": {}}).join()
    return body[: len(body) - 1000]


@pytest.fixture()
def small_worker(probe: Any) -> Iterator[rpc.ServerThread]:
    reg = rpc.Registry()

    @reg.procedure
    def sink(value: Any) -> int:
        probe.ran.append("sink")
        return 0

    with rpc.Worker(reg, max_body_bytes=1 << 20).start() as srv:
        yield srv


@pytest.mark.parametrize(
    ("body", "content_type", "match"),
    [
        (PICKLE_BODY, rpc.CONTENT_TYPE, "header length"),
        (truncated_body(), rpc.CONTENT_TYPE, "data bytes"),
        (b'{"args": [1], "kwargs": {}}', "application/json", "content type"),
        (PICKLE_BODY, "application/python-pickle", "content type"),
        (garbage_json_body(), rpc.CONTENT_TYPE, "not JSON"),
        (rpc.encode([1, 2]).join(), rpc.CONTENT_TYPE, "call body"),
        (deeply_nested_body(), rpc.CONTENT_TYPE, "nested too deeply"),
    ],
    ids=[
        "pickle",
        "truncated",
        "json-content-type",
        "pickle-content-type",
        "garbage-json",
        "wrong-shape",
        "deep-nesting",
    ],
)
def test_bad_body_is_400_and_nothing_runs(
    small_worker: rpc.ServerThread, clean_probe: Any, body: bytes, content_type: str, match: str
) -> None:
    # Act
    resp = httpx.post(
        f"{small_worker.url}/call/sink", content=body, headers={"content-type": content_type}
    )
    # Assert
    assert resp.status_code == 400
    assert resp.json()["error"] == "malformed_payload"
    assert match in resp.json()["detail"]
    assert clean_probe.ran == []
    # The worker keeps serving.
    assert rpc.connect(small_worker.url).sink(1) == 0
    assert clean_probe.ran == ["sink"]


def test_oversize_body_is_413_before_reading_and_nothing_runs(
    small_worker: rpc.ServerThread, clean_probe: Any
) -> None:
    remote = rpc.connect(small_worker.url, timeout=10)
    with pytest.raises(rpc.PayloadTooLarge, match="exceeds the limit"):
        remote.sink(np.zeros(4 << 20, np.uint8))
    assert clean_probe.ran == []
    assert remote.sink(np.zeros(10, np.uint8)) == 0


def test_oversize_declared_length_is_413_without_a_body(
    small_worker: rpc.ServerThread, clean_probe: Any
) -> None:
    # Only the headers are sent: the 413 must come from Content-Length alone.
    host, port = small_worker.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /call/sink HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: " + rpc.CONTENT_TYPE.encode() + b"\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"payload_too_large" in answer
    assert clean_probe.ran == []


def test_body_cut_off_mid_transfer_leaves_the_worker_serving(
    small_worker: rpc.ServerThread, clean_probe: Any
) -> None:
    host, port = small_worker.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /call/sink HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: " + rpc.CONTENT_TYPE.encode() + b"\r\n"
            b"Content-Length: 5000\r\n\r\n" + b"\x00" * 100
        )
    assert rpc.connect(small_worker.url, timeout=10).sink(1) == 0
    assert clean_probe.ran == ["sink"]


def test_unknown_routes_answer_json(small_worker: rpc.ServerThread) -> None:
    resp = httpx.get(f"{small_worker.url}/nowhere")
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    resp = httpx.get(f"{small_worker.url}/call/sink")
    assert resp.status_code == 405 and resp.json()["error"] == "method_not_allowed"


def test_bad_mode_and_call_id_are_400(small_worker: rpc.ServerThread, clean_probe: Any) -> None:
    body = rpc.encode({"args": [1], "kwargs": {}}).join()
    for headers in ({"x-rpc-mode": "triplex"}, {"x-rpc-call-id": "../../etc"}):
        resp = httpx.post(
            f"{small_worker.url}/call/sink",
            content=body,
            headers={"content-type": rpc.CONTENT_TYPE, **headers},
        )
        assert resp.status_code == 400 and resp.json()["error"] == "malformed_payload"
    assert clean_probe.ran == []
