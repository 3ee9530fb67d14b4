"""Caller side: `connect`, the per-procedure Stub and its three calling styles."""

from __future__ import annotations

import concurrent.futures
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from rpc._callback import CallbackReceiver, RawOutcome, Waiter, default_receiver
from rpc._http import (
    CALL_ID_HEADER,
    CALLBACK_HEADER,
    CALLBACK_TOKEN_HEADER,
    MODE_HEADER,
    ClientPool,
    tls_verify,
)
from rpc._wire import CONTENT_TYPE, Buffer, Encoded, alloc, decode_result, encode_call
from rpc.errors import (
    BY_CODE,
    CallNotFound,
    ConnectionLost,
    ProtocolError,
    RemoteError,
    RPCError,
    Timeout,
    TransportError,
)

# A duplex caller gives up after this many polls in a row fail at the transport level
# (and no callback arrived): the worker is gone, not just briefly unreachable.
_MAX_POLL_FAILURES = 5
_FIRST_POLL_S = 0.25
# Procedure names whose parsed call URL a Remote keeps.
_MAX_CACHED_URLS = 1024
# A body up to this size is handed to httpx as one bytes object (one piece, no generator).
_SMALL_BODY = 1 << 16


def _map_transport(exc: httpx.HTTPError, what: str) -> TransportError:
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"{what}: timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.TransportError):
        return ConnectionLost(f"{what}: {type(exc).__name__}: {exc}; is the worker running?")
    return TransportError(f"{what}: {type(exc).__name__}: {exc}")


def unwrap(raw: RawOutcome) -> Any:
    """Decode a result body, or raise the error an error body describes."""
    if raw.status == 200 and raw.content_type == CONTENT_TYPE:
        return decode_result(raw.body)
    try:
        info = json.loads(bytes(raw.body))
        code, detail = info["error"], info["detail"]
    except (ValueError, KeyError, TypeError, RecursionError):
        head = bytes(raw.body[:200]).decode(errors="replace")
        raise ProtocolError(
            f"unexpected answer: HTTP {raw.status} {raw.content_type!r}: {head!r}; "
            "is the URL an rpc worker?"
        ) from None
    if code == RemoteError.code:
        raise RemoteError(str(info.get("type", "Exception")), detail, info.get("traceback", ""))
    raise BY_CODE.get(code, ProtocolError)(detail)


def _is_outcome(raw: RawOutcome) -> bool:
    """True when a fetch returned the call's outcome (not "no such call")."""
    head = bytes(raw.body[:256])
    return not (raw.status == CallNotFound.status and b'"call_not_found"' in head)


class _Deadline:
    """Seconds left until a deadline (None = no deadline)."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    def left(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def httpx(self, cap: float | None = None) -> httpx.Timeout:
        left = self.left()
        if cap is not None:
            left = cap if left is None else min(left, cap)
        return httpx.Timeout(left, connect=10.0 if left is None else min(10.0, left))


def _read_sync(resp: httpx.Response) -> Buffer:
    n = resp.headers.get("content-length")
    if n is not None and "content-encoding" not in resp.headers:
        buf = alloc(int(n))
        pos = 0
        for chunk in resp.iter_bytes():
            buf[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        if pos != len(buf):
            raise ConnectionLost(f"answer truncated: got {pos} of {len(buf)} bytes")
        return buf
    out = bytearray()
    for chunk in resp.iter_bytes():
        out += chunk
    return out


async def _read_async(resp: httpx.Response) -> Buffer:
    n = resp.headers.get("content-length")
    if n is not None and "content-encoding" not in resp.headers:
        buf = alloc(int(n))
        pos = 0
        async for chunk in resp.aiter_bytes():
            buf[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        if pos != len(buf):
            raise ConnectionLost(f"answer truncated: got {pos} of {len(buf)} bytes")
        return buf
    out = bytearray()
    async for chunk in resp.aiter_bytes():
        out += chunk
    return out


def _content(body: Encoded) -> Any:
    """What httpx sends: a small body as one bytes object, a large one as slices."""
    if body.nbytes <= _SMALL_BODY:
        return body.join()
    return body.chunks()


def _acontent(body: Encoded) -> Any:
    if body.nbytes <= _SMALL_BODY:
        return body.join()
    return body.achunks()


def _raw(resp: httpx.Response, body: Buffer) -> RawOutcome:
    ctype = resp.headers.get("content-type", "").split(";")[0].strip()
    return RawOutcome(resp.status_code, ctype, body)


class _DaemonPool:
    """Daemon threads reused across `start()` calls.

    Creating a thread per call costs more than a no-op call itself; a ThreadPoolExecutor's
    threads would hold up interpreter exit while a duplex call waits. Threads are kept at the
    peak number of concurrent calls and never exit.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._queue.put(fn)
        if spawn:
            threading.Thread(target=self._work, name="rpc-call", daemon=True).start()

    def _work(self) -> None:
        while True:
            self._queue.get()()
            with self._lock:
                self._idle += 1


