"""REST endpoints of asynchronous tasks: `POST /v1/tasks/{id}/pull` and `/updates`.

`make_async_router(runners, learner)` returns a FastAPI router; the app includes it and passes
its own learner-authentication dependency (which must return an object with a ``name``
attribute, or a string). Errors answer JSON `{"error": code, "detail": text}`:

* pull → ``403``/``422`` when the app's ``admit(task_id, who)`` refuses the learner, else
  ``200`` safetensors (metadata ``version``) with header ``X-Model-Version``, or
  ``204`` when the server has not picked this learner (FedBuff / PORT): pull again later;
* updates → ``200 {"accepted", "version", "aggregated", "update_id"}`` once the update is on
  disk (``update_id``: its row in the store, docs/orchestrator.md); ``422 bad_update`` for wrong
  names / shapes / dtypes / non-finite values / missing metadata, ``409 unknown_version`` for a
  base version the server does not hold; rejected updates are counted and never aggregated;
  update admission (docs/security.md): ``403 no_outstanding_pull`` for an update that answers
  no pull of this learner (or another version than it was sent), ``422 n_samples_too_large``
  for more samples than its pull declared, ``422 n_samples_over_partition`` for a pull that
  declares more samples than the learner's partition holds;
* pull and updates → ``409 task_finished`` once the task has ended (its last aggregation is
  being recorded), ``409 task_failed`` when recording its progress failed;
* stop (``GET``) → ``200 {"stop": bool}``: whether the server (PORT) asks this learner to stop
  training and push what it has; clients ask between epochs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.aggregation import BadUpdate, UnknownVersion
from orchestrator.api.deps import Id
from orchestrator.api.errors import answers, status_of
from orchestrator.errors import ServiceError
from orchestrator.runs.async_runner import AsyncTaskRunner

MAX_UPDATE_BYTES = 256 * 1024 * 1024
# What the OpenAPI document says of the two binary routes.
_BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
PULL_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"description": "the model (safetensors)", "content": _BYTES},
    204: {"description": "not picked this time: pull again later"},
    **answers(401, 403, 404, 409, 413, 422)}
UPDATE_BODY = {"requestBody": {"required": True, "content": _BYTES}}


class PullRequest(BaseModel):
    """Body of a pull: how many samples the learner holds (|D_k|)."""

    model_config = ConfigDict(extra="forbid")
    n_samples: int = Field(ge=1)


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _name(who: Any) -> str:
    return who if isinstance(who, str) else str(who.name)


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker thread; an error it raises on purpose becomes its JSON answer:
    ``409 unknown_version``, ``422 bad_update``, or an admission refusal's own status and code.
    """
    try:
        return await asyncio.to_thread(fn, *args)
    except UnknownVersion as exc:
        return _error(409, "unknown_version", str(exc))
    except BadUpdate as exc:
        return _error(422, "bad_update", str(exc))
    except ServiceError as exc:
        return _error(status_of(exc), exc.code, exc.detail)


async def _receive_update(r: AsyncTaskRunner, name: str, request: Request) -> Response:
    """Size-check, read and hand one pushed update to its runner; map its refusals."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > MAX_UPDATE_BYTES:
        return _error(413, "too_large", f"update of {declared} bytes exceeds the limit")
    body = await request.body()
    result = await _in_thread(r.push, name, body)
    return result if isinstance(result, JSONResponse) else JSONResponse(result)


def _pull_answer(answer: Any) -> Response:
    """A refusal as it is, 204 when the server has not picked the learner, else the model."""
    if isinstance(answer, JSONResponse):
        return answer
    if answer is None:
        return Response(status_code=204)
    version, data = answer
    return Response(data, media_type="application/octet-stream",
                    headers={"X-Model-Version": str(version)})


def _runner_for(runners: Mapping[int, AsyncTaskRunner], task_id: int
                ) -> AsyncTaskRunner | JSONResponse:
    r = runners.get(task_id)
    if r is None:
        return _error(404, "not_found", f"task {task_id} is not a running asynchronous task")
    return r


def make_async_router(
    runners: Mapping[int, AsyncTaskRunner], learner: Callable[..., Any],
    admit: Callable[[int, Any], int | None] | None = None,
) -> APIRouter:
    """Routes for the async tasks in ``runners`` (task id → runner), guarded by ``learner``.

    ``admit(task_id, who)``, if given, is asked at every pull: it may raise a ``ServiceError``
    to refuse the learner, and answers the most samples the learner can hold (or None).
    """
    router = APIRouter()

    def runner_for(task_id: int) -> AsyncTaskRunner | JSONResponse:
        return _runner_for(runners, task_id)

    @router.post("/v1/tasks/{task_id}/pull", response_model=None, response_class=Response,
                 responses=PULL_ANSWERS)
    async def pull(
        task_id: Id,
        body: PullRequest,
        who: Any = Depends(learner),  # noqa: B008
    ) -> Response:
        r = runner_for(task_id)
        if isinstance(r, JSONResponse):
            return r
        runner = r

        def admitted_pull() -> tuple[int, bytes] | None:
            limit = None if admit is None else admit(task_id, who)
            return runner.pull(_name(who), body.n_samples, limit)

        return _pull_answer(await _in_thread(admitted_pull))

    @router.post("/v1/tasks/{task_id}/updates", response_model=None,
                 responses=answers(401, 403, 404, 409, 413, 422), openapi_extra=UPDATE_BODY)
    async def updates(
        task_id: Id,
        request: Request,
        who: Any = Depends(learner),  # noqa: B008
    ) -> Response:
        r = runner_for(task_id)
        if isinstance(r, JSONResponse):
            return r
        return await _receive_update(r, _name(who), request)

    @router.get("/v1/tasks/{task_id}/stop", responses=answers(401, 404, 422))
    async def stop(task_id: Id, who: Any = Depends(learner)) -> Response:  # noqa: B008
        r = runner_for(task_id)
        if isinstance(r, JSONResponse):
            return r
        return JSONResponse({"stop": r.should_stop(_name(who))})

    @router.get("/v1/tasks/{task_id}/async", responses=answers(401, 404, 422))
    async def status(task_id: Id, who: Any = Depends(learner)) -> Response:  # noqa: B008
        r = runner_for(task_id)
        if isinstance(r, JSONResponse):
            return r
        return JSONResponse(r.status())

    return router
