"""Job routes: several sync tasks allocated together by MED / MMTT / equal split (thesis ch. 4)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from fastapi import APIRouter

from orchestrator.api.deps import AdminDep, Id, ServiceDep
from orchestrator.api.errors import answers
from orchestrator.errors import Conflict
from orchestrator.runs.jobs import JobRequest, job_view
from orchestrator.service import Service

router = APIRouter(tags=["jobs"], dependencies=[AdminDep], responses=answers(401))


def _job_view(service: Service, job_id: int) -> dict[str, Any]:
    job = service.store.job(job_id)
    return job_view(job, service.store.job_rounds(job_id),
                    [service.store.task(t) for t in job.task_ids])


@router.post("/v1/jobs", status_code=201, responses=answers(409, 413, 422))
async def submit_job(body: JobRequest, service: ServiceDep) -> dict[str, Any]:
    """Create a job and its tasks completely (or not at all) and start it."""
    from orchestrator.runs.jobs import validate_job
    from orchestrator.runs.taskdata import prepare_task, resolve_spec

    options, specs = validate_job(body)
    service.require_leader()  # 409 standby: this instance would not run it
    layout = service.store.layout
    # Each model checked against its data, the data's shape recorded in its spec (422 if not).
    settings = service.settings
    resolved = [await asyncio.to_thread(resolve_spec, s, settings.datasets_dir,
                                        settings.max_data_bytes, in_job=True) for s in specs]
    by_name = {s.name: (s, data) for s, data in resolved}

    def prepare(task_id: int, spec: dict[str, Any], _dir: Any) -> dict[str, int]:
        parsed, data = by_name[spec["name"]]
        return prepare_task(parsed, task_id, layout, data)

    job = await asyncio.to_thread(
        service.store.create_job, body.name, options, [s.to_dict() for s, _ in resolved],
        prepare, time.time())
    service.jobs.launch(job.id)
    return _job_view(service, job.id)


@router.get("/v1/jobs")
def list_jobs(service: ServiceDep) -> dict[str, Any]:
    """Every job."""
    return {"jobs": [{"id": j.id, "name": j.name, "state": j.state, "reason": j.reason,
                      "allocator": j.options.get("allocator"), "task_ids": j.task_ids,
                      "rounds_done": j.rounds_done} for j in service.store.jobs()]}


@router.get("/v1/jobs/{job_id}", responses=answers(404, 422))
def show_job(job_id: Id, service: ServiceDep) -> dict[str, Any]:
    """One job with its tasks, per-round records and thesis 4.3 metrics."""
    return _job_view(service, job_id)


@router.post("/v1/jobs/{job_id}/cancel", responses=answers(404, 409, 422))
async def cancel_job(job_id: Id, service: ServiceDep) -> dict[str, Any]:
    """Cancel a running job and its tasks."""
    job = service.store.set_job_state(job_id, "cancelled", "cancelled by the user", time.time())
    await service.jobs.cancel(job_id)
    for task_id in job.task_ids:
        with contextlib.suppress(Conflict):
            service.store.set_state(task_id, "cancelled", "its job was cancelled", time.time())
    return _job_view(service, job_id)
