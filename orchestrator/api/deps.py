"""Dependencies of the routes: the service, and who is calling (admin or an enrolled learner)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from orchestrator.errors import Forbidden, Unauthorized
from orchestrator.service import Service
from orchestrator.store import LearnerRow


def get_service(request: Request) -> Service:
    """The Service the app wraps."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
AuthHeader = Annotated[str | None, Header()]


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return None


def admin(service: ServiceDep, authorization: AuthHeader = None) -> None:
    """Only the admin token passes."""
    token = bearer(authorization)
    if token is None or not hmac.compare_digest(token, service.admin_token):
        raise Unauthorized("this call needs the admin token: send 'Authorization: Bearer "
                           "<admin token>' (see <data dir>/admin_token)")


def learner(service: ServiceDep, authorization: AuthHeader = None) -> LearnerRow:
    """The enrolled learner whose token this is."""
    token = bearer(authorization)
    row = service.store.learner_by_token(token) if token else None
    if row is None:
        raise Unauthorized("this call needs a learner token: enroll with POST "
                           "/v1/learners/enroll and send 'Authorization: Bearer <token>'")
    return row


def learner_or_admin(service: ServiceDep, authorization: AuthHeader = None) -> None:
    """The admin token or any enrolled learner's token passes."""
    token = bearer(authorization)
    if token and hmac.compare_digest(token, service.admin_token):
        return
    learner(service, authorization)


def task_reader(task_id: int, service: ServiceDep, authorization: AuthHeader = None
                ) -> LearnerRow | None:
    """The admin (None) or a learner that takes part in task `task_id` (docs/security.md):
    one that was given the task's work (a probe, a train call, an async client index).
    Another learner's token is refused with 403 `not_a_participant`, counted on the task."""
    token = bearer(authorization)
    if token and hmac.compare_digest(token.encode(), service.admin_token.encode()):
        return None
    me = learner(service, authorization)
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
