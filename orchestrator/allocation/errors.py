"""Errors raised by the allocators (pure: no HTTP status here; the caller maps them).

::

    AllocationError            an allocator could not answer
    ├── PlanInputError (ValueError)   a plan request names a bad method or bad learner states
    └── SolverUnavailable      the requested solver backend does not import here

The CLI prints the message and exits non-zero; an API edge maps ``PlanInputError`` to a 4xx
answer and ``SolverUnavailable`` to a 5xx one. Messages say what was wrong and what to do.
"""

from __future__ import annotations


class AllocationError(Exception):
    """Base class of every error an allocator raises on purpose."""


class PlanInputError(AllocationError, ValueError):
    """A multi-task plan was asked for with an unknown method or impossible learner states."""


class SolverUnavailable(AllocationError):
    """The requested solver cannot be imported; install it or ask for another backend."""
