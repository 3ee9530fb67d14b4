"""Job routes: several sync tasks allocated together by MED / MMTT / equal split (thesis ch. 4)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from fastapi import APIRouter

from orchestrator.api.deps import AdminDep, ServiceDep
from orchestrator.errors import Conflict
from orchestrator.runs.jobs import JobRequest, job_view
from orchestrator.service import Service

router = APIRouter(tags=["jobs"], dependencies=[AdminDep])


def _job_view(service: Service, job_id: int) -> dict[str, Any]:
    job = service.store.job(job_id)
    return job_view(job, service.store.job_rounds(job_id),
                    [service.store.task(t) for t in job.task_ids])


@router.post("/v1/jobs", status_code=201)
async def submit_job(body: JobRequest, service: ServiceDep) -> dict[str, Any]:
    """Create a job and its tasks completely (or not at all) and start it."""
    from orchestrator.runs.jobs import validate_job
    from orchestrator.runs.taskdata import load_task_data, prepare_task

    options, specs = validate_job(body)
    layout = service.store.layout
    settings = service.settings
    loaded = [await asyncio.to_thread(load_task_data, s, settings.datasets_dir,
                                      settings.max_data_bytes, in_job=True) for s in specs]
    specs = [s for s, _ in loaded]
    datas = {s.name: d for s, d in loaded}
    by_name = {s.name: s for s in specs}
    job = await asyncio.to_thread(
        service.store.create_job, body.name, options, [s.to_dict() for s in specs],
        lambda task_id, spec, _dir: prepare_task(by_name[spec["name"]], task_id, layout,
                                                 datas[spec["name"]]),
        time.time())
    service.jobs.launch(job.id)
    return _job_view(service, job.id)


@router.get("/v1/jobs")
def list_jobs(service: ServiceDep) -> dict[str, Any]:
    """Every job."""
    return {"jobs": [{"id": j.id, "name": j.name, "state": j.state, "reason": j.reason,
                      "allocator": j.options.get("allocator"), "task_ids": j.task_ids,
                      "rounds_done": j.rounds_done} for j in service.store.jobs()]}


@router.get("/v1/jobs/{job_id}")
def show_job(job_id: int, service: ServiceDep) -> dict[str, Any]:
    """One job with its tasks, per-round records and thesis 4.3 metrics."""
    return _job_view(service, job_id)


@router.post("/v1/jobs/{job_id}/cancel")
async def cancel_job(job_id: int, service: ServiceDep) -> dict[str, Any]:
    """Cancel a running job and its tasks."""
    job = service.store.set_job_state(job_id, "cancelled", "cancelled by the user", time.time())
    await service.jobs.cancel(job_id)
    for task_id in job.task_ids:
        with contextlib.suppress(Conflict):
            service.store.set_state(task_id, "cancelled", "its job was cancelled", time.time())
    return _job_view(service, job_id)
