"""The duplex caller's callback receiver: accepts results POSTed by workers and relays."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rpc._http import (
    DEFAULT_MAX_BODY_BYTES,
    STATUS_HEADER,
    bearer,
    check_token,
    error_response,
    json_app,
    read_body,
)
from rpc._server import ServerThread
from rpc._wire import Buffer
from rpc.errors import CallNotFound, MalformedPayload, RPCError


@dataclass
class RawOutcome:
    """An undecoded outcome as received: HTTP status, content type and body bytes."""

    status: int
    content_type: str
    body: Buffer


class Waiter:
    """Where a pending duplex call's outcome lands; waitable from threads and event loops."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.outcome: RawOutcome | None = None

    def set(self, outcome: RawOutcome) -> None:
        """Store the outcome and wake every waiter."""
        with self._lock:
            if self.outcome is not None:
                return
            self.outcome = outcome
            self._event.set()
            futures, self._futures = self._futures, []
        for loop, fut in futures:
            loop.call_soon_threadsafe(_resolve, fut)

    def wait(self, timeout_s: float | None) -> bool:
        """Block up to `timeout_s` seconds; True once the outcome is here."""
        return self._event.wait(timeout_s)

    async def await_(self, timeout_s: float) -> bool:
        """Await up to `timeout_s` seconds; True once the outcome is here."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self.outcome is not None:
                return True
            self._futures.append((loop, fut))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(fut, timeout_s)
        return self.outcome is not None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class CallbackReceiver:
    """Receives duplex results; run it standalone (`start`) or mount `.app` into FastAPI."""

    def __init__(
        self,
        public_url: str | None = None,
        *,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        """`public_url`: the URL workers reach this receiver at (where `.app` is served);
        `token`: the secret workers must present (random when None); bytes limit per result."""
        self.public_url = public_url
        self.secret = token or secrets.token_urlsafe(32)
        self.max_body_bytes = max_body_bytes
        self._pending: dict[str, Waiter] = {}
        self._lock = threading.Lock()
        self._server: ServerThread | None = None
        self.app = json_app([Route("/result/{call_id}", self._receive, methods=["POST"])])

    def expect(self, call_id: str) -> Waiter:
        """Register a call before it is sent, so an early callback finds its waiter."""
        waiter = Waiter()
        with self._lock:
            self._pending[call_id] = waiter
        return waiter

    def forget(self, call_id: str) -> None:
        """Stop waiting for a call (done, or given up)."""
        with self._lock:
            self._pending.pop(call_id, None)

    async def _receive(self, request: Request) -> Response:
        call_id = request.path_params["call_id"]
        try:
            check_token(bearer(request.headers), {self.secret}, "callback receiver")
            with self._lock:
                waiter = self._pending.get(call_id)
            if waiter is None:
                raise CallNotFound(f"no caller is waiting for call {call_id!r}")
            try:
                status = int(request.headers.get(STATUS_HEADER, ""))
            except ValueError:
                raise MalformedPayload(f"callback lacks a numeric {STATUS_HEADER}") from None
            body = await read_body(request, self.max_body_bytes)
        except RPCError as exc:
            return error_response(exc)
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        waiter.set(RawOutcome(status, ctype, body))
        return JSONResponse({"ok": True})

    def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> CallbackReceiver:
        """Serve in a background uvicorn thread; sets `public_url` unless it was given."""
        self._server = ServerThread(
            self.app, host, port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile
        ).start()
        if self.public_url is None:
            self.public_url = self._server.url
        return self

    def stop(self) -> None:
        """Stop the standalone server (no effect when mounted)."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> CallbackReceiver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


_default: CallbackReceiver | None = None
_default_lock = threading.Lock()


def default_receiver() -> CallbackReceiver:
    """The process-wide receiver on 127.0.0.1 (started on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = CallbackReceiver().start()
        return _default
