"""The Worker: serves a registry's procedures over HTTP, simplex and duplex."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Collection
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from rpc._http import (
    CALL_ID_HEADER,
    CALL_ID_RE,
    CALLBACK_HEADER,
    CALLBACK_TOKEN_HEADER,
    DEFAULT_MAX_BODY_BYTES,
    MODE_HEADER,
    CallStore,
    ClientPool,
    Outcome,
    bearer,
    check_content_type,
    check_token,
    deliver,
    error_response,
    json_app,
    read_body,
)
from rpc._procpool import ProcPool
from rpc._registry import Procedure, Registry, default_registry
from rpc._relay import Relay, RelayConnection
from rpc._server import ServerThread
from rpc._wire import Buffer, decode_call
from rpc.errors import (
    BadArguments,
    CallNotFound,
    MalformedPayload,
    RPCError,
    UnknownProcedure,
)


class Worker:
    """Serves the procedures of a Registry; `.app` is a mountable Starlette ASGI app."""

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        tokens: Collection[str] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        result_ttl_s: float = 600.0,
        max_threads: int = 32,
        relay: Relay | None = None,
        callback_verify: Any = True,
    ) -> None:
        """`max_body_bytes` in bytes; `result_ttl_s` in seconds; `callback_verify` is the TLS
        verification used when posting duplex results to callers (as httpx's `verify`)."""
        self.registry = registry if registry is not None else default_registry
        self.tokens = frozenset(tokens) if tokens is not None else None
        self.max_body_bytes = max_body_bytes
        self.calls = CallStore(result_ttl_s)
        self._pool = ProcPool(max_threads, "rpc-proc")
        self._clients = ClientPool(callback_verify)
        self._tasks: set[asyncio.Task[None]] = set()
        routes: list[BaseRoute] = [
            Route("/call/{procedure}", self._call, methods=["POST"]),
            Route("/calls/{call_id}", self._fetch, methods=["GET"]),
            Route("/calls/{call_id}", self._forget, methods=["DELETE"]),
            Route("/procedures", self._procedures, methods=["GET"]),
            Route("/healthz", self._healthz, methods=["GET"]),
        ]
        if relay is not None:
            routes.append(Mount("/relay", app=relay.app))
        self.app = json_app(routes)

    # ----------------------------------------------------------------- running the procedures

    def lookup(self, name: str) -> Procedure:
        """The procedure called `name`, or UnknownProcedure."""
        proc = self.registry.get(name)
        if proc is None:
            raise UnknownProcedure(
                f"no procedure {name!r} on this worker; it serves {self.registry.names()}"
            )
        return proc

    @staticmethod
    def prepare(proc: Procedure, body: Buffer) -> tuple[list[Any], dict[str, Any]]:
        """Decode a call body and check the arguments against the signature."""
        args, kwargs = decode_call(body)
        try:
            proc.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise BadArguments(f"{proc.name}{proc.signature}: {exc}") from None
        return args, kwargs

    async def invoke(self, proc: Procedure, args: list[Any], kwargs: dict[str, Any]) -> Outcome:
        """Run a procedure (sync ones in the thread pool) and encode what it produced."""
        try:
            if proc.is_async:
                value = await proc.fn(*args, **kwargs)
            else:
                value = await self._pool.run(functools.partial(proc.fn, *args, **kwargs))
        except Exception as exc:  # the remote exception travels back as RemoteError
            return Outcome.raised(exc)
        return Outcome.result(value)

    async def execute(self, name: str, body: Buffer) -> Outcome:
        """Look up, decode and run a call in one step (used by the relay transport)."""
        try:
            proc = self.lookup(name)
            args, kwargs = self.prepare(proc, body)
        except RPCError as exc:
            return Outcome.error(exc)
        del body
        return await self.invoke(proc, args, kwargs)

    def spawn(self, coro: Any) -> None:
        """Run a coroutine in the background, keeping a reference so it is not collected."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------------------- HTTP routes

    async def _call(self, request: Request) -> Response:
        try:
            check_token(bearer(request.headers), self.tokens, "worker")
            proc = self.lookup(request.path_params["procedure"])
            mode = request.headers.get(MODE_HEADER, "simplex")
            if mode not in ("simplex", "duplex"):
                raise MalformedPayload(f"{MODE_HEADER} {mode!r} is not 'simplex' or 'duplex'")
            call_id = request.headers.get(CALL_ID_HEADER) or uuid.uuid4().hex
            if not CALL_ID_RE.match(call_id):
                raise MalformedPayload(f"call id {call_id!r} must be 8-64 of [A-Za-z0-9_-]")
            check_content_type(request)
            body = await read_body(request, self.max_body_bytes)
            args, kwargs = self.prepare(proc, body)
            del body  # the arguments are views into it; drop our own name for it
            if mode == "duplex":
                self.calls.begin(call_id)
        except RPCError as exc:
            return error_response(exc)
        if mode == "simplex":
            outcome = await self.invoke(proc, args, kwargs)
            return outcome.response()
        self.spawn(
            self._run_duplex(
                call_id,
                proc,
                args,
                kwargs,
                request.headers.get(CALLBACK_HEADER),
                request.headers.get(CALLBACK_TOKEN_HEADER),
            )
        )
        return JSONResponse({"call_id": call_id}, status_code=202)

    async def _run_duplex(
        self,
        call_id: str,
        proc: Procedure,
        args: list[Any],
        kwargs: dict[str, Any],
        callback: str | None,
        secret: str | None,
    ) -> None:
        outcome = await self.invoke(proc, args, kwargs)
        del args, kwargs
        self.calls.finish(call_id, outcome)
        if callback and await deliver(self._clients, callback, secret, call_id, outcome):
            self.calls.drop(call_id)

    async def _fetch(self, request: Request) -> Response:
        try:
            check_token(bearer(request.headers), self.tokens, "worker")
            call_id = request.path_params["call_id"]
            call = self.calls.get(call_id)
            if call is None:
                raise CallNotFound(
                    f"no call {call_id!r} on this worker (never made, already delivered, "
                    "or expired after result_ttl_s)"
                )
        except RPCError as exc:
            return error_response(exc)
        if call.outcome is None:
            return JSONResponse({"state": "running", "call_id": call_id}, status_code=202)
        return call.outcome.response()

    async def _forget(self, request: Request) -> Response:
        try:
            check_token(bearer(request.headers), self.tokens, "worker")
        except RPCError as exc:
            return error_response(exc)
        call_id = request.path_params["call_id"]
        call = self.calls.get(call_id)
        if call is not None and call.outcome is not None:
            self.calls.drop(call_id)
        return JSONResponse({"ok": True})

    async def _procedures(self, request: Request) -> Response:
        try:
            check_token(bearer(request.headers), self.tokens, "worker")
        except RPCError as exc:
            return error_response(exc)
        return JSONResponse({"procedures": self.registry.names()})

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    def close(self) -> None:
        """Stop the thread pool of sync procedures (queued calls are cancelled)."""
        self._pool.close()

    # ------------------------------------------------------------------------ ways to run it

    def serve(
        self,
        host: str = "0.0.0.0",
        port: int = 8000,
        *,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        """Serve with uvicorn in this thread until interrupted."""
        import uvicorn

        uvicorn.run(
            self.app,
            host=host,
            port=port,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            log_level="warning",
        )

    def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> ServerThread:
        """Serve in a background thread; returns once it accepts connections (`.url`)."""
        return ServerThread(
            self.app, host, port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile
        ).start()

    def start_relay(
        self, relay_url: str, name: str, *, token: str | None = None, verify: Any = True
    ) -> RelayConnection:
        """Serve through a relay (binds no port); returns the running connection."""
        return RelayConnection(self, relay_url, name, token=token, verify=verify).start()

    def serve_relay(
        self, relay_url: str, name: str, *, token: str | None = None, verify: Any = True
    ) -> None:
        """Serve through a relay in this thread until interrupted."""
        RelayConnection(self, relay_url, name, token=token, verify=verify).run()
