"""Each calling style in simplex and duplex mode, remote errors and timeouts, on a real worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import rpc

Style = Callable[[rpc.Stub, tuple[Any, ...]], Any]


def blocking(stub: rpc.Stub, args: tuple[Any, ...]) -> Any:
    return stub(*args)


def handle(stub: rpc.Stub, args: tuple[Any, ...]) -> Any:
    h = stub.start(*args)
    assert isinstance(h, rpc.CallHandle) and h.call_id
    return h.join(10.0)


def awaited(stub: rpc.Stub, args: tuple[Any, ...]) -> Any:
    return asyncio.run(stub.acall(*args))


STYLES = [
    pytest.param(blocking, id="blocking"),
    pytest.param(handle, id="handle"),
    pytest.param(awaited, id="acall"),
]
MODES = [pytest.param(False, id="simplex"), pytest.param(True, id="duplex")]


@pytest.mark.parametrize("duplex", MODES)
@pytest.mark.parametrize("style", STYLES)
def test_each_style_and_mode_returns_the_result(
    server: rpc.ServerThread, style: Style, duplex: bool
) -> None:
    # Arrange
    remote = rpc.connect(server.url, duplex=duplex, timeout=10.0)
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    # Act
    total = style(remote.add, (40, 2))
    echoed = style(remote.aecho, ({"a": array, "tag": "x", "raw": b"\x00\x01"},))
    # Assert
    assert total == 42
    assert echoed["tag"] == "x" and echoed["raw"] == b"\x00\x01"
    np.testing.assert_array_equal(echoed["a"], array)
    remote.close()


@pytest.mark.parametrize("duplex", MODES)
def test_keyword_arguments_and_defaults(server: rpc.ServerThread, duplex: bool) -> None:
    remote = rpc.connect(server.url, duplex=duplex, timeout=10.0)
    assert remote.add(a=1) == 1
    assert remote["add"](1, b=5) == 6


@pytest.mark.parametrize("duplex", MODES)
@pytest.mark.parametrize(
    ("name", "remote_type", "text"),
    [
        ("raise_value", "ValueError", "bad value 42"),
        ("raise_custom", "Boom", "custom failure"),
        ("raise_async", "KeyError", "missing-key"),
    ],
)
def test_remote_exceptions_arrive_typed(
    server: rpc.ServerThread, duplex: bool, name: str, remote_type: str, text: str
) -> None:
    remote = rpc.connect(server.url, duplex=duplex, timeout=10.0)
    with pytest.raises(rpc.RemoteError) as info:
        remote[name]()
    assert info.value.remote_type == remote_type
    assert text in info.value.message
    assert "Traceback" in info.value.remote_traceback and name in info.value.remote_traceback


@pytest.mark.parametrize("duplex", MODES)
def test_rpc_errors_raised_inside_a_procedure_arrive_as_remote_errors(
    server: rpc.ServerThread, duplex: bool
) -> None:
    remote = rpc.connect(server.url, duplex=duplex, timeout=10.0)
    with pytest.raises(rpc.RemoteError) as info:
        remote.raise_nested_rpc_error()
    assert info.value.remote_type == "Timeout"
    assert "inner call timed out" in info.value.message


def test_remote_error_in_async_style(server: rpc.ServerThread) -> None:
    remote = rpc.connect(server.url, duplex=True, timeout=10.0)
    with pytest.raises(rpc.RemoteError, match="ValueError"):
        asyncio.run(remote.raise_value.acall())


@pytest.mark.parametrize("duplex", MODES)
def test_unknown_procedure_and_bad_arguments(server: rpc.ServerThread, duplex: bool) -> None:
    remote = rpc.connect(server.url, duplex=duplex, timeout=10.0)
    with pytest.raises(rpc.UnknownProcedure, match="no procedure 'nope'"):
        remote.nope()
    with pytest.raises(rpc.BadArguments):
        remote.add(1, 2, 3)


def test_unsupported_argument_fails_before_sending(
    server: rpc.ServerThread, clean_probe: Any
) -> None:
    remote = rpc.connect(server.url)
    with pytest.raises(rpc.UnsupportedValue, match="object"):
        remote.sink(object())
    with pytest.raises(TypeError):  # UnsupportedValue is also a TypeError
        remote.sink.start({1: "int key"})
    assert clean_probe.ran == []


@pytest.mark.parametrize("duplex", MODES)
def test_timeout_of_a_blocking_call(
    server: rpc.ServerThread, clean_probe: Any, duplex: bool
) -> None:
    remote = rpc.connect(server.url, duplex=duplex, timeout=0.5)
    with pytest.raises(rpc.Timeout):
        remote.block()
    clean_probe.release.set()


def test_join_timeout_keeps_the_handle_valid(server: rpc.ServerThread, clean_probe: Any) -> None:
    remote = rpc.connect(server.url, duplex=True)
    h = remote.block.start()
    assert clean_probe.started.wait(10)
    with pytest.raises(rpc.Timeout):
        h.join(0.2)
    assert not h.done()
    clean_probe.release.set()
    assert h.join(10) == "released"
    assert h.done()


def test_acall_timeout(server: rpc.ServerThread, clean_probe: Any) -> None:
    remote = rpc.connect(server.url, duplex=True, timeout=0.5)
    with pytest.raises(rpc.Timeout):
        asyncio.run(remote.block.acall())
    clean_probe.release.set()


def test_sync_procedures_run_in_the_thread_pool(server: rpc.ServerThread) -> None:
    assert rpc.connect(server.url).thread_name().startswith("rpc-proc")


def test_connection_refused_is_connection_lost() -> None:
    srv = rpc.Worker(rpc.Registry()).start()
    url = srv.url
    srv.stop()
    with pytest.raises(rpc.ConnectionLost):
        rpc.connect(url, timeout=5).anything()


def test_a_non_rpc_endpoint_is_a_protocol_error(server: rpc.ServerThread) -> None:
    # /healthz answers JSON that is not an rpc error body when used as a "worker" base URL.
    remote = rpc.connect(server.url + "/healthz")
    with pytest.raises(rpc.ProtocolError):
        remote.add(1, 2)


@pytest.mark.parametrize("duplex", MODES)
def test_worker_mounted_into_fastapi(worker: rpc.Worker, duplex: bool) -> None:
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()
    app.mount("/rpc", worker.app)
    with (
        rpc.ServerThread(app).start() as host,
        rpc.connect(host.url + "/rpc", duplex=duplex, timeout=10) as remote,
    ):
        assert remote.add(4, 5) == 9
        assert asyncio.run(remote.aecho.acall("x")) == "x"
