"""Keep solver libraries off the process's standard output.

HiGHS (highspy ≥ 1.16 prints a ``Running HiGHS … Copyright …`` banner when a ``Highs`` object
is made, before any option can silence it) and Gurobi (licence lines on ``Env.start``) write
from C straight to file descriptor 1. ``plexus plan med`` promises exactly one JSON document on
stdout, and the orchestrator's stdout is its log; so every solver call runs inside
:func:`solver_stdout_to_stderr`, which points descriptor 1 at descriptor 2 for the duration.

Descriptors are process-wide: the redirection is reference-counted under a lock so that
concurrent solver calls (MED runs in worker threads) share one redirection and the first
caller's saved descriptor is restored when the last one leaves. Anything another thread
prints meanwhile goes to stderr, not lost.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_depth = 0
_saved_fd: int | None = None


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with suppress(AttributeError, OSError, ValueError):
            stream.flush()


@contextmanager
def solver_stdout_to_stderr() -> Iterator[None]:
    """Run the body with file descriptor 1 pointing where descriptor 2 points."""
    global _depth, _saved_fd
    with _lock:
        if _depth == 0:
            _flush_python_streams()
            try:
                _saved_fd = os.dup(1)
                os.dup2(2, 1)
            except OSError:  # no descriptor 1 or 2 (daemonised oddly): nothing to guard
                _saved_fd = None
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved_fd is not None:
                _flush_python_streams()
                os.dup2(_saved_fd, 1)
                os.close(_saved_fd)
                _saved_fd = None


def quiet_solver(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: every call of `fn` runs inside :func:`solver_stdout_to_stderr`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with solver_stdout_to_stderr():
            return fn(*args, **kwargs)

    return wrapper