_pool = _DaemonPool()


class CallHandle:
    """A call running in the background; `join` waits for its result."""

    def __init__(
        self, call_id: str, future: concurrent.futures.Future[Any], default_timeout: float | None
    ) -> None:
        self.call_id = call_id
        self._future = future
        self._default_timeout = default_timeout

    def done(self) -> bool:
        """True once the result (or error) is in."""
        return self._future.done()

    def join(self, timeout: float | None = None) -> Any:
        """The result, waiting at most `timeout` seconds (default: the connection's timeout).

        Raises rpc.Timeout when it is not done by then; the handle stays valid.
        """
        wait = self._default_timeout if timeout is None else timeout
        try:
            return self._future.result(wait)
        except concurrent.futures.TimeoutError:
            raise Timeout(
                f"call {self.call_id} did not finish within {wait} s; it is still running, "
                "join() again to keep waiting"
            ) from None


class Stub:
    """One remote procedure: `stub(...)`, `stub.start(...)`, `await stub.acall(...)`."""

    def __init__(self, remote: Remote, name: str) -> None:
        self.remote = remote
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call and block until the result is in (raises RPCError subclasses)."""
        return self.remote.call(self.name, args, kwargs)

    def start(self, *args: Any, **kwargs: Any) -> CallHandle:
        """Start the call in the background and return a handle at once."""
        return self.remote.start(self.name, args, kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """Call from asyncio without blocking the event loop."""
        return await self.remote.acall(self.name, args, kwargs)

    def __repr__(self) -> str:
        return f"<rpc.Stub {self.name} at {self.remote.url}>"


class Remote:
    """A connection to one worker (or one worker behind a relay); attributes are stubs."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        duplex: bool = False,
        timeout: float | None = None,
        verify: Any = True,
        callback: CallbackReceiver | None = None,
        poll_interval_s: float = 5.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.duplex = duplex
        self.timeout = timeout
        self.poll_interval_s = poll_interval_s
        self._callback = callback
        self._verify = tls_verify(verify)
        # Made on the first blocking call: a caller that only uses `acall` (the
        # orchestrator's stub per learner) never pays for a client it does not use.
        self._sync: httpx.Client | None = None
        self._sync_lock = threading.Lock()
        self._aclients = ClientPool(self._verify)
        # Parsed call URLs by procedure name: httpx parses a string URL on every request,
        # which is a visible share of a no-op call.
        self._call_urls: dict[str, httpx.URL] = {}

    # ------------------------------------------------------------------------ public surface

    def __getattr__(self, name: str) -> Stub:
        if name.startswith("_"):
            raise AttributeError(name)
        return Stub(self, name)

    def __getitem__(self, name: str) -> Stub:
        return Stub(self, name)

    @property
    def _client(self) -> httpx.Client:
        """The client of blocking calls (made on first use)."""
        with self._sync_lock:
            if self._sync is None:
                self._sync = httpx.Client(verify=self._verify, timeout=None)
            return self._sync

    def close(self) -> None:
        """Close the pooled connections of blocking calls."""
        with self._sync_lock:
            sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()

    async def aclose(self) -> None:
        """Close the pooled connections of `acall` on the running loop."""
        await self._aclients.get().aclose()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "duplex" if self.duplex else "simplex"
        return f"<rpc.Remote {self.url} {mode}>"

    # ---------------------------------------------------------------------- call machinery

    def _call_url(self, name: str) -> httpx.URL:
        url = self._call_urls.get(name)
        if url is None:
            url = httpx.URL(f"{self.url}/call/{name}")
            if len(self._call_urls) < _MAX_CACHED_URLS:
                self._call_urls[name] = url
        return url

    def _headers(self, call_id: str) -> dict[str, str]:
        headers = {"content-type": CONTENT_TYPE, CALL_ID_HEADER: call_id}
        if self.token is not None:
            headers["authorization"] = f"Bearer {self.token}"
        return headers

    def _receiver(self) -> CallbackReceiver:
        receiver = self._callback if self._callback is not None else default_receiver()
        if receiver.public_url is None:
            raise RPCError(
                "the callback receiver has no public_url; start() it or pass public_url="
            )
        return receiver

    def _prepare(
        self, call_id: str, body: Encoded
    ) -> tuple[dict[str, str], CallbackReceiver | None, Waiter | None]:
        headers = self._headers(call_id)
        headers["content-length"] = str(body.nbytes)
        if not self.duplex:
            return headers, None, None
        receiver = self._receiver()
        assert receiver.public_url is not None
        headers[MODE_HEADER] = "duplex"
        headers[CALLBACK_HEADER] = receiver.public_url
        headers[CALLBACK_TOKEN_HEADER] = receiver.secret
        return headers, receiver, receiver.expect(call_id)

    def call(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], call_id: str = ""
    ) -> Any:
        """Blocking call of procedure `name` (what `stub(...)` does)."""
        call_id = call_id or uuid.uuid4().hex
        return self._call_encoded(name, encode_call(args, kwargs), call_id)

    def _call_encoded(self, name: str, body: Encoded, call_id: str) -> Any:
        deadline = _Deadline(self.timeout)
        headers, receiver, waiter = self._prepare(call_id, body)
        what = f"call {name} at {self.url}"
        try:
            try:
                with self._client.stream(
                    "POST",
                    self._call_url(name),
                    content=_content(body),
                    headers=headers,
                    timeout=deadline.httpx(),
                ) as resp:
                    raw = _raw(resp, _read_sync(resp))
            except httpx.HTTPError as exc:
                raise _map_transport(exc, what) from None
            del body
            if waiter is None or raw.status != 202:
                return unwrap(raw)
            return self._wait_sync(name, call_id, waiter, deadline)
        finally:
            if receiver is not None:
                receiver.forget(call_id)

    def _wait_sync(self, name: str, call_id: str, waiter: Waiter, deadline: _Deadline) -> Any:
        interval = _FIRST_POLL_S
        failures = 0
        while True:
            left = deadline.left()
            if waiter.wait(interval if left is None else min(interval, left)):
                assert waiter.outcome is not None
                return unwrap(waiter.outcome)
            if deadline.expired():
                raise Timeout(
                    f"call {name} ({call_id}) did not finish within {deadline.timeout_s} s; "
                    "raise timeout= or use stub.start() and join() later"
                )
            try:
                raw = self._poll_sync(call_id, deadline)
                failures = 0
            except TransportError:
                failures += 1
                if failures >= _MAX_POLL_FAILURES:
                    raise
                raw = None
            if raw is not None:
                return self._fetched(raw, call_id, waiter)
            interval = min(interval * 2, self.poll_interval_s)

    def _poll_sync(self, call_id: str, deadline: _Deadline) -> RawOutcome | None:
        url = f"{self.url}/calls/{call_id}"
        try:
            with self._client.stream(
                "GET", url, headers=self._headers(call_id), timeout=deadline.httpx(cap=30.0)
            ) as resp:
                if resp.status_code == 202:
                    return None
                raw = _raw(resp, _read_sync(resp))
            if _is_outcome(raw):
                self._client.delete(url, headers=self._headers(call_id), timeout=5.0)
        except httpx.HTTPError as exc:
            raise _map_transport(exc, f"fetch of call {call_id}") from None
        return raw

    @staticmethod
    def _fetched(raw: RawOutcome, call_id: str, waiter: Waiter) -> Any:
        # The callback may have landed between our wait and the fetch that found nothing.
        if not _is_outcome(raw) and waiter.outcome is not None:
            return unwrap(waiter.outcome)
        return unwrap(raw)

    def start(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallHandle:
        """Start a call in a background thread (what `stub.start(...)` does)."""
        call_id = uuid.uuid4().hex
        body = encode_call(args, kwargs)  # unsupported values fail here, in the caller
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self._call_encoded(name, body, call_id))
            except BaseException as exc:
                future.set_exception(exc)

        _pool.submit(run)
        return CallHandle(call_id, future, self.timeout)

    async def acall(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Asynchronous call (what `await stub.acall(...)` does)."""
        call_id = uuid.uuid4().hex
        body = encode_call(args, kwargs)
        deadline = _Deadline(self.timeout)
        headers, receiver, waiter = self._prepare(call_id, body)
        client = self._aclients.get()
        what = f"call {name} at {self.url}"
        try:
            try:
                request = client.build_request(
                    "POST",
                    self._call_url(name),
                    content=_acontent(body),
                    headers=headers,
                    timeout=deadline.httpx(),
                )
                resp = await client.send(request, stream=True)
                try:
                    raw = _raw(resp, await _read_async(resp))
                finally:
                    await resp.aclose()
            except httpx.HTTPError as exc:
                raise _map_transport(exc, what) from None
            del body
            if waiter is None or raw.status != 202:
                return unwrap(raw)
            return await self._wait_async(name, call_id, waiter, deadline, client)
        finally:
            if receiver is not None:
                receiver.forget(call_id)

    async def _wait_async(
        self,
        name: str,
        call_id: str,
        waiter: Waiter,
        deadline: _Deadline,
        client: httpx.AsyncClient,
    ) -> Any:
        interval = _FIRST_POLL_S
        failures = 0
        url = f"{self.url}/calls/{call_id}"
        while True:
            left = deadline.left()
            if await waiter.await_(interval if left is None else min(interval, left)):
                assert waiter.outcome is not None
                return unwrap(waiter.outcome)
            if deadline.expired():
                raise Timeout(
                    f"call {name} ({call_id}) did not finish within {deadline.timeout_s} s; "
                    "raise timeout= or keep the call running with stub.start()"
                )
            raw: RawOutcome | None = None
            try:
                resp = await client.send(
                    client.build_request(
                        "GET", url, headers=self._headers(call_id), timeout=deadline.httpx(30.0)
                    ),
                    stream=True,
                )
                try:
                    if resp.status_code != 202:
                        raw = _raw(resp, await _read_async(resp))
                finally:
                    await resp.aclose()
                if raw is not None and _is_outcome(raw):
                    await client.delete(url, headers=self._headers(call_id), timeout=5.0)
                failures = 0
            except httpx.HTTPError as exc:
                failures += 1
                if failures >= _MAX_POLL_FAILURES:
                    raise _map_transport(exc, f"fetch of call {call_id}") from None
            if raw is not None:
                return self._fetched(raw, call_id, waiter)
            interval = min(interval * 2, self.poll_interval_s)


def connect(
    url: str,
    *,
    token: str | None = None,
    duplex: bool = False,
    timeout: float | None = None,
    verify: Any = True,
    callback: CallbackReceiver | None = None,
    poll_interval_s: float = 5.0,
) -> Remote:
    """Connect to a worker at `url` (or `relay_url + "/" + name`); attributes are stubs.

    `timeout` and `poll_interval_s` are in seconds; see docs/rpc.md for every option.
    """
    return Remote(
        url,
        token=token,
        duplex=duplex,
        timeout=timeout,
        verify=verify,
        callback=callback,
        poll_interval_s=poll_interval_s,
    )
