"""A small HTTP/1.1 client for one job: POSTing duplex results to callback receivers.

httpx.AsyncClient spends about 1 ms of CPU per request on a slow core (anyio, httpcore's
pool, h11); a duplex no-op is two exchanges, and the worker's result POST was its most
expensive part (benchmarks/rpc_overhead.py). This client writes the request head and a small
body in one send on a kept-alive asyncio connection and reads a small answer back, which costs
a tenth of that. It speaks only what a callback needs: POST with a Content-Length body, an
answer with Content-Length, chunked or close-delimited body (read and bounded, then dropped).
Proxies: when the environment names a proxy for the receiver, `Poster.applies` is False and the
caller uses httpx, which honours it.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

# Seconds to connect (TCP and TLS) and for the whole exchange; as the httpx pool had them.
CONNECT_TIMEOUT_S = 3.0
TIMEOUT_S = 30.0
# A receiver's answer is a small JSON object; anything longer is read no further.
MAX_ANSWER_BYTES = 1 << 16
# Idle connections kept per receiver (host, port, scheme).
MAX_IDLE = 8
# Bodies up to this size go out in the same send as the request head.
_INLINE_BYTES = 1 << 16


class PostError(Exception):
    """The POST failed at the transport or protocol level (the caller may retry)."""


def _clean(text: str) -> bool:
    return text.isascii() and all(" " < c < "\x7f" for c in text)


def _no_verify_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Target:
    """A parsed callback URL."""

    def __init__(self, url: str) -> None:
        try:
            parts = urlsplit(url)
        except ValueError:
            raise PostError(f"callback URL {url[:200]!r} is not a URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PostError(f"callback URL {url[:200]!r} is not an http(s) URL")
        self.scheme = parts.scheme
        self.host = parts.hostname
        try:
            port = parts.port
        except ValueError:
            raise PostError(f"callback URL {url[:200]!r} has a bad port") from None
        self.port = port if port is not None else (443 if self.scheme == "https" else 80)
        self.netloc = parts.netloc.rpartition("@")[2]
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not _clean(self.netloc) or not _clean(self.path):
            raise PostError(f"callback URL {url[:200]!r} holds characters HTTP cannot carry")
        self.key = (self.scheme, self.host, self.port)


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Poster:
    """Kept-alive connections of one event loop to callback receivers."""

    def __init__(self, verify: Any) -> None:
        """`verify`: as `rpc._http.tls_verify` returns it (an SSLContext, or False)."""
        if isinstance(verify, ssl.SSLContext):
            self._ssl: ssl.SSLContext = verify
        elif verify is False:
            self._ssl = _no_verify_context()
        else:
            self._ssl = ssl.create_default_context()
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}

    @staticmethod
    def applies(url: str) -> bool:
        """False when the environment routes `url` through a proxy (httpx handles those)."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return True  # not a URL: post() says so
        proxies = urllib.request.getproxies()
        if parts.scheme not in proxies and "all" not in proxies:
            return True
        return bool(parts.hostname) and bool(urllib.request.proxy_bypass(parts.hostname or ""))

    async def post(
        self, url: str, headers: dict[str, str], body: Iterable[bytes], nbytes: int
    ) -> int:
        """POST `nbytes` of `body` to `url`; the answer's status code. Raises PostError."""
        target = _Target(url)
        for name, value in headers.items():
            if not (_clean(name) and value.isascii() and value.isprintable()):
                raise PostError(f"header {name[:50]!r} cannot be sent")
        head = [f"POST {target.path} HTTP/1.1", f"host: {target.netloc}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode()
        try:
            return await asyncio.wait_for(
                self._exchange(target, head_bytes, body, nbytes), TIMEOUT_S
            )
        except asyncio.TimeoutError:
            raise PostError(f"no answer from {target.netloc} within {TIMEOUT_S} s") from None

    async def _exchange(
        self, target: _Target, head: bytes, body: Iterable[bytes], nbytes: int
    ) -> int:
        chunks = iter(body)
        first = next(chunks, b"") if nbytes <= _INLINE_BYTES else b""
        reused = self._take(target.key)
        if reused is not None:
            try:
                return await self._send(target, reused, head, first, chunks)
            except PostError:
                # Most likely the receiver closed the idle connection (keep-alive timeout).
                # A small body went out whole in `first`: send it again on a new connection.
                # A large one was partly consumed; the caller's retry starts it afresh.
                if nbytes > _INLINE_BYTES:
                    raise
        conn = await self._connect(target)
        return await self._send(target, conn, head, first, chunks)

    def _take(self, key: tuple[str, str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        while idle:
            reader, writer = idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return None

    async def _connect(self, target: _Target) -> _Conn:
        tls = self._ssl if target.scheme == "https" else None
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    target.host,
                    target.port,
                    ssl=tls,
                    server_hostname=target.host if tls is not None else None,
                ),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            raise PostError(f"cannot connect to {target.netloc}: {exc!r}") from None

    async def _send(
        self, target: _Target, conn: _Conn, head: bytes, first: bytes, rest: Iterable[bytes]
    ) -> int:
        reader, writer = conn
        keep = False
        try:
            writer.write(head + bytes(first) if first else head)
            for chunk in rest:
                writer.write(chunk)
                await writer.drain()
            await writer.drain()
            status, keep = await self._answer(reader)
            return status
        except PostError:
            raise
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
            raise PostError(f"exchange with {target.netloc} failed: {exc!r}") from None
        finally:
            if keep:
                idle = self._idle.setdefault(target.key, [])
                if len(idle) < MAX_IDLE:
                    idle.append(conn)
                else:
                    writer.close()
            else:
                writer.close()

    @staticmethod
    async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
        """Read one answer; (status, whether the connection can be reused)."""
        line = await reader.readuntil(b"\r\n")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise PostError(f"not an HTTP answer: {line[:100]!r}")
        status = int(parts[1])
        keep = parts[0] == b"HTTP/1.1"
        length: int | None = None
        chunked = False
        total = len(line)
        while True:
            line = await reader.readuntil(b"\r\n")
            total += len(line)
            if total > MAX_ANSWER_BYTES:
                raise PostError("answer head too long")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.endswith(b"chunked")
            elif name == b"connection":
                keep = keep and value != b"close"
        if chunked:
            await Poster._skip_chunked(reader)
        elif length is not None:
            if length > MAX_ANSWER_BYTES:
                raise PostError(f"answer body of {length} bytes is too long")
            await reader.readexactly(length)
        elif status not in (204, 304) and not 100 <= status < 200:
            keep = False  # close-delimited: read a bounded amount, then drop the connection
            await reader.read(MAX_ANSWER_BYTES)
        return status, keep

    @staticmethod
    async def _skip_chunked(reader: asyncio.StreamReader) -> None:
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            total += size
            if total > MAX_ANSWER_BYTES:
                raise PostError("chunked answer body too long")
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return
            await reader.readexactly(size + 2)

    def close(self) -> None:
        """Close every idle connection."""
        for conns in self._idle.values():
            for _, writer in conns:
                writer.close()
        self._idle.clear()
