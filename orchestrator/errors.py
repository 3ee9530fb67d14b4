"""Exceptions of the orchestrator, each mapped to one HTTP status and a stable error code.

Hierarchy::

    OrchestratorError          (500 internal)
    ├── BadInput               (422 invalid_*)   a request names a bad field or value
    ├── Unauthorized           (401 unauthorized) a token is missing or wrong
    ├── Forbidden              (403 forbidden)    a valid token asks for someone else's thing
    ├── NotFound               (404 *_not_found)  a task, learner, shard or model is unknown
    ├── Conflict               (409 conflict)     the request clashes with the current state
    └── StoreError             (500 store_error)  the database or data directory failed

Every error carries `code` (the stable string sent as `error` in the JSON body) and a message
that says what was wrong and what to do.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Root of every error the orchestrator raises on purpose."""

    status = 500
    code = "internal"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class BadInput(OrchestratorError):
    """A request body or parameter is malformed or impossible; the message names the field."""

    status = 422
    code = "invalid_request"


class Unauthorized(OrchestratorError):
    """No token, or a token that is not valid for this call."""

    status = 401
    code = "unauthorized"


class Forbidden(OrchestratorError):
    """A valid token that may not do this (e.g. a learner heartbeating as another)."""

    status = 403
    code = "forbidden"


class NotFound(OrchestratorError):
    """The task, learner, shard or model asked for does not exist."""

    status = 404
    code = "not_found"


class Conflict(OrchestratorError):
    """The request does not fit the current state (e.g. cancelling a finished task)."""

    status = 409
    code = "conflict"


class StoreError(OrchestratorError):
    """The database or the data directory could not be read or written."""

    status = 500
    code = "store_error"
