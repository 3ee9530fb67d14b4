"""`GET /healthz` and `GET /metrics` (Prometheus text format)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from orchestrator.api.deps import ServiceDep

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz(service: ServiceDep) -> dict[str, Any]:
    """Whether the service answers, how many tasks run, whether this instance drives them
    (holds the driver lease; false on a standby instance of the same database) and whether
    it is shutting down."""
    return {"ok": True, "tasks_running": len(service.store.tasks(("running",))),
            "driving": service.leader, "stopping": service.stopping}


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text format",
    "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(service: ServiceDep) -> Response:
    """The Prometheus metrics of this orchestrator."""
    return Response(service.metrics.render(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")
