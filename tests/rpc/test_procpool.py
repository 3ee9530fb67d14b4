"""The worker's thread pool for sync procedures (rpc._procpool.ProcPool), on a real loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from rpc._procpool import ProcPool


async def _until(cond: Callable[[], bool], deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        assert time.monotonic() < end, "condition never held"
        await asyncio.sleep(0.005)


def test_at_most_max_threads_run_at_once_and_all_finish() -> None:
    # Arrange
    pool = ProcPool(2, "t-proc")
    release = threading.Event()
    started: list[str] = []

    def blocking() -> str:
        started.append(threading.current_thread().name)
        release.wait(10)
        return "done"

    async def go() -> list[str]:
        futs = [pool.run(blocking) for _ in range(3)]
        await _until(lambda: len(started) == 2)
        # Act: the third waits for a free thread.
        await asyncio.sleep(0.05)
        third_waited = len(started) == 2
        release.set()
        results = await asyncio.gather(*futs)
        assert third_waited
        return list(results)

    # Assert
    assert asyncio.run(go()) == ["done"] * 3
    assert set(started) <= {"t-proc_0", "t-proc_1"}
    pool.close()


def test_exceptions_reach_the_caller_with_their_type() -> None:
    pool = ProcPool(1)

    def bad() -> None:
        raise KeyError("k")

    async def go() -> None:
        with pytest.raises(KeyError):
            await pool.run(bad)
        assert await pool.run(lambda: 5) == 5  # the thread survived

    asyncio.run(go())
    pool.close()


def test_close_cancels_queued_calls_and_refuses_new_ones() -> None:
    # Arrange: one thread, busy; a second call queued behind it.
    pool = ProcPool(1)
    release = threading.Event()
    ran: list[str] = []

    def first() -> str:
        ran.append("first")
        release.wait(10)
        return "first"

    async def go() -> None:
        running = pool.run(first)
        await _until(lambda: ran == ["first"])
        queued = pool.run(lambda: ran.append("queued"))
        # Act
        pool.close()
        release.set()
        # Assert: the running call finishes; the queued one never runs.
        assert await running == "first"
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(RuntimeError):
            pool.run(lambda: None)

    asyncio.run(go())
    assert ran == ["first"]
