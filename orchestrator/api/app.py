"""The FastAPI app: REST under /v1, metrics, health, duplex callbacks and the agent relay.

Every error answers JSON `{"error": code, "detail": text}` (`orchestrator.api.errors`); bad
input gets a 4xx that names the field, and a task is created completely or not at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline

from orchestrator.api import errors, health, jobs, learners, split, tasks, ui
from orchestrator.api.asynchronous import make_async_router
from orchestrator.api.deps import learner
from orchestrator.api.finite import FiniteJSON
from orchestrator.api.stopping import RefuseWhileStopping
from orchestrator.service import Service, Settings


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document plus the task-spec schema that POST /v1/tasks refers to."""
    if app.openapi_schema is None:
        from plexus.spec import TaskSpec

        doc = get_openapi(title=app.title, version=app.version, description=app.description,
                          routes=app.routes)
        spec = TaskSpec.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(spec.pop("$defs", {}))
        schemas["TaskSpec"] = spec
        # The route takes the spec as a plain object and parses it itself, so that a bad one
        # answers `422 invalid_spec` naming the field; the document shows the real schema.
        doc["paths"]["/v1/tasks"]["post"]["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/TaskSpec"}}}}
        app.openapi_schema = doc
    return app.openapi_schema


def create_app(settings: Settings) -> FastAPI:
    """Build the orchestrator app; its lifespan resumes every running task."""
    # torch is needed for every task (shards, models, evaluation); importing it now keeps a
    # multi-second import out of the first task submission.
    import torch  # noqa: F401

    service = Service(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await service.stop()

    # /docs and /redoc load Swagger UI and ReDoc from files of the fastapi-offline package,
    # never from a CDN: a fleet's LAN is often offline.
    app = FastAPIOffline(title="Plexus orchestrator", version="0.1.0", lifespan=lifespan,
                         description="Deadline-aware training on fleets of edge devices.")
    app.state.service = service
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(FiniteJSON)
    app.add_middleware(RefuseWhileStopping, service=service)
    errors.install(app)
    for router in (health.router, learners.router, tasks.router, jobs.router, split.router,
                   ui.router):
        app.include_router(router)
    # Asynchronous mode: pull / updates / status of running async tasks.
    app.include_router(make_async_router(service.asynchronous.runners, learner,
                                         service.asynchronous.admit_pull),
                       tags=["asynchronous tasks"])
    # RPC plumbing: duplex results come back here; NAT'ed agents poll the relay.
    app.mount("/rpc-callbacks", service.receiver.app)
    app.mount("/relay", service.relay.app)
    return app
