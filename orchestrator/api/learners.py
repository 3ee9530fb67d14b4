"""Learner routes: enroll, heartbeat, list, remove."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.deps import AdminDep, Id, LearnerDep, ServiceDep, same_secret
from orchestrator.api.errors import answers
from orchestrator.errors import Forbidden, Unauthorized
from orchestrator.store import LearnerRow

router = APIRouter(tags=["learners"])


class EnrollRequest(BaseModel):
    """POST /v1/learners/enroll."""

    model_config = ConfigDict(extra="forbid")
    join_token: str
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    facts: dict[str, Any] = Field(default_factory=dict)
    endpoint: str | None = Field(None, max_length=512, pattern=r"^https?://")
    # The learner's own secret (its current token): needed to re-enroll an existing name.
    secret: str | None = Field(None, max_length=256)


class HeartbeatRequest(BaseModel):
    """POST /v1/learners/{id}/heartbeat (the body is optional)."""

    model_config = ConfigDict(extra="forbid")
    facts: dict[str, Any] | None = None


def learner_view(lr: LearnerRow, now: float, alive_after_s: float) -> dict[str, Any]:
    """A learner as the API shows it (never its token)."""
    return {"id": lr.id, "name": lr.name, "endpoint": lr.endpoint, "facts": lr.facts,
            "enrolled_at": lr.enrolled_at, "last_seen": lr.last_seen,
            "alive": lr.last_seen >= now - alive_after_s,
            "via": "direct" if lr.endpoint else "relay"}


@router.post("/v1/learners/enroll", status_code=201, responses=answers(401, 413, 422))
def enroll(body: EnrollRequest, service: ServiceDep) -> dict[str, Any]:
    """Enroll a learner with the join token; answer its own token.

    Re-enrolling an existing name also needs that learner's secret (its current token, kept
    by the agent in its data directory): else 409 `name_taken`, and the learner is untouched.
    """
    if not same_secret(body.join_token, service.join_token):
        raise Unauthorized("join_token is wrong: use the token the orchestrator printed "
                           "at start (or <data dir>/join_token)")
    row = service.store.enroll(body.name, body.facts, body.endpoint, time.time(), body.secret)
    return {"learner_id": row.id, "name": row.name, "token": row.token,
            "relay_url": service.relay_url,
            "heartbeat_interval_s": service.settings.heartbeat_interval_s}


@router.post("/v1/learners/{learner_id}/heartbeat",
             responses=answers(401, 403, 404, 413, 422))
def heartbeat(learner_id: Id, me: LearnerDep, service: ServiceDep,
              body: Annotated[HeartbeatRequest | None, Body()] = None) -> dict[str, Any]:
    """A learner says it is alive (and perhaps sends new facts)."""
    if me.id != learner_id:
        raise Forbidden(f"this token belongs to learner {me.id}, not {learner_id}")
    service.store.heartbeat(learner_id, body.facts if body else None, time.time())
    return {"ok": True}


@router.get("/v1/learners", dependencies=[AdminDep], responses=answers(401))
def list_learners(service: ServiceDep) -> dict[str, Any]:
    """Every enrolled learner and whether it is alive."""
    now = time.time()
    after = service.settings.alive_after_s
    return {"learners": [learner_view(lr, now, after) for lr in service.store.learners()]}


# `:int`: the literal /v1/learners/enroll is not a learner id; DELETE there is a 405 with
# `Allow: POST`, not this route's 422.
@router.delete("/v1/learners/{learner_id:int}", dependencies=[AdminDep],
               responses=answers(401, 404, 422))
def remove_learner(learner_id: Id, service: ServiceDep) -> dict[str, Any]:
    """Remove (revoke) a learner: its token stops working at once, its name is free again."""
    row = service.store.remove_learner(learner_id)
    return {"removed": True, "id": row.id, "name": row.name}
