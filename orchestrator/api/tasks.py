"""Task routes: submit, list, show, cancel, rounds, and the files learners download."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.responses import Response

from orchestrator.api.deps import (
    MAX_ID,
    AdminDep,
    Id,
    Index,
    LearnerDep,
    ServiceDep,
    TaskReaderDep,
)
from orchestrator.api.errors import answers
from orchestrator.errors import BadInput, Forbidden, NotFound
from orchestrator.runs.jobs import JOB_ONLY
from orchestrator.runs.journal import note
from orchestrator.store import RoundRow, TaskRow, event_view, read_events

router = APIRouter(tags=["tasks"])

# A file download: declared as bytes, not JSON.
BINARY: dict[int | str, dict[str, Any]] = {200: {"description": "the file", "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def task_view(t: TaskRow) -> dict[str, Any]:
    """A task as the API shows it."""
    sync = (t.spec or {}).get("sync") or {}
    asynchronous = (t.spec or {}).get("async") or {}
    return {"id": t.id, "name": t.name, "mode": (t.spec or {}).get("mode", "sync"),
            "state": t.state, "reason": t.reason,
            "created_at": t.created_at, "started_at": t.started_at,
            "finished_at": t.finished_at, "rounds_done": t.rounds_done,
            # Async tasks have no fixed number of rounds (one row per aggregation).
            "rounds": sync.get("rounds") or ((t.spec or {}).get("split") or {}).get("rounds"),
            "allocator": sync.get("allocator") or asynchronous.get("aggregator"),
            "model_version": t.model_version, "num_shards": t.num_shards, "spec": t.spec}


def round_view(r: RoundRow) -> dict[str, Any]:
    """A finished round as the API shows it."""
    return {"index": r.index, "started_at": r.started_at, "allocation": r.allocation,
            "shards": r.shards, "samples": r.samples, "left_out": r.left_out,
            "plan_s": r.plan_s, "round_time_s": r.round_time_s, "truancy": r.truancy,
            "loss": r.loss, "accuracy": r.accuracy, "model_version": r.model_version,
            "times": r.times or {}}


def parse_task(spec: dict[str, Any]) -> Any:
    """The parsed spec of a single task; BadInput naming the field if it cannot run here."""
    from orchestrator.aggregation import AGGREGATORS
    from orchestrator.allocation import allocator_names
    from plexus.errors import SpecError
    from plexus.spec import parse_spec

    try:
        parsed = parse_spec(spec)
    except SpecError as exc:
        raise BadInput(str(exc), code="invalid_spec") from None
    if parsed.async_ is not None:
        if parsed.async_.aggregator not in AGGREGATORS:
            raise BadInput(f"async.aggregator: {parsed.async_.aggregator!r} is not "
                           f"available here (available: {', '.join(sorted(AGGREGATORS))})",
                           code="invalid_spec")
    elif parsed.sync is not None and parsed.sync.allocator in JOB_ONLY:
        raise BadInput(f"sync.allocator: {parsed.sync.allocator!r} allocates several tasks "
                       "together: submit them as a job (POST /v1/jobs, or "
                       f"`plexus task submit A.yaml B.yaml --allocator "
                       f"{parsed.sync.allocator}`)", code="invalid_spec")
    elif parsed.sync is not None and parsed.sync.allocator not in allocator_names():
        raise BadInput(f"sync.allocator: {parsed.sync.allocator!r} is not available here "
                       f"(available: {', '.join(allocator_names())})", code="invalid_spec")
    return parsed


@router.post("/v1/tasks", status_code=201, dependencies=[AdminDep],
             responses=answers(401, 409, 413, 422))
async def submit(spec: Annotated[dict[str, Any], Body()], service: ServiceDep
                 ) -> dict[str, Any]:
    """Create a task completely (or not at all) and start it."""
    from orchestrator.runs.taskdata import prepare_task, resolve_spec

    parsed = parse_task(spec)
    service.require_leader()  # 409 standby: this instance would not run it
    # The model is checked against the real data (and its shape and classes recorded in the
    # spec) before the task exists: a mismatch is a 422 that leaves nothing behind.
    settings = service.settings
    parsed, data = await asyncio.to_thread(resolve_spec, parsed, settings.datasets_dir,
                                           settings.max_data_bytes)
    if parsed.split is not None:
        from orchestrator.runs.split import check_split

        await asyncio.to_thread(check_split, parsed)
    layout = service.store.layout
    row = await asyncio.to_thread(
        service.store.create_task, parsed.to_dict(),
        lambda task_id, _dir: prepare_task(parsed, task_id, layout, data), time.time())
    if parsed.async_ is not None:
        service.asynchronous.launch(row)
        row = service.store.task(row.id)
    elif parsed.split is not None:
        service.split.launch(row.id)
    else:
        service.sync.launch(row.id)
    return task_view(row)


@router.get("/v1/tasks", dependencies=[AdminDep], responses=answers(401))
def list_tasks(service: ServiceDep) -> dict[str, Any]:
    """Every task."""
    return {"tasks": [task_view(t) for t in service.store.tasks()]}


@router.get("/v1/tasks/{task_id}", dependencies=[AdminDep], responses=answers(401, 404, 422))
def show_task(task_id: Id, service: ServiceDep) -> dict[str, Any]:
    """One task; `skipped` names the alive learners that cannot take part in it (cannot
    build its model, or lack the memory to train it) and why; `refused` counts the learner
    requests it refused, per error code; `evaluation` says which test set the round accuracy
    is and holds the per-device evaluations of device data."""
    from orchestrator.runs.taskdata import evaluation_view

    task = service.store.task(task_id)
    return {**task_view(task), "skipped": skipped_learners(task, service),
            "refused": service.store.refusals(task_id),
            "evaluation": evaluation_view(service.store.layout, task.spec or {}, task_id)}


def skipped_learners(task: TaskRow, service: Any) -> dict[str, str]:
    """Learner name → why it is not given this task (sync or async), among the alive ones."""
    from orchestrator.runs.eligibility import skipped
    from plexus.errors import PlexusError
    from plexus.spec import load_spec

    now, after = time.time(), service.settings.alive_after_s
    alive = [lr for lr in service.store.learners() if lr.last_seen >= now - after]
    try:
        why = skipped(load_spec(task.spec), alive)
    except PlexusError:
        return {}
    names = {str(lr.id): lr.name for lr in alive}
    return {names[k]: v.removeprefix("skipped: ") for k, v in why.items()}


@router.post("/v1/tasks/{task_id}/cancel", dependencies=[AdminDep],
             responses=answers(401, 404, 409, 422))
async def cancel_task(task_id: Id, service: ServiceDep) -> dict[str, Any]:
    """Cancel a pending or running task."""
    row = service.store.set_state(task_id, "cancelled", "cancelled by the user", time.time())
    note(service.store, task_id, "state", "cancelled by the user")
    await service.sync.cancel(task_id)
    await service.asynchronous.cancel(task_id)
    await service.split.cancel(task_id)
    return task_view(row)


@router.get("/v1/tasks/{task_id}/rounds", dependencies=[AdminDep],
            responses=answers(401, 404, 422))
def task_rounds(task_id: Id, service: ServiceDep) -> dict[str, Any]:
    """A task's finished rounds."""
    return {"task_id": task_id,
            "rounds": [round_view(r) for r in service.store.rounds(task_id)]}


