"""The HTTP edge of the error tree: each `ServiceError` class → one status code.

Errors are raised without any HTTP status (`orchestrator.errors`); only here does a class get
its status, looked up along the class's MRO (a subclass answers like its nearest mapped
ancestor). Every error answers JSON `{"error": code, "detail": text}`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match

from orchestrator.allocation.errors import PlanInputError
from orchestrator.errors import (
    BadInput,
    Conflict,
    Forbidden,
    NotFound,
    ServiceError,
    StorageFull,
    StoreError,
    Unauthorized,
)


class ErrorBody(BaseModel):
    """What every error answers: a stable code and a sentence for a person."""

    error: str
    detail: str


_MEANING = {
    401: "no bearer token, or not one this call accepts",
    403: "the token is valid but not for this resource",
    404: "no such resource",
    409: "the resource is not in a state that allows this",
    413: "the body is larger than this route accepts",
    422: "the request is invalid; `detail` names the field",
    507: "the orchestrator's data directory is full: nothing was stored; retry later",
}


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's error statuses, all with the `ErrorBody` model."""
    return {s: {"model": ErrorBody, "description": _MEANING[s]} for s in statuses}


STATUS: dict[type[ServiceError], int] = {
    ServiceError: 500,
    BadInput: 422,
    PlanInputError: 422,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    StoreError: 500,
    StorageFull: 507,
}


def status_of(exc: ServiceError) -> int:
    """The HTTP status an error answers with."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


async def _own(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=status_of(exc))


async def _invalid(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg')}")
    return JSONResponse({"error": "invalid_request", "detail": "; ".join(parts)},
                        status_code=422)


def _template(path: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", path)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


def _allowed(request: Request) -> str:
    """Every method some route of the app answers on this path (RFC 9110: 405 carries Allow).

    The documented routes come from the OpenAPI document (FastAPI keeps included routers
    behind private objects); the app's own routes (/docs, /redoc) are matched directly.
    """
    methods: set[str] = set()
    for route in request.app.router.routes:
        if getattr(route, "methods", None):
            match, _ = route.matches({**request.scope, "method": "GET"})
            if match != Match.NONE:
                methods |= set(route.methods)
    path = request.url.path
    paths = request.app.openapi().get("paths", {})
    # A literal path (/v1/learners/enroll) names its own resource, even where a template
    # (/v1/learners/{learner_id}) would also match its text.
    matching = [paths[path]] if path in paths else [
        ops for template, ops in paths.items() if _template(template).fullmatch(path)]
    for ops in matching:
        methods |= {m.upper() for m in ops}
    return ", ".join(sorted(methods))


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot even decode: a request error like any other.
        return JSONResponse({"error": "invalid_request", "detail": f"body: {exc.detail}"},
                            status_code=422)
    if exc.status_code == 405:
        headers["Allow"] = _allowed(request)
    return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=exc.status_code,
                        headers=headers)


async def _gone(request: Request, _exc: Exception) -> Response:
    """A client that hung up before its request was read whole (an agent killed mid-upload, a
    link that dropped): one warning line, not an ERROR with a traceback. The answer is never
    delivered (the server drops what is sent to a closed connection)."""
    logging.getLogger("orchestrator.api").warning(
        "%s %s: the client disconnected before its request was read whole; nothing was done",
        request.method, request.url.path)
    return Response(status_code=400)


async def _crash(_r: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "internal", "detail": f"{type(exc).__name__}: {exc}"},
                        status_code=500)


def install(app: FastAPI) -> None:
    """Answer every error of `app` as JSON `{"error", "detail"}`."""
    app.add_exception_handler(ServiceError, _own)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(ClientDisconnect, _gone)
    app.add_exception_handler(Exception, _crash)
