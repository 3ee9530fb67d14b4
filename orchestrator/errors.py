"""The orchestrator's one exception tree.

Every error the orchestrator raises on purpose is a `ServiceError` (not `OrchestratorError`:
that name is the learner agent's, in `learner_agent.errors`, for a failed call to the
orchestrator). Each carries `code` (a stable string, sent as `error` in a JSON answer) and
`detail` (what was wrong and what to do). No error here knows HTTP: `orchestrator.api.errors`
maps classes to statuses at the API edge (shown on the right), so pure code (allocators,
aggregators, the simulator) raises the same errors whether a request, a CLI command or a
benchmark called it::

    ServiceError                   internal            (500)
    ├── BadInput                   invalid_request     (422)  a bad field or value
    │   └── SimulationConfigError  (simulation.config)        a simulator config is bad
    ├── Unauthorized               unauthorized        (401)  a token is missing or wrong
    ├── Forbidden                  forbidden           (403)  a valid token, someone else's thing
    ├── NotFound                   not_found           (404)  unknown task, learner, shard, model
    ├── Conflict                   conflict            (409)  clashes with the current state
    ├── StoreError                 store_error         (500)  the database or data dir failed
    │   └── StorageFull            storage_full        (507)  no space (or file size limit) left
    ├── AllocationError            allocation_error    (500)  (allocation.errors)
    │   ├── PlanInputError         invalid_request     (422)  bad plan method or states
    │   └── SolverUnavailable      solver_unavailable  (500)  no solver backend here
    └── AggregationError           (aggregation.errors, also ValueError)
        ├── UnknownAggregator      a name that is not in the registry
        ├── UnknownVersion         an update from a model version never sent (409 at pull)
        └── BadUpdate              an update unlike the global model (422 at updates)

`SimulationConfigError` and `AggregationError` are also `ValueError`s, as they were before
they joined the tree. `orchestrator.client.APIError` stays outside it: it is raised on the
client side of the HTTP connection (CLI, benchmarks, tests), carries the status the server
answered, and a client must not import the service's modules to catch it.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Root of every error the orchestrator raises on purpose."""

    code = "internal"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class BadInput(ServiceError):
    """A request body, parameter, instance or config is malformed or impossible; the message
    names the field."""

    code = "invalid_request"


class Unauthorized(ServiceError):
    """No token, or a token that is not valid for this call."""

    code = "unauthorized"


class Forbidden(ServiceError):
    """A valid token that may not do this (e.g. a learner heartbeating as another)."""

    code = "forbidden"


class NotFound(ServiceError):
    """The task, learner, shard or model asked for does not exist."""

    code = "not_found"


class Conflict(ServiceError):
    """The request does not fit the current state (e.g. cancelling a finished task)."""

    code = "conflict"


class StoreError(ServiceError):
    """The database or the data directory could not be read or written."""

    code = "store_error"


class StorageFull(StoreError):
    """The data directory (or the database) has no space left, or the process hit its file
    size limit: nothing was written (the old files stay whole); retry when space returns."""

    code = "storage_full"
