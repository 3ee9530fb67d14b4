"""While the orchestrator shuts down, new requests get 503 `shutting_down` with Retry-After.

The middleware is served by a real uvicorn on loopback in front of a small app; the flag it
reads is `Service.stopping`, which `plexus orchestrator serve` sets on SIGTERM (the process
side is `test_orchestrator_restarts.py`, extended tier).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator.api.stopping import RETRY_AFTER_S, RefuseWhileStopping
from orchestrator.local.fleet import free_port


@pytest.fixture
def served() -> Iterator[tuple[str, SimpleNamespace, list[str]]]:
    service = SimpleNamespace(stopping=False)
    reached: list[str] = []

    async def route(request: object) -> JSONResponse:
        reached.append(request.url.path)  # type: ignore[attr-defined]
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/healthz", route), Route("/v1/learners/1/heartbeat", route,
                                                               methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(RefuseWhileStopping(app, service), port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < end, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", service, reached
    finally:
        server.should_exit = True
        thread.join(10)


def test_requests_are_refused_with_retry_after_once_stopping(
        served: tuple[str, SimpleNamespace, list[str]]) -> None:
    url, service, reached = served
    with httpx.Client(base_url=url) as client:
        assert client.post("/v1/learners/1/heartbeat").status_code == 200
        service.stopping = True
        r = client.post("/v1/learners/1/heartbeat")
        assert r.status_code == 503
        assert r.json()["error"] == "shutting_down" and "retry" in r.json()["detail"]
        assert r.headers["Retry-After"] == str(RETRY_AFTER_S)
        assert client.get("/healthz").status_code == 200  # a supervisor can still look
    assert reached == ["/v1/learners/1/heartbeat", "/healthz"]  # the refused one never ran
