"""Errors raised by the allocators (pure: no HTTP status here; the caller maps them).

::

    ServiceError (orchestrator.errors)
    └── AllocationError            allocation_error     an allocator could not answer
        ├── PlanInputError (ValueError)  invalid_request  bad method or learner states
        └── SolverUnavailable      solver_unavailable   the solver backend does not import

The CLI prints the message and exits non-zero; an API edge maps ``PlanInputError`` to a 4xx
answer and ``SolverUnavailable`` to a 5xx one. Messages say what was wrong and what to do.
"""

from __future__ import annotations

from orchestrator.errors import ServiceError


class AllocationError(ServiceError):
    """Base class of every error an allocator raises on purpose."""

    code = "allocation_error"


class PlanInputError(AllocationError, ValueError):
    """A multi-task plan was asked for with an unknown method or impossible learner states."""

    code = "invalid_request"


class SolverUnavailable(AllocationError):
    """The requested solver cannot be imported; install it or ask for another backend."""

    code = "solver_unavailable"
