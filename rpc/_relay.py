"""Relay transport: workers behind NAT long-poll a relay for their calls and post results back."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rpc._http import (
    CALL_ID_HEADER,
    CALL_ID_RE,
    CALLBACK_HEADER,
    CALLBACK_TOKEN_HEADER,
    DEFAULT_MAX_BODY_BYTES,
    MODE_HEADER,
    PROCEDURE_HEADER,
    STATUS_HEADER,
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
    tls_verify,
)
from rpc._server import ServerThread
from rpc._wire import CONTENT_TYPE, Buffer, Encoded
from rpc.errors import (
    AuthError,
    CallNotFound,
    MalformedPayload,
    RPCError,
    TransportError,
)

WORKER_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass
class _Queued:
    call_id: str
    procedure: str
    body: Buffer


class Relay:
    """Queues calls for named workers that long-poll it; mount `.app` or `start()` it."""

    def __init__(
        self,
        *,
        caller_tokens: Collection[str] | None = None,
        worker_tokens: Mapping[str, str] | None = None,
        authorize_worker: Callable[[str, str], bool] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        result_ttl_s: float = 600.0,
        poll_wait_s: float = 2.0,
        redeliver_after_s: float = 30.0,
        callback_verify: Any = True,
    ) -> None:
        """Token options are described in docs/rpc.md; bytes limit per body; seconds for
        `result_ttl_s`, `poll_wait_s` (how long one poll is held open) and
        `redeliver_after_s` (when a call handed out but never acknowledged is queued again)."""
        self.caller_tokens = frozenset(caller_tokens) if caller_tokens is not None else None
        self.worker_tokens = dict(worker_tokens) if worker_tokens is not None else None
        self.authorize_worker = authorize_worker
        self.max_body_bytes = max_body_bytes
        self.poll_wait_s = poll_wait_s
        self.redeliver_after_s = redeliver_after_s
        self.calls = CallStore(result_ttl_s)
        self._queues: dict[str, asyncio.Queue[_Queued]] = {}
        self._callbacks: dict[str, tuple[str, str | None]] = {}
        # Calls handed to a poll but not yet acknowledged: key -> (call, time handed out).
        self._dispatched: dict[str, tuple[_Queued, float]] = {}
        self._seen: dict[str, float] = {}
        self._clients = ClientPool(callback_verify)
        self._tasks: set[asyncio.Task[None]] = set()
        self.app = json_app(
            [
                Route("/healthz", self._healthz, methods=["GET"]),
                Route("/{worker}/call/{procedure}", self._call, methods=["POST"]),
                Route("/{worker}/calls/{call_id}", self._fetch, methods=["GET"]),
                Route("/{worker}/calls/{call_id}", self._forget, methods=["DELETE"]),
                Route("/{worker}/_poll", self._poll, methods=["GET"]),
                Route("/{worker}/_result/{call_id}", self._result, methods=["POST"]),
            ]
        )

    def last_seen(self, worker: str) -> float | None:
        """time.monotonic() of the worker's latest poll, or None if it never polled."""
        return self._seen.get(worker)

    def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> ServerThread:
        """Serve the relay alone in a background thread (`.url` is the relay URL)."""
        return ServerThread(
            self.app, host, port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile
        ).start()

    # ---------------------------------------------------------------------------- helpers

    def _queue(self, worker: str) -> asyncio.Queue[_Queued]:
        queue = self._queues.get(worker)
        if queue is None:
            queue = self._queues[worker] = asyncio.Queue()
        return queue

    @staticmethod
    def _worker_name(request: Request) -> str:
        name: str = request.path_params["worker"]
        if not WORKER_NAME_RE.match(name):
            raise MalformedPayload(f"worker name {name!r} must be 1-128 of [A-Za-z0-9_.-]")
        return name

    def _check_worker(self, request: Request, name: str) -> None:
        token = bearer(request.headers)
        if self.authorize_worker is not None:
            if token is None or not self.authorize_worker(name, token):
                raise AuthError(f"worker {name!r} is not authorized by this relay; check its token")
        elif self.worker_tokens is not None:
            expected = self.worker_tokens.get(name)
            if (
                token is None
                or expected is None
                or not hmac.compare_digest(token.encode(), expected.encode())
            ):
                raise AuthError(f"worker {name!r} is not authorized by this relay; check its token")

    def _requeue_stale(self, worker: str) -> None:
        now = time.monotonic()
        prefix = f"{worker}/"
        for key, (item, sent_at) in list(self._dispatched.items()):
            if key.startswith(prefix) and now - sent_at > self.redeliver_after_s:
                del self._dispatched[key]
                call = self.calls.get(key)
                if call is not None and call.outcome is None:
                    self._queue(worker).put_nowait(item)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --------------------------------------------------------------------- caller routes

    async def _call(self, request: Request) -> Response:
        try:
            check_token(bearer(request.headers), self.caller_tokens, "relay")
            worker = self._worker_name(request)
            procedure = request.path_params["procedure"]
            mode = request.headers.get(MODE_HEADER, "simplex")
            if mode not in ("simplex", "duplex"):
                raise MalformedPayload(f"{MODE_HEADER} {mode!r} is not 'simplex' or 'duplex'")
            call_id = request.headers.get(CALL_ID_HEADER, "")
            if not CALL_ID_RE.match(call_id):
                raise MalformedPayload(f"call id {call_id!r} must be 8-64 of [A-Za-z0-9_-]")
            check_content_type(request)
            body = await read_body(request, self.max_body_bytes)
            key = f"{worker}/{call_id}"
            call = self.calls.begin(key)
        except RPCError as exc:
            return error_response(exc)
        callback = request.headers.get(CALLBACK_HEADER)
        if mode == "duplex" and callback:
            self._callbacks[key] = (callback, request.headers.get(CALLBACK_TOKEN_HEADER))
        self._queue(worker).put_nowait(_Queued(call_id, procedure, body))
        del body
        if mode == "duplex":
            return JSONResponse({"call_id": call_id}, status_code=202)
        await call.done.wait()
        self.calls.drop(key)
        assert call.outcome is not None
        return call.outcome.response()

    async def _fetch(self, request: Request) -> Response:
        try:
            check_token(bearer(request.headers), self.caller_tokens, "relay")
            key = f"{self._worker_name(request)}/{request.path_params['call_id']}"
            call = self.calls.get(key)
            if call is None:
                raise CallNotFound(f"no call {key!r} on this relay (delivered, or expired)")
        except RPCError as exc:
            return error_response(exc)
        if call.outcome is None:
            return JSONResponse({"state": "running"}, status_code=202)
        return call.outcome.response()

    async def _forget(self, request: Request) -> Response:
        try:
            check_token(bearer(request.headers), self.caller_tokens, "relay")
            key = f"{self._worker_name(request)}/{request.path_params['call_id']}"
        except RPCError as exc:
            return error_response(exc)
        call = self.calls.get(key)
        if call is not None and call.outcome is not None:
            self.calls.drop(key)
        return JSONResponse({"ok": True})

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    # --------------------------------------------------------------------- worker routes

    async def _poll(self, request: Request) -> Response:
        try:
            worker = self._worker_name(request)
            self._check_worker(request, worker)
            wait = self.poll_wait_s
            if "wait" in request.query_params:
                wait = min(wait, max(0.0, float(request.query_params["wait"])))
        except ValueError:
            return error_response(MalformedPayload("query parameter wait must be seconds"))
        except RPCError as exc:
            return error_response(exc)
        self._seen[worker] = time.monotonic()
        # The worker acknowledges on its next poll the calls it received; a call whose poll
        # answer was lost on the way is never acknowledged and goes back in the queue.
        for call_id in request.query_params.getlist("ack"):
            self._dispatched.pop(f"{worker}/{call_id}", None)
        self._requeue_stale(worker)
        queue = self._queue(worker)
        try:
            item = queue.get_nowait() if wait <= 0 else await asyncio.wait_for(queue.get(), wait)
        except (asyncio.QueueEmpty, asyncio.TimeoutError):
            return Response(status_code=204)
        self._dispatched[f"{worker}/{item.call_id}"] = (item, time.monotonic())
        headers = {
            CALL_ID_HEADER: item.call_id,
            PROCEDURE_HEADER: item.procedure,
            "content-length": str(len(item.body)),
        }
        return StreamingResponse(
            Encoded([item.body], len(item.body)).achunks(), 200, headers, media_type=CONTENT_TYPE
        )

    async def _result(self, request: Request) -> Response:
        try:
            worker = self._worker_name(request)
            self._check_worker(request, worker)
            key = f"{worker}/{request.path_params['call_id']}"
            call = self.calls.get(key)
            if call is None:
                raise CallNotFound(f"the relay is not waiting for call {key!r}")
            try:
                status = int(request.headers.get(STATUS_HEADER, ""))
            except ValueError:
                raise MalformedPayload(f"result lacks a numeric {STATUS_HEADER}") from None
            if not 200 <= status <= 599:
                raise MalformedPayload(f"{STATUS_HEADER} {status} is not an HTTP status")
            body = await read_body(request, self.max_body_bytes)
        except RPCError as exc:
            return error_response(exc)
        self._dispatched.pop(key, None)
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        outcome = Outcome(status, ctype, Encoded([body], len(body)))
        self.calls.finish(key, outcome)
        callback = self._callbacks.pop(key, None)
        if callback is not None:
            self._spawn(self._deliver(key, request.path_params["call_id"], callback, outcome))
        return JSONResponse({"ok": True})

    async def _deliver(
        self, key: str, call_id: str, callback: tuple[str, str | None], outcome: Outcome
    ) -> None:
        if await deliver(self._clients, callback[0], callback[1], call_id, outcome):
            self.calls.drop(key)


