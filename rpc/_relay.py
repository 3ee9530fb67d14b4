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
from rpc._relay_store import DONE, QUEUED, RelayRecord, RelayStore
from rpc._server import ServerThread
from rpc._wire import CONTENT_TYPE, Buffer, Encoded
from rpc.errors import (
    AuthError,
    CallNotFound,
    MalformedPayload,
    RPCError,
    TransportError,
    WorkerGone,
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
        store: RelayStore | None = None,
        gone_after_s: float | None = 30.0,
    ) -> None:
        """Token options are described in docs/rpc.md; bytes limit per body; seconds for
        `result_ttl_s`, `poll_wait_s` (how long one poll is held open),
        `redeliver_after_s` (when a call handed out but never acknowledged is queued again)
        and `gone_after_s` (a worker that has not polled for that long is gone: its calls fail
        with WorkerGone; None = never). `store` (e.g. `rpc.SqliteRelayStore(path)`) makes
        queued, running and answered calls survive a restart of the relay."""
        if gone_after_s is not None and gone_after_s <= poll_wait_s:
            raise ValueError(f"gone_after_s ({gone_after_s}) must exceed poll_wait_s "
                             f"({poll_wait_s}): a polling worker would look gone")
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
        self.store = store
        self.gone_after_s = gone_after_s
        # Workers get gone_after_s from the relay's start to (re)connect before they are gone.
        self._started = time.monotonic()
        if store is not None:
            self._restore(store.load())
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

    def _restore(self, records: list[RelayRecord]) -> None:
        """After a restart: queue again what no worker acknowledged, wait for the results
        of what was running, keep the answers nobody fetched yet."""
        for rec in records:
            self.calls.begin(rec.key)
            if rec.callback_url and rec.state != DONE:
                self._callbacks[rec.key] = (rec.callback_url, rec.callback_token)
            if rec.state == QUEUED and rec.body is not None:
                self._queue(rec.worker).put_nowait(
                    _Queued(rec.call_id, rec.procedure, bytearray(rec.body)))
            elif rec.state == DONE and rec.result is not None:
                body = rec.result
                self.calls.finish(rec.key, Outcome(rec.status or 500, rec.content_type or "",
                                                   Encoded([body], len(body))))

    async def _persist(self, method: str, *args: Any) -> None:
        """Call a store method in a thread (it fsyncs); nothing without a store."""
        if self.store is not None:
            await asyncio.to_thread(getattr(self.store, method), *args)

    def gone(self, worker: str) -> bool:
        """Whether `worker` has not polled for `gone_after_s` (counted from the relay's start
        for a worker not seen since)."""
        if self.gone_after_s is None:
            return False
        last = self._seen.get(worker, self._started)
        return time.monotonic() - last > self.gone_after_s

    async def _reap(self, worker: str) -> None:
        """If `worker` is gone, fail its queued and running calls with WorkerGone now."""
        if not self.gone(worker):
            return
        idle = time.monotonic() - self._seen.get(worker, self._started)
        exc = WorkerGone(f"relayed worker {worker!r} has not polled this relay for "
                         f"{idle:.0f} s (gone_after_s is {self.gone_after_s} s): its call was "
                         "not run or its result will not come; check the worker")
        # Its queue goes (no poll of a gone worker is open: polls last < gone_after_s); a
        # call of it that is still handed out later would be skipped by _next anyway.
        self._queues.pop(worker, None)
        for key in self.calls.running(f"{worker}/"):
            self._dispatched.pop(key, None)
            outcome = Outcome.error(exc)
            self.calls.finish(key, outcome)
            await self._persist("drop", key)
            callback = self._callbacks.pop(key, None)
            if callback is not None:
                self._spawn(self._deliver(key, key.split("/", 1)[1], callback, outcome))

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
            if self.gone(worker):
                await self._reap(worker)
                raise WorkerGone(f"relayed worker {worker!r} has not polled this relay for "
                                 f"over {self.gone_after_s} s; the call was not queued")
            body = await read_body(request, self.max_body_bytes)
            key = f"{worker}/{call_id}"
            call = self.calls.begin(key)
        except RPCError as exc:
            return error_response(exc)
        callback = request.headers.get(CALLBACK_HEADER)
        token = request.headers.get(CALLBACK_TOKEN_HEADER)
        if mode == "duplex" and callback:
            self._callbacks[key] = (callback, token)
        try:  # durable before the caller hears "accepted"
            await self._persist("put", RelayRecord(
                key, procedure, QUEUED, bytes(body), callback if mode == "duplex" else None,
                token if mode == "duplex" and callback else None))
        except Exception as exc:
            self.calls.drop(key)
            self._callbacks.pop(key, None)
            return error_response(RPCError(f"the relay could not store the call: {exc}"))
        self._queue(worker).put_nowait(_Queued(call_id, procedure, body))
        del body
        if mode == "duplex":
            return JSONResponse({"call_id": call_id}, status_code=202)
        await self._wait(worker, call)
        self.calls.drop(key)
        await self._persist("drop", key)
        assert call.outcome is not None
        return call.outcome.response()

    async def _wait(self, worker: str, call: Any) -> None:
        """Hold a simplex caller until its call has an outcome, failing it once the worker
        is gone."""
        step = min(1.0, self.gone_after_s / 4) if self.gone_after_s else None
        while not call.done.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(call.done.wait(), step)
            await self._reap(worker)

    async def _fetch(self, request: Request) -> Response:
        try:
            check_token(bearer(request.headers), self.caller_tokens, "relay")
            worker = self._worker_name(request)
            key = f"{worker}/{request.path_params['call_id']}"
            await self._reap(worker)
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
            await self._persist("drop", key)
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
            key = f"{worker}/{call_id}"
            if self._dispatched.pop(key, None) is not None:
                await self._persist("mark_running", key)
        self._requeue_stale(worker)
        item = await self._next(worker, wait)
        if item is None:
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

    async def _next(self, worker: str, wait: float) -> _Queued | None:
        """The worker's next call within `wait` seconds; only calls still waiting for an
        outcome are handed out (never one already failed as gone)."""
        queue = self._queue(worker)
        end = time.monotonic() + wait
        while True:
            left = end - time.monotonic()
            try:
                item = queue.get_nowait() if left <= 0 else await asyncio.wait_for(
                    queue.get(), left)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                return None
            call = self.calls.get(f"{worker}/{item.call_id}")
            if call is not None and call.outcome is None:
                return item  # else it failed (worker gone) or expired while queued

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
            if call.outcome is not None:  # failed as gone, or a second answer: keep the first
                raise CallNotFound(f"the relay is not waiting for call {key!r} any more")
            body = await read_body(request, self.max_body_bytes)
        except RPCError as exc:
            return error_response(exc)
        self._dispatched.pop(key, None)
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        try:  # durable before the worker hears "ok" and forgets the result
            await self._persist("finish", key, status, ctype, bytes(body),
                                time.time() - self.calls.ttl_s)
        except Exception as exc:
            return error_response(RPCError(f"the relay could not store the result: {exc}"))
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
            await self._persist("drop", key)


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
        result_retry_s: float = 600.0,
    ) -> None:
        """`result_retry_s`: how long (seconds) a result is offered to an unreachable relay."""
        if not WORKER_NAME_RE.match(name):
            raise ValueError(f"worker name {name!r} must be 1-128 of [A-Za-z0-9_.-]")
        self.worker = worker
        self.url = f"{relay_url.rstrip('/')}/{name}"
        self.name = name
        self.token = token
        self.verify = tls_verify(verify)
        self.result_retry_s = result_retry_s
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
        # Keep trying while the relay restarts (a durable relay waits for this result); give
        # up on an answer that says it is not waiting, or after result_retry_s seconds.
        end, pause = time.monotonic() + self.result_retry_s, 0.5
        while True:
            try:
                resp = await client.post(
                    url,
                    content=outcome.body.achunks(),
                    headers={**self._headers(), **outcome.headers()},
                )
                if resp.status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() + pause > end:
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

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
