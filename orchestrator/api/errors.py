"""The HTTP edge of the error tree: each `ServiceError` class → one status code.

Errors are raised without any HTTP status (`orchestrator.errors`); only here does a class get
its status, looked up along the class's MRO (a subclass answers like its nearest mapped
ancestor). Every error answers JSON `{"error": code, "detail": text}`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.allocation.errors import PlanInputError
from orchestrator.errors import (
    BadInput,
    Conflict,
    Forbidden,
    NotFound,
    ServiceError,
    StoreError,
    Unauthorized,
)

STATUS: dict[type[ServiceError], int] = {
    ServiceError: 500,
    BadInput: 422,
    PlanInputError: 422,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    StoreError: 500,
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


async def _http(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=exc.status_code)


async def _crash(_r: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "internal", "detail": f"{type(exc).__name__}: {exc}"},
                        status_code=500)


def install(app: FastAPI) -> None:
    """Answer every error of `app` as JSON `{"error", "detail"}`."""
    app.add_exception_handler(ServiceError, _own)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _crash)
