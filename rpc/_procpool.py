"""The worker's pool of threads for sync procedures, with the shortest hop there and back.

`loop.run_in_executor` on a ThreadPoolExecutor takes a concurrent Future, a semaphore, a work
item and a chained asyncio Future per call; on a no-op call that hop is the largest cost a
worker adds over a bare HTTP endpoint (benchmarks/rpc_overhead.py). Here a call is one queue
entry: the thread runs it and resolves the caller's asyncio Future on its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

_Item = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return  # cancelled while it ran
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class ProcPool:
    """Up to `max_threads` threads (started on demand, named `<prefix>_<n>`) running calls."""

    def __init__(self, max_threads: int, prefix: str = "rpc-proc") -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.max_threads = max_threads
        self.prefix = prefix
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._closed = False

    def run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run `fn` on a pool thread; the returned Future (of the running loop) gets its
        result or exception. Cancelling the Future before a thread takes the call skips it."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot run a procedure after the worker was closed")
            spawn = False
            if self._idle > 0:
                self._idle -= 1  # that idle thread takes this call
            elif self._threads < self.max_threads:
                self._threads += 1
                spawn = True
            number = self._threads
        self._queue.put((fn, loop, fut))
        if spawn:
            threading.Thread(
                target=self._work, name=f"{self.prefix}_{number - 1}", daemon=True
            ).start()
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, loop, fut = item
            del item
            if not fut.cancelled():
                try:
                    value, ok = fn(), True
                except BaseException as exc:  # handed to the awaiting coroutine, as executors do
                    value, ok = exc, False
                try:  # noqa: SIM105 (the hot path: no context manager object per call)
                    loop.call_soon_threadsafe(_settle, fut, ok, value)
                except RuntimeError:
                    pass  # the loop is closed: nobody waits for this call any more
                del value
            del fn, loop, fut
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        """Refuse new calls, cancel queued ones; running calls finish, then threads exit."""
        with self._lock:
            self._closed = True
            threads = self._threads
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _, loop, fut = item
                with contextlib.suppress(RuntimeError):  # a closed loop waits for nothing
                    loop.call_soon_threadsafe(fut.cancel)
        for _ in range(threads):
            self._queue.put(None)
