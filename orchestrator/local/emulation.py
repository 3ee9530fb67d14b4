"""Emulated device speed for local experiments: a CPU duty cycle imposed with SIGSTOP/SIGCONT.

Several agents on one laptop are equally fast; to stand in for a fleet of unequal devices, a
supervisor lets a process run for `fraction` of every `period_s` and stops it for the rest, as
a cgroup CPU quota would (`cpu.max`), but without root. Everything the process does slows down
together (compute, and the serving of its HTTP requests), like a slower device. This is an
emulation and is reported as one wherever it is used.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading


class DutyCycle:
    """Throttle process `pid` to `fraction` (0 < fraction ≤ 1) of wall time, period in seconds."""

    def __init__(self, pid: int, fraction: float, period_s: float = 0.01) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.pid, self.fraction, self.period_s = pid, fraction, period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> DutyCycle:
        """Begin throttling in a background thread (nothing to do at fraction 1)."""
        if self.fraction < 1.0:
            self._thread = threading.Thread(target=self._loop, name=f"duty-{self.pid}",
                                             daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop throttling and leave the process running."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.period_s + 1.0)
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> bool:
        try:
            os.kill(self.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def _loop(self) -> None:
        # On a loaded machine an ordinary thread wakes late, and every late SIGSTOP lets the
        # throttled process run free for a while; a real-time priority (where the system
        # allows it, e.g. as root) keeps the duty cycle on time. The thread sleeps ~all the
        # time, so it takes next to no CPU from anyone.
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        run_s = self.fraction * self.period_s
        pause_s = self.period_s - run_s
        try:
            while not self._stop.is_set():
                if not self._signal(signal.SIGCONT):
                    return
                if self._stop.wait(run_s):
                    return
                if not self._signal(signal.SIGSTOP):
                    return
                self._stop.wait(pause_s)
        finally:
            with contextlib.suppress(Exception):
                self._signal(signal.SIGCONT)
