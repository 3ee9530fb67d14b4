"""The FastAPI app: REST under /v1, metrics, health, duplex callbacks and the agent relay.

Every error answers JSON `{"error": code, "detail": text}`; bad input gets a 4xx that names
the field, and a task is created completely or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.errors import (
    BadInput,
    Conflict,
    Forbidden,
    NotFound,
    OrchestratorError,
    Unauthorized,
)
from orchestrator.multitask import JOB_ONLY, JobRequest
from orchestrator.service import Service, Settings
from orchestrator.store import LearnerRow, RoundRow, TaskRow


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrollRequest(_Strict):
    join_token: str
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    facts: dict[str, Any] = Field(default_factory=dict)
    endpoint: str | None = Field(None, max_length=512, pattern=r"^https?://")


class HeartbeatRequest(_Strict):
    facts: dict[str, Any] | None = None


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return None


def task_view(t: TaskRow) -> dict[str, Any]:
    """A task as the API shows it."""
    sync = (t.spec or {}).get("sync") or {}
    asynchronous = (t.spec or {}).get("async") or {}
    return {"id": t.id, "name": t.name, "mode": (t.spec or {}).get("mode", "sync"),
            "state": t.state, "reason": t.reason,
            "created_at": t.created_at, "started_at": t.started_at,
            "finished_at": t.finished_at, "rounds_done": t.rounds_done,
            # Async tasks have no fixed number of rounds (one row per aggregation).
            "rounds": sync.get("rounds"),
            "allocator": sync.get("allocator") or asynchronous.get("aggregator"),
            "model_version": t.model_version, "num_shards": t.num_shards, "spec": t.spec}


def round_view(r: RoundRow) -> dict[str, Any]:
    """A finished round as the API shows it."""
    return {"index": r.index, "started_at": r.started_at, "allocation": r.allocation,
            "shards": r.shards, "samples": r.samples, "left_out": r.left_out,
            "plan_s": r.plan_s, "round_time_s": r.round_time_s, "truancy": r.truancy,
            "loss": r.loss, "accuracy": r.accuracy, "model_version": r.model_version}


def create_app(settings: Settings) -> FastAPI:
    """Build the orchestrator app; its lifespan resumes every running task."""
    # torch is needed for every task (shards, models, evaluation); importing it now keeps a
    # multi-second import out of the first task submission.
    import torch  # noqa: F401

    service = Service(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.async_tasks.fail_leftovers()
        service.jobs.fail_leftovers()
        service.driver.resume_all()
        try:
            yield
        finally:
            await service.jobs.stop()
            await service.async_tasks.stop()
            await service.driver.stop()
            service.store.close()

    app = FastAPI(title="Plexus orchestrator", version="0.1.0", lifespan=lifespan,
                  description="Deadline-aware training on fleets of edge devices.")
    app.state.service = service

    # -- errors ---------------------------------------------------------------------------

    @app.exception_handler(OrchestratorError)
    async def _own(_r: Request, exc: OrchestratorError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{loc}: {err.get('msg')}")
        return JSONResponse({"error": "invalid_request", "detail": "; ".join(parts)},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "detail": str(exc.detail)},
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(_r: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal", "detail": f"{type(exc).__name__}: {exc}"},
                            status_code=500)

    # -- auth -----------------------------------------------------------------------------

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        token = _bearer(authorization)
        if token is None or not hmac.compare_digest(token, service.admin_token):
            raise Unauthorized("this call needs the admin token: send 'Authorization: Bearer "
                               "<admin token>' (see <data dir>/admin_token)")

    def learner(authorization: Annotated[str | None, Header()] = None) -> LearnerRow:
        token = _bearer(authorization)
        row = service.store.learner_by_token(token) if token else None
        if row is None:
            raise Unauthorized("this call needs a learner token: enroll with POST "
                               "/v1/learners/enroll and send 'Authorization: Bearer <token>'")
        return row

    def learner_or_admin(authorization: Annotated[str | None, Header()] = None) -> None:
        token = _bearer(authorization)
        if token and hmac.compare_digest(token, service.admin_token):
            return
        learner(authorization)

    Admin = Depends(admin)

    # -- health and metrics ---------------------------------------------------------------

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        return {"ok": True, "tasks_running": len(service.store.tasks(("running",)))}

    @app.get("/metrics", tags=["service"])
    def metrics() -> Response:
        return Response(service.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- learners -------------------------------------------------------------------------

    @app.post("/v1/learners/enroll", status_code=201, tags=["learners"])
    def enroll(body: EnrollRequest) -> dict[str, Any]:
        if not hmac.compare_digest(body.join_token, service.join_token):
            raise Unauthorized("join_token is wrong: use the token the orchestrator printed "
                               "at start (or <data dir>/join_token)")
        row = service.store.enroll(body.name, body.facts, body.endpoint, time.time())
        return {"learner_id": row.id, "name": row.name, "token": row.token,
                "relay_url": service.relay_url,
                "heartbeat_interval_s": settings.heartbeat_interval_s}

    @app.post("/v1/learners/{learner_id}/heartbeat", tags=["learners"])
    def heartbeat(learner_id: int, body: Annotated[HeartbeatRequest | None, Body()] = None,
                  # A default, not Annotated: a closure's name cannot be resolved from a
                  # postponed annotation.
                  me: LearnerRow = Depends(learner)) -> dict[str, Any]:  # noqa: B008
        if me.id != learner_id:
            raise Forbidden(f"this token belongs to learner {me.id}, not {learner_id}")
        service.store.heartbeat(learner_id, body.facts if body else None, time.time())
        return {"ok": True}

    @app.get("/v1/learners", tags=["learners"], dependencies=[Admin])
    def list_learners() -> dict[str, Any]:
        now = time.time()
        return {"learners": [service.learner_view(lr, now) for lr in service.store.learners()]}

    # -- tasks ----------------------------------------------------------------------------

    @app.post("/v1/tasks", status_code=201, tags=["tasks"], dependencies=[Admin])
    async def submit(spec: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        from orchestrator.allocation import allocator_names
        from orchestrator.taskdata import prepare_task
        from plexus.errors import SpecError
        from plexus.spec import parse_spec

        try:
            parsed = parse_spec(spec)
        except SpecError as exc:
            raise BadInput(str(exc), code="invalid_spec") from None
        if parsed.async_ is not None:
            from orchestrator.aggregation import AGGREGATORS

            if parsed.async_.aggregator not in AGGREGATORS:
                raise BadInput(f"async.aggregator: {parsed.async_.aggregator!r} is not "
                               f"available here (available: {', '.join(sorted(AGGREGATORS))})",
                               code="invalid_spec")
        elif parsed.sync is not None and parsed.sync.allocator in JOB_ONLY:
            raise BadInput(f"sync.allocator: {parsed.sync.allocator!r} allocates several tasks "
                           "together: submit them as a multi-task job (POST /v1/jobs, or "
                           f"`plexus task submit A.yaml B.yaml --allocator "
                           f"{parsed.sync.allocator}`)", code="invalid_spec")
        elif parsed.sync is not None and parsed.sync.allocator not in allocator_names():
            raise BadInput(f"sync.allocator: {parsed.sync.allocator!r} is not available here "
                           f"(available: {', '.join(allocator_names())})", code="invalid_spec")
        canonical = parsed.to_dict()
        layout = service.store.layout
        row = await asyncio.to_thread(
            service.store.create_task, canonical,
            lambda task_id, _dir: prepare_task(parsed, task_id, layout), time.time())
        if parsed.async_ is not None:
            service.async_tasks.launch(row)
            row = service.store.task(row.id)
        else:
            service.driver.launch(row.id)
        return task_view(row)

    @app.get("/v1/tasks", tags=["tasks"], dependencies=[Admin])
    def list_tasks() -> dict[str, Any]:
        return {"tasks": [task_view(t) for t in service.store.tasks()]}

    @app.get("/v1/tasks/{task_id}", tags=["tasks"], dependencies=[Admin])
    def show_task(task_id: int) -> dict[str, Any]:
        return task_view(service.store.task(task_id))

    @app.post("/v1/tasks/{task_id}/cancel", tags=["tasks"], dependencies=[Admin])
    async def cancel_task(task_id: int) -> dict[str, Any]:
        row = service.store.set_state(task_id, "cancelled", "cancelled by the user",
                                      time.time())
        await service.driver.cancel(task_id)
        await service.async_tasks.cancel(task_id)
        return task_view(row)

    @app.get("/v1/tasks/{task_id}/rounds", tags=["tasks"], dependencies=[Admin])
    def task_rounds(task_id: int) -> dict[str, Any]:
        return {"task_id": task_id,
                "rounds": [round_view(r) for r in service.store.rounds(task_id)]}

    @app.get("/v1/tasks/{task_id}/model", tags=["tasks"],
             dependencies=[Depends(learner_or_admin)])
    def task_model(task_id: int) -> Response:
        task = service.store.task(task_id)
        path = service.store.layout.model(task_id, task.model_version)
        if not path.exists():
            raise NotFound(f"model version {task.model_version} of task {task_id} is missing "
                           "from the data directory", code="model_not_found")
        data = path.read_bytes()
        service.metrics.bytes_served.labels(kind="model").inc(len(data))
        return Response(data, media_type="application/octet-stream",
                        headers={"X-Model-Version": str(task.model_version)})

    @app.get("/v1/tasks/{task_id}/shards/{n}", tags=["tasks"],
             dependencies=[Depends(learner)])
    def task_shard(task_id: int, n: int) -> Response:
        task = service.store.task(task_id)
        if not 0 <= n < task.num_shards:
            raise NotFound(f"shard {n} not found for task {task_id} (task has "
                           f"{task.num_shards} shards, 0..{task.num_shards - 1})",
                           code="shard_not_found")
        data = service.store.layout.shard(task_id, n).read_bytes()
        service.metrics.bytes_served.labels(kind="shard").inc(len(data))
        return Response(data, media_type="application/octet-stream")

    @app.get("/v1/tasks/{task_id}/partitions/{client}", tags=["asynchronous tasks"])
    def task_partition(task_id: int, client: int,
                       me: LearnerRow = Depends(learner)) -> Response:  # noqa: B008
        from orchestrator.taskdata import client_shard

        given = service.async_tasks.client_of(task_id, me.id)
        if given is None:
            raise NotFound(f"learner {me.name} is not a client of running asynchronous task "
                           f"{task_id}; wait for the orchestrator's join_async call",
                           code="not_a_client")
        if given != client:
            raise Forbidden(f"learner {me.name} is client {given} of task {task_id}, not "
                            f"{client}: download partition {given}")
        task = service.store.task(task_id)
        data = service.store.layout.shard(task_id,
                                          client_shard(task.num_shards, client)).read_bytes()
        service.metrics.bytes_served.labels(kind="partition").inc(len(data))
        return Response(data, media_type="application/octet-stream")

    # -- multi-task jobs (thesis ch. 4): several sync tasks under MED / MMTT / equal --------
    def _job_view(job_id: int) -> dict[str, Any]:
        from orchestrator.multitask import job_view

        job = service.store.job(job_id)
        return job_view(job, service.store.job_rounds(job_id),
                        [service.store.task(t) for t in job.task_ids])

    @app.post("/v1/jobs", status_code=201, tags=["jobs"], dependencies=[Admin])
    async def submit_job(body: JobRequest) -> dict[str, Any]:
        from orchestrator.multitask import validate_job
        from orchestrator.taskdata import prepare_task

        options, specs = validate_job(body)
        layout = service.store.layout
        by_name = {s.name: s for s in specs}
        job = await asyncio.to_thread(
            service.store.create_job, body.name, options, [s.to_dict() for s in specs],
            lambda task_id, spec, _dir: prepare_task(by_name[spec["name"]], task_id, layout),
            time.time())
        service.jobs.launch(job.id)
        return _job_view(job.id)

    @app.get("/v1/jobs", tags=["jobs"], dependencies=[Admin])
    def list_jobs() -> dict[str, Any]:
        return {"jobs": [{"id": j.id, "name": j.name, "state": j.state, "reason": j.reason,
                          "allocator": j.options.get("allocator"), "task_ids": j.task_ids,
                          "rounds_done": j.rounds_done} for j in service.store.jobs()]}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], dependencies=[Admin])
    def show_job(job_id: int) -> dict[str, Any]:
        return _job_view(job_id)

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"], dependencies=[Admin])
    async def cancel_job(job_id: int) -> dict[str, Any]:
        job = service.store.set_job_state(job_id, "cancelled", "cancelled by the user",
                                          time.time())
        await service.jobs.cancel(job_id)
        for task_id in job.task_ids:
            with contextlib.suppress(Conflict):
                service.store.set_state(task_id, "cancelled", "its job was cancelled",
                                        time.time())
        return _job_view(job_id)

    # -- asynchronous mode: pull / updates / status of running async tasks ------------------
    from orchestrator.api_async import make_async_router

    app.include_router(make_async_router(service.async_tasks.runners, learner),
                       tags=["asynchronous tasks"])

    # -- RPC plumbing: duplex results come back here; NAT'ed agents poll the relay ---------
    app.mount("/rpc-callbacks", service.receiver.app)
    app.mount("/relay", service.relay.app)
    return app
