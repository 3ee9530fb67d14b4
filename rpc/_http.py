"""HTTP pieces shared by the worker, the relay, the callback receiver and the caller."""

from __future__ import annotations

import asyncio
import collections
import hmac
import os
import re
import ssl
import threading
import time
import traceback
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

from rpc._poster import Poster, PostError
from rpc._wire import CHUNK_BYTES, CONTENT_TYPE, Buffer, Encoded, alloc, encode_result
from rpc.errors import (
    AuthError,
    MalformedPayload,
    PayloadTooLarge,
    RemoteError,
    RPCError,
)

CALL_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
STATUS_HEADER = "x-rpc-status"
CALL_ID_HEADER = "x-rpc-call-id"
MODE_HEADER = "x-rpc-mode"
CALLBACK_HEADER = "x-rpc-callback"
CALLBACK_TOKEN_HEADER = "x-rpc-callback-token"
PROCEDURE_HEADER = "x-rpc-procedure"

# The default limit on one request body, in bytes.
DEFAULT_MAX_BODY_BYTES = 2**31


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else "bad_request"
    if exc.status_code == 405:
        code = "method_not_allowed"
    return JSONResponse(
        error_body(code, f"{request.method} {request.url.path}: {exc.detail}"),
        status_code=exc.status_code,
    )


def json_app(routes: list[BaseRoute]) -> Starlette:
    """A Starlette app whose unrouted requests also get JSON error bodies."""
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


# verify=True's SSLContext, one per process (per SSL_CERT_FILE / SSL_CERT_DIR in force).
_DEFAULT_CONTEXTS: dict[tuple[str | None, str | None], ssl.SSLContext] = {}
_DEFAULT_LOCK = threading.Lock()


def tls_verify(verify: Any) -> Any:
    """httpx's `verify` option; a CA bundle path becomes an SSLContext (httpx 0.28 deprecates
    paths), and `True` the process's shared default context.

    httpx builds a new SSLContext for every client given `verify=True`, loading the whole CA
    bundle each time (about 0.1 s of CPU and 0.9 MB per client); an orchestrator holds a
    stub per learner, so 10,000 learners cost minutes of its event loop and gigabytes
    (benchmarks/capacity.py). One context serves any number of clients: built once, the same
    way httpx would (certifi, or SSL_CERT_FILE / SSL_CERT_DIR when set).
    """
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    if verify is True:
        key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        with _DEFAULT_LOCK:
            ctx = _DEFAULT_CONTEXTS.get(key)
            if ctx is None:
                ctx = _DEFAULT_CONTEXTS[key] = httpx.create_ssl_context(verify=True)
        return ctx
    return verify


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {"error": code, "detail": detail, **extra}


def error_response(exc: RPCError) -> Response:
    """Answer an RPCError with its status and a JSON body {"error", "detail"}."""
    headers = {}
    if isinstance(exc, PayloadTooLarge):
        # The body was not read; closing the connection keeps the client from sending it all.
        headers["connection"] = "close"
    return JSONResponse(error_body(exc.code, str(exc)), status_code=exc.status, headers=headers)


def bearer(request_headers: Any) -> str | None:
    """The bearer token of a request, or None."""
    value = request_headers.get("authorization")
    if not value or not value.lower().startswith("bearer "):
        return None
    token: str = value[7:].strip()
    return token


def check_token(presented: str | None, accepted: Collection[str] | None, what: str) -> None:
    """Raise AuthError unless `presented` is one of `accepted` (None = no auth configured)."""
    if accepted is None:
        return
    if presented is None:
        raise AuthError(f"{what} needs an 'Authorization: Bearer <token>' header")
    # Compare against every token so the time taken does not reveal which prefix matched.
    ok = False
    for token in accepted:
        ok |= hmac.compare_digest(presented.encode(), token.encode())
    if not ok:
        raise AuthError(f"the bearer token is not accepted by this {what}; check the token")