@router.get("/v1/tasks/{task_id}/events", dependencies=[AdminDep],
            responses=answers(401, 404, 422))
def task_events(task_id: Id, service: ServiceDep,
                after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
                limit: Annotated[int, Query(ge=1, le=1000)] = 500) -> dict[str, Any]:
    """A task's events (round started/closed, learner left out and why, aggregation, refused
    request, state change), oldest first, those with an id above `after`; `next` is the
    cursor to pass as `after` for what comes later. Each task keeps its newest 2000."""
    service.store.task(task_id)  # 404 for an unknown task
    rows = read_events(service.store, task_id, after, limit)
    return {"task_id": task_id, "events": [event_view(e) for e in rows],
            "next": rows[-1].id if rows else after}


@router.get("/v1/tasks/{task_id}/model", response_class=Response,
            responses={**BINARY, **answers(401, 403, 404, 422)})
def task_model(task_id: Id, reader: TaskReaderDep, service: ServiceDep,
               version: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None) -> Response:
    """Model version `version` of the task (safetensors), for the admin or a participant;
    the current one when not given. Every version a round wrote is kept."""
    reader.require(task_id)
    task = service.store.task(task_id)
    want = task.model_version if version is None else version
    path = service.store.layout.model(task_id, want)
    if want > task.model_version or not path.exists():
        raise NotFound(f"model version {want} of task {task_id} does not exist (versions "
                       f"0..{task.model_version})", code="model_not_found")
    data = path.read_bytes()
    service.metrics.bytes_served.labels(kind="model").inc(len(data))
    return Response(data, media_type="application/octet-stream",
                    headers={"X-Model-Version": str(want)})


@router.get("/v1/tasks/{task_id}/shards/{n}", response_class=Response,
            responses={**BINARY, **answers(401, 403, 404, 422)})
def task_shard(task_id: Id, n: Index, reader: TaskReaderDep, service: ServiceDep) -> Response:
    """Shard `n` of a task, for the admin or a learner that takes part in the task."""
    reader.require(task_id)
    task = service.store.task(task_id)
    if (task.spec or {}).get("dataset", {}).get("device"):
        raise NotFound(f"task {task_id} trains on device data: it has no shards",
                       code="device_data")
    if not 0 <= n < task.num_shards:
        raise NotFound(f"shard {n} not found for task {task_id} (task has "
                       f"{task.num_shards} shards, 0..{task.num_shards - 1})",
                       code="shard_not_found")
    data = service.store.layout.shard(task_id, n).read_bytes()
    service.metrics.bytes_served.labels(kind="shard").inc(len(data))
    return Response(data, media_type="application/octet-stream")


@router.get("/v1/tasks/{task_id}/partitions/{client}", tags=["asynchronous tasks"],
            response_class=Response, responses={**BINARY, **answers(401, 403, 404, 422)})
def task_partition(task_id: Id, client: Index, me: LearnerDep, service: ServiceDep
                   ) -> Response:
    """Partition `client` of a running async task, for the learner that is that client."""
    from orchestrator.runs.taskdata import client_shard

    given = service.asynchronous.client_of(task_id, me.id)
    if given is None:
        raise NotFound(f"learner {me.name} is not a client of running asynchronous task "
                       f"{task_id}; wait for the orchestrator's join_async call",
                       code="not_a_client")
    if given != client:
        service.asynchronous.refused(task_id, "not_your_partition")
        raise Forbidden(f"learner {me.name} is client {given} of task {task_id}, not "
                        f"{client}: download partition {given}", code="not_your_partition")
    task = service.store.task(task_id)
    data = service.store.layout.shard(task_id, client_shard(task.num_shards, client)).read_bytes()
    service.metrics.bytes_served.labels(kind="partition").inc(len(data))
    return Response(data, media_type="application/octet-stream")
