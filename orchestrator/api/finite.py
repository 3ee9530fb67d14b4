"""Refuse JSON request bodies that hold NaN or ±Infinity, before any route sees them.

Python's `json.loads` (and so FastAPI) reads the non-JSON words `NaN`, `Infinity` and
`-Infinity`, and a literal like `1e999` overflows to `inf`; a deadline, size or price of that
kind passes `gt=0` checks and breaks the planners downstream. This ASGI middleware answers such
a body `422 {"error": "invalid_request", "detail": "<field path>: ..."}` naming the first
offending field, and a JSON body over `max_bytes` `413 too_large`. Other bodies (rpc, model
updates) pass untouched.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Task specs, jobs and enrollments are a few KiB; this leaves room for large jobs.
MAX_JSON_BYTES = 4 << 20


class _NonFinite:
    """Stands for a non-finite number while the parsed body is searched for it."""


_MARK = _NonFinite()


def _number(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _MARK


def non_finite_field(body: bytes) -> str | None:
    """The dotted path of the first NaN / ±Infinity in a JSON body; None if none, or not JSON."""
    try:
        tree = json.loads(body, parse_constant=lambda _word: _MARK, parse_float=_number)
    except (ValueError, RecursionError):
        return None  # not JSON at all: the route answers that itself
    stack: list[tuple[str, Any]] = [("", tree)]
    while stack:
        where, node = stack.pop()
        if node is _MARK:
            return where or "body"
        if isinstance(node, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((f"{where}.{i}" if where else str(i), v) for i, v in enumerate(node))
    return None


def _json_or_unset(scope: Scope) -> tuple[bool, bool]:
    """(the body is declared JSON, no content type is declared: FastAPI then reads JSON too)."""
    for key, value in scope.get("headers", ()):
        if key == b"content-type":
            mime = value.split(b";")[0].strip().lower()
            return mime == b"application/json" or mime.endswith(b"+json"), False
    return False, True


class FiniteJSON:
    """ASGI middleware: 422 for JSON bodies holding non-finite numbers (see module doc)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_JSON_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        is_json, unset = _json_or_unset(scope)
        if not (is_json or unset):
            await self.app(scope, receive, send)
            return
        read: list[Message] = []
        size, more = 0, True
        while more:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if size > self.max_bytes:
                if unset:  # not declared JSON: not ours to judge, pass it on as it comes
                    break
                answer = JSONResponse({"error": "too_large", "detail":
                                       f"a JSON body of over {self.max_bytes} bytes; send less"},
                                      status_code=413, headers={"connection": "close"})
                await answer(scope, receive, send)
                return
        if not more:
            where = non_finite_field(b"".join(m.get("body", b"") for m in read))
            if where is not None:
                answer = JSONResponse({"error": "invalid_request", "detail":
                                       f"{where}: NaN and Infinity are not numbers JSON can "
                                       "carry; send a finite number"}, status_code=422)
                await answer(scope, receive, send)
                return

        async def replay() -> Message:
            return read.pop(0) if read else await receive()

        await self.app(scope, replay, send)
