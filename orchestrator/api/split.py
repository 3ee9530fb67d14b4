"""The per-batch route of split-learning tasks: `POST /v1/tasks/{id}/split/step`.

A learner taking part in the current round sends one batch (the RPC layer's wire format,
`application/x-plexus-rpc`: labels, path ids and each path's quantised codes, see
`plexus.split.codec`); the server half trains on it and answers the gradient at the codes in
the same format (float32, or quantised to `split.grad_bits`). Refusals: `413 too_large`
(over MAX_STEP_BYTES, from Content-Length before the body is read), `422 bad_split_batch`
(not decodable, or shapes / dtypes / sizes / path ids / labels / NaN that do not fit the
task; the server half is not touched), `403 not_participant` / `403 split_batches_spent`,
`404` / `409` for a task that is not a running split task.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from orchestrator.api.deps import Id, LearnerDep, ServiceDep
from orchestrator.api.errors import answers
from orchestrator.errors import BadInput

router = APIRouter(tags=["split learning"])
MAX_STEP_BYTES = 64 * 1024 * 1024
_RPC = {"application/x-plexus-rpc": {"schema": {"type": "string", "format": "binary"}}}
# The request is declared as bytes (agents send it as application/x-plexus-rpc; the content
# type is not checked, the body is decoded and checked whatever it says it is).
_BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


@router.post("/v1/tasks/{task_id}/split/step", response_class=Response,
             openapi_extra={"requestBody": {"required": True, "content": _BYTES}},
             responses={200: {"description": "gradients at the codes", "content": _RPC},
                        **answers(401, 403, 404, 409, 413, 422)})
async def split_step(task_id: Id, request: Request, me: LearnerDep, service: ServiceDep
                     ) -> Response:
    """One batch of a split task from a learner of its current round."""
    import rpc
    from plexus.split.codec import BadSplitBatch

    session = service.split.session(task_id)
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_STEP_BYTES:
        return _too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_STEP_BYTES:
            return _too_large()
    try:
        message: Any = rpc.decode(bytes(body))
        answer = await asyncio.to_thread(session.step, me.id, message, len(body))
    except (rpc.PayloadError, BadSplitBatch) as exc:
        await asyncio.to_thread(service.store.add_refusal, task_id, "bad_split_batch")
        raise BadInput(f"split batch: {exc}", code="bad_split_batch") from None
    out = rpc.encode(answer).join()
    session.answered(me.id, len(out))
    return Response(out, media_type=rpc.CONTENT_TYPE)


def _too_large() -> Response:
    return JSONResponse({"error": "too_large", "detail": f"a split batch may hold at most "
                         f"{MAX_STEP_BYTES} bytes"}, status_code=413)