class CallRunner(Protocol):
    """What a relay connection needs of its worker: run one encoded call (rpc.Worker does)."""

    async def execute(self, name: str, body: Buffer) -> Outcome: ...


class RelayConnection:
    """A worker serving through a relay: a thread that long-polls for calls and runs them."""

    def __init__(
        self,
        worker: CallRunner,
        relay_url: str,
        name: str,
        *,
        token: str | None = None,
        verify: Any = True,
    ) -> None:
        if not WORKER_NAME_RE.match(name):
            raise ValueError(f"worker name {name!r} must be 1-128 of [A-Za-z0-9_.-]")
        self.worker = worker
        self.url = f"{relay_url.rstrip('/')}/{name}"
        self.name = name
        self.token = token
        self.verify = tls_verify(verify)
        self.error: BaseException | None = None
        self._connected = threading.Event()
        self._acks: list[str] = []
        # Call ids received lately: a call redelivered after a lost acknowledgement runs once.
        self._received: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self, timeout_s: float = 30.0) -> RelayConnection:
        """Start polling in a daemon thread; returns after the relay answered the first poll.

        Raises AuthError when the relay refuses the token, TransportError when it cannot be
        reached within `timeout_s` seconds.
        """
        self._thread = threading.Thread(target=self.run, name=f"rpc-relay:{self.name}", daemon=True)
        self._thread.start()
        if not self._connected.wait(timeout_s):
            self.stop()
            raise TransportError(f"relay {self.url} did not answer within {timeout_s} s")
        if self.error is not None:
            self.stop()
            raise self.error
        return self

    def run(self) -> None:
        """Poll in this thread until stop() (or an auth failure)."""
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        tasks: set[asyncio.Task[None]] = set()
        timeout = httpx.Timeout(60.0, connect=5.0)
        async with httpx.AsyncClient(verify=self.verify, timeout=timeout) as client:
            backoff = 0.5
            first = True
            while True:
                try:
                    if not await self._poll(client, tasks, first=first):
                        return
                    first = False
                    backoff = 0.5
                    self._connected.set()
                except httpx.HTTPError:
                    # The relay is down or the network blinked: retry with a growing pause.
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)

    async def _poll(
        self, client: httpx.AsyncClient, tasks: set[asyncio.Task[None]], *, first: bool
    ) -> bool:
        """One long poll, acknowledging the calls received so far; a call that comes back is
        started as a task in `tasks`. False when the relay turned the worker away for good
        (`self.error` says why); raises httpx.HTTPError on what a retry may fix."""
        acks = list(self._acks)
        params: list[tuple[str, str | int | float | bool | None]] = [("ack", a) for a in acks]
        if first:
            params.append(("wait", "0"))
        request = client.build_request(
            "GET", f"{self.url}/_poll", params=params, headers=self._headers()
        )
        resp = await client.send(request, stream=True)
        try:
            if resp.status_code in (200, 204):
                del self._acks[: len(acks)]
            if resp.status_code == 200:
                await self._accept(client, resp, tasks)
            elif resp.status_code == 401:
                await resp.aread()
                self.error = AuthError(
                    f"relay {self.url} refused worker {self.name!r}: {resp.text}"
                )
                self._connected.set()
                return False
            elif resp.status_code == 404 and first:
                # Nothing routes there: a wrong relay URL will not fix itself.
                self.error = TransportError(
                    f"{self.url}/_poll answered 404; is {self.url!r} a relay URL "
                    "followed by the worker name?"
                )
                self._connected.set()
                return False
            elif resp.status_code != 204:
                raise httpx.HTTPStatusError("poll", request=request, response=resp)
        finally:
            await resp.aclose()
        return True

    async def _accept(
        self, client: httpx.AsyncClient, resp: httpx.Response, tasks: set[asyncio.Task[None]]
    ) -> None:
        """Read the call a poll brought, queue its ack, and start it unless it is a
        redelivery."""
        from rpc._client import _read_async

        body = await _read_async(resp)
        call_id = resp.headers.get(CALL_ID_HEADER, "")
        procedure = resp.headers.get(PROCEDURE_HEADER, "")
        self._acks.append(call_id)
        if self._first_time(call_id):
            task = asyncio.get_running_loop().create_task(
                self._handle(client, call_id, procedure, body)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        del body

    def _first_time(self, call_id: str) -> bool:
        """Record a received call id; False when it was received before (a redelivery)."""
        if call_id in self._received:
            return False
        if len(self._received) >= 10_000:
            # Forget the older half; redeliveries come within minutes, not thousands of calls.
            for old in sorted(self._received, key=self._received.__getitem__)[:5_000]:
                del self._received[old]
        self._received[call_id] = time.monotonic()
        return True

    async def _handle(
        self, client: httpx.AsyncClient, call_id: str, procedure: str, body: Buffer
    ) -> None:
        try:
            outcome = await self.worker.execute(procedure, body)
        except Exception as exc:  # the caller must get an answer, whatever broke
            # execute answers bad calls itself; anything escaping it is still this call's
            # result, never a task exception nobody retrieves with the caller left waiting.
            outcome = Outcome.error(exc)
        del body
        url = f"{self.url}/_result/{call_id}"
        for attempt in range(3):
            try:
                await client.post(
                    url,
                    content=outcome.body.achunks(),
                    headers={**self._headers(), **outcome.headers()},
                )
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.5 * (attempt + 1))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop polling and wait for the thread (seconds); running calls are abandoned."""
        loop, main = self._loop, self._main
        if loop is not None and main is not None and not loop.is_closed():
            # RuntimeError: the loop closed between the check and the call.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(main.cancel)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> RelayConnection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