def check_content_type(request: Request) -> None:
    """Raise MalformedPayload unless the body is declared as an rpc body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != CONTENT_TYPE:
        raise MalformedPayload(
            f"content type {ctype or '(none)'!r} is not {CONTENT_TYPE!r}; "
            "send bodies made by the rpc client"
        )


def declared_length(headers: Any, limit: int) -> int | None:
    """The Content-Length (bytes), checked against `limit` before anything is read."""
    raw = headers.get("content-length")
    if raw is None:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise MalformedPayload(f"Content-Length {raw!r} is not an integer") from None
    if n < 0:
        raise MalformedPayload(f"Content-Length {n} is negative")
    if n > limit:
        raise PayloadTooLarge(
            f"body of {n} bytes exceeds the limit of {limit} bytes; "
            "send less or raise max_body_bytes on the receiver"
        )
    return n


async def read_body(request: Request, limit: int) -> Buffer:
    """Read a request body (bytes) into one buffer, refusing more than `limit` bytes."""
    n = declared_length(request.headers, limit)
    try:
        if n is not None:
            buf = alloc(n)
            pos = 0
            async for chunk in request.stream():
                end = pos + len(chunk)
                if end > n:
                    raise MalformedPayload(f"body is longer than its Content-Length {n}")
                buf[pos:end] = chunk
                pos = end
            if pos != n:
                raise MalformedPayload(f"truncated body: got {pos} of {n} bytes")
            return buf
        grow = bytearray()
        async for chunk in request.stream():
            if len(grow) + len(chunk) > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes; send less")
            grow += chunk
        return grow
    except ClientDisconnect:
        raise MalformedPayload("the client disconnected before sending the whole body") from None


@dataclass
class Outcome:
    """What a call produced, ready to send: a result body or a JSON error body."""

    status: int
    content_type: str
    body: Encoded

    @classmethod
    def result(cls, value: Any) -> Outcome:
        """Encode a return value; an unencodable value becomes a remote error."""
        try:
            return cls(200, CONTENT_TYPE, encode_result(value))
        except RPCError as exc:
            return cls.error(RemoteError(type(exc).__name__, f"the return value: {exc}"))

    @classmethod
    def raised(cls, exc: Exception) -> Outcome:
        """What a procedure that raised produces: always a remote error, whatever the type.

        An rpc error raised inside a procedure (say, a nested call's Timeout) is the
        procedure's failure, not this call's: the caller must not mistake it for its own.
        """
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls.error(RemoteError(type(exc).__name__, str(exc), tb))

    @classmethod
    def error(cls, exc: BaseException) -> Outcome:
        """An error outcome: RPCErrors keep their code, other exceptions are remote errors."""
        import json

        if isinstance(exc, RemoteError):
            body = error_body(
                exc.code, exc.message, type=exc.remote_type, traceback=exc.remote_traceback
            )
            status = exc.status
        elif isinstance(exc, RPCError):
            body, status = error_body(exc.code, str(exc)), exc.status
        else:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            body = error_body(RemoteError.code, str(exc), type=type(exc).__name__, traceback=tb)
            status = RemoteError.status
        data = json.dumps(body).encode()
        return cls(status, "application/json", Encoded([data], len(data)))

    def response(self) -> Response:
        """The outcome as a streamed HTTP response."""
        headers = {"content-length": str(self.body.nbytes)}
        if len(self.body.pieces) == 1 and self.body.nbytes <= CHUNK_BYTES:
            return Response(
                bytes(self.body.pieces[0]), self.status, headers, media_type=self.content_type
            )
        return StreamingResponse(
            self.body.achunks(), self.status, headers, media_type=self.content_type
        )

    def headers(self) -> dict[str, str]:
        """Headers that carry this outcome in a request (callbacks, relay results)."""
        return {
            "content-type": self.content_type,
            "content-length": str(self.body.nbytes),
            STATUS_HEADER: str(self.status),
        }


@dataclass
class StoredCall:
    """A duplex call known to a store: running, or finished and waiting to be fetched."""

    outcome: Outcome | None = None
    expires_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class CallStore:
    """Duplex calls by id; finished results expire `ttl_s` seconds after they finish."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._calls: dict[str, StoredCall] = {}
        # (expires_at, call id) in the order calls finished, which is expiry order (one TTL):
        # purging pops expired entries off the front instead of scanning every call, which
        # made each call cost O(stored results).
        self._expiry: collections.deque[tuple[float, str]] = collections.deque()

    def _purge(self) -> None:
        now = time.monotonic()
        expiry = self._expiry
        while expiry and expiry[0][0] < now:
            at, key = expiry.popleft()
            call = self._calls.get(key)
            # The id may have been dropped (and even reused) since: only its own expiry counts.
            if call is not None and call.expires_at == at:
                del self._calls[key]

    def begin(self, call_id: str) -> StoredCall:
        """Register a new running call; a reused id is a malformed request."""
        self._purge()
        if call_id in self._calls:
            raise MalformedPayload(f"call id {call_id!r} is already in use; use a fresh id")
        call = StoredCall()
        self._calls[call_id] = call
        return call

    def finish(self, call_id: str, outcome: Outcome) -> None:
        """Record the outcome of a call and start its expiry clock."""
        call = self._calls.get(call_id)
        if call is None:
            return
        call.outcome = outcome
        call.expires_at = time.monotonic() + self.ttl_s
        self._expiry.append((call.expires_at, call_id))
        call.done.set()

    def get(self, call_id: str) -> StoredCall | None:
        """The call, or None when unknown or expired."""
        self._purge()
        call = self._calls.get(call_id)
        if call is not None and call.expires_at is not None and call.expires_at < time.monotonic():
            return None  # expired, behind one that expires later (ttl_s was changed)
        return call

    def running(self, prefix: str = "") -> list[str]:
        """Ids (starting with `prefix`) of the calls that have no outcome yet."""
        return [k for k, c in self._calls.items() if c.outcome is None and k.startswith(prefix)]

    def drop(self, call_id: str) -> None:
        """Forget a call (its result was delivered or fetched)."""
        self._calls.pop(call_id, None)

    def __len__(self) -> int:
        return len(self._calls)


class ClientPool:
    """One httpx.AsyncClient per event loop: clients must not cross loops."""

    def __init__(self, verify: Any = True) -> None:
        self._verify = tls_verify(verify)
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._posters: dict[asyncio.AbstractEventLoop, Poster] = {}
        # Loops in several threads may ask at once (e.g. acall from two asyncio.run threads).
        self._lock = threading.Lock()

    def get(self) -> httpx.AsyncClient:
        """The client of the running loop (made on first use)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            for old in [lp for lp in self._clients if lp.is_closed()]:
                del self._clients[old]
            client = self._clients.get(loop)
            if client is None:
                client = httpx.AsyncClient(
                    verify=self._verify, timeout=httpx.Timeout(30.0, connect=3.0)
                )
                self._clients[loop] = client
            return client

    def poster(self) -> Poster:
        """The result poster of the running loop (made on first use)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            for old in [lp for lp in self._posters if lp.is_closed()]:
                del self._posters[old]
            poster = self._posters.get(loop)
            if poster is None:
                poster = self._posters[loop] = Poster(self._verify)
            return poster


async def deliver(
    pool: ClientPool, url: str, secret: str | None, call_id: str, outcome: Outcome
) -> bool:
    """POST an outcome to a caller's callback receiver; True when it was accepted.

    Two attempts; failure is not an error, the caller then fetches the result by id. The POST
    goes out through the pool's small kept-alive client (`rpc._poster`), or through httpx when
    the environment routes the receiver through a proxy.
    """
    headers = {**outcome.headers(), CALL_ID_HEADER: call_id}
    if secret:
        headers["authorization"] = f"Bearer {secret}"
    target = f"{url.rstrip('/')}/result/{call_id}"
    direct = Poster.applies(target)
    for attempt in range(2):
        try:
            if direct:
                status = await pool.poster().post(
                    target, headers, outcome.body.chunks(), outcome.body.nbytes
                )
            else:
                resp = await pool.get().post(
                    target, content=outcome.body.achunks(), headers=headers
                )
                status = resp.status_code
        except (httpx.HTTPError, PostError):
            if attempt == 0:
                await asyncio.sleep(0.2)
            continue
        # 404: the caller gave up on this call, so there is nobody to retry for.
        return status == 200
    return False
