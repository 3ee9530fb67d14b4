"""The FastAPI app: REST under /v1, metrics, health, duplex callbacks and the agent relay.

Every error answers JSON `{"error": code, "detail": text}` (`orchestrator.api.errors`); bad
input gets a 4xx that names the field, and a task is created completely or not at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from orchestrator.api import errors, health, jobs, learners, tasks, ui
from orchestrator.api.asynchronous import make_async_router
from orchestrator.api.deps import learner
from orchestrator.service import Service, Settings


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

    app = FastAPI(title="Plexus orchestrator", version="0.1.0", lifespan=lifespan,
                  description="Deadline-aware training on fleets of edge devices.")
    app.state.service = service
    errors.install(app)
    for router in (health.router, learners.router, tasks.router, jobs.router, ui.router):
        app.include_router(router)
    # Asynchronous mode: pull / updates / status of running async tasks.
    app.include_router(make_async_router(service.asynchronous.runners, learner),
                       tags=["asynchronous tasks"])
    # RPC plumbing: duplex results come back here; NAT'ed agents poll the relay.
    app.mount("/rpc-callbacks", service.receiver.app)
    app.mount("/relay", service.relay.app)
    return app
