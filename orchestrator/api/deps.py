"""Dependencies of the routes: the service, and who is calling (admin or an enrolled learner)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.errors import Forbidden, Unauthorized
from orchestrator.service import Service
from orchestrator.store import LearnerRow


def get_service(request: Request) -> Service:
    """The Service the app wraps."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
# Two bearer schemes, so the OpenAPI document says which token each route takes; neither
# refuses by itself (auto_error=False): the dependencies below answer 401 with our error body.
_admin_scheme = HTTPBearer(scheme_name="adminToken", auto_error=False,
                           description="the admin token (<data dir>/admin_token)")
_learner_scheme = HTTPBearer(scheme_name="learnerToken", auto_error=False,
                             description="a learner token from POST /v1/learners/enroll")
AdminCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_scheme)]
LearnerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_learner_scheme)]

# Ids are SQL BIGINTs: a path id outside 1..2**63-1 names nothing and is refused as 422
# `invalid_request` before it reaches the database (which cannot even bind it).
MAX_ID = 2**63 - 1
Id = Annotated[int, Path(ge=1, le=MAX_ID, description="an id, 1..2**63-1")]
# An index in a path (shard number, client number): 0..2**63-1.
Index = Annotated[int, Path(ge=0, le=MAX_ID, description="an index, 0..2**63-1")]


def same_secret(presented: str, expected: str) -> bool:
    """Constant-time comparison of two tokens as UTF-8 bytes.

    `hmac.compare_digest` refuses str holding non-ASCII characters with a TypeError; a token
    from a header or a JSON body may hold any character (even a lone surrogate from a JSON
    escape), which must be a plain mismatch.
    """
    return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return (credentials.credentials.strip() or None) if credentials else None


def admin(service: ServiceDep, credentials: AdminCredentials) -> None:
    """Only the admin token passes."""
    token = _token(credentials)
    if token is None or not same_secret(token, service.admin_token):
        raise Unauthorized("this call needs the admin token: send 'Authorization: Bearer "
                           "<admin token>' (see <data dir>/admin_token)")


def _learner_of(service: Service, token: str | None) -> LearnerRow:
    row = service.store.learner_by_token(token) if token else None
    if row is None:
        raise Unauthorized("this call needs a learner token: enroll with POST "
                           "/v1/learners/enroll and send 'Authorization: Bearer <token>'")
    return row


def learner(service: ServiceDep, credentials: LearnerCredentials) -> LearnerRow:
    """The enrolled learner whose token this is."""
    return _learner_of(service, _token(credentials))


def learner_or_admin(service: ServiceDep, as_admin: AdminCredentials,
                     as_learner: LearnerCredentials) -> None:
    """The admin token or any enrolled learner's token passes."""
    token = _token(as_admin)
    if token and same_secret(token, service.admin_token):
        return
    _learner_of(service, _token(as_learner))


def task_reader(task_id: Id, service: ServiceDep, as_admin: AdminCredentials,
                as_learner: LearnerCredentials) -> LearnerRow | None:
    """The admin (None) or a learner that takes part in task `task_id` (docs/security.md):
    one that was given the task's work (a probe, a train call, an async client index).
    Another learner's token is refused with 403 `not_a_participant`, counted on the task."""
    token = _token(as_admin)
    if token and same_secret(token, service.admin_token):
        return None
    me = _learner_of(service, _token(as_learner))
    service.store.task(task_id)  # an unknown task is a 404 whoever asks
    if not service.store.takes_part(task_id, me.id):
        service.asynchronous.refused(task_id, "not_a_participant")
        raise Forbidden(f"learner {me.name} takes no part in task {task_id}: a learner token "
                        "reads only the tasks the orchestrator gave it work of",
                        code="not_a_participant")
    return me


# For `dependencies=[...]` of a route (no value needed) and as a parameter's type.
AdminDep: Any = Depends(admin)
LearnerOrAdminDep: Any = Depends(learner_or_admin)
LearnerDep = Annotated[LearnerRow, Depends(learner)]
TaskReaderDep = Annotated[LearnerRow | None, Depends(task_reader)]
