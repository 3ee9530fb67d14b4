"""Fixtures for the rpc tests: one real worker on an ephemeral port, with probe procedures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import rpc


@dataclass
class Probe:
    """What the probe procedures saw, so tests can assert that nothing ran."""

    ran: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)


class Boom(Exception):
    """A user-defined exception type raised remotely."""


def make_registry(probe: Probe) -> rpc.Registry:
    reg = rpc.Registry()

    @reg.procedure
    def add(a: int, b: int = 0) -> int:
        probe.ran.append("add")
        return a + b

    @reg.procedure
    async def aecho(value: Any) -> Any:
        await asyncio.sleep(0)
        return value

    @reg.procedure
    def echo(value: Any) -> Any:
        return value

    @reg.procedure
    def sink(value: Any) -> int:
        probe.ran.append("sink")
        return 0

    @reg.procedure
    def raise_value() -> None:
        raise ValueError("bad value 42")

    @reg.procedure
    def raise_custom() -> None:
        raise Boom("custom failure")

    @reg.procedure
    async def raise_async() -> None:
        raise KeyError("missing-key")

    @reg.procedure
    def raise_nested_rpc_error() -> None:
        # As if this procedure's own call to another worker had timed out.
        raise rpc.Timeout("inner call timed out")

    @reg.procedure
    def block() -> str:
        # Blocks until the test releases it: a stand-in for a long training call.
        probe.started.set()
        probe.release.wait(30)
        return "released"

    @reg.procedure
    def thread_name() -> str:
        return threading.current_thread().name

    return reg


@pytest.fixture(scope="module")
def probe() -> Probe:
    return Probe()


@pytest.fixture(scope="module")
def worker(probe: Probe) -> Iterator[rpc.Worker]:
    yield rpc.Worker(make_registry(probe), max_body_bytes=256 << 20, result_ttl_s=30.0)


@pytest.fixture(scope="module")
def server(worker: rpc.Worker, probe: Probe) -> Iterator[rpc.ServerThread]:
    with worker.start() as srv:
        yield srv
    probe.release.set()


@pytest.fixture()
def clean_probe(probe: Probe) -> Iterator[Probe]:
    probe.ran.clear()
    probe.release.clear()
    probe.started.clear()
    yield probe
    probe.release.set()
