"""While the orchestrator shuts down, answer every new request 503 `shutting_down`.

From the SIGTERM on (`Service.stopping`), the service takes no new work: a task submission, an
update, an agent's heartbeat or relay poll gets `503 {"error": "shutting_down"}` with
`Retry-After`, which tells agents to come back later (they retry with their backoff and are
not forgotten: learners are never removed for being away). `GET /healthz` still answers, with
`"stopping": true`, so a supervisor can watch the shutdown.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

RETRY_AFTER_S = 5


class RefuseWhileStopping:
    """ASGI middleware: 503 `shutting_down` for every HTTP request but /healthz once
    `service.stopping` is true."""

    def __init__(self, app: ASGIApp, service: Any) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and getattr(self.service, "stopping", False)
                and scope.get("path") != "/healthz"):
            answer = JSONResponse(
                {"error": "shutting_down",
                 "detail": "the orchestrator is shutting down; retry in a few seconds (a "
                           "restart resumes its tasks and jobs from their last round)"},
                status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)
