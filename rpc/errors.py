"""Exceptions raised by the rpc package, one family rooted at RPCError.

```
RPCError                     base of everything rpc raises
├── TransportError           the HTTP exchange failed
│   ├── Timeout              the deadline passed
│   ├── ConnectionLost       could not connect, or the connection dropped
│   ├── ProtocolError        the peer answered something that is not this protocol
│   └── WorkerGone           a relayed worker stopped polling (HTTP 503)
├── RemoteError              the procedure raised: .remote_type, .message, .remote_traceback
├── PayloadError             a body could not be carried
│   ├── PayloadTooLarge      over max_body_bytes (HTTP 413)
│   ├── MalformedPayload     not a valid body (HTTP 400)
│   └── UnsupportedValue     (also a TypeError) a value the wire format cannot carry
├── AuthError                missing or wrong bearer token (HTTP 401)
├── UnknownProcedure         no procedure of that name (HTTP 404)
├── BadArguments             (also a TypeError) arguments do not fit the signature (HTTP 400)
└── CallNotFound             no call with that id, or its result expired (HTTP 404)
```

Each class carries `code`, the stable string used in HTTP error bodies
`{"error": code, "detail": text}`, and `status`, the HTTP status that carries it.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BadArguments",
    "CallNotFound",
    "ConnectionLost",
    "MalformedPayload",
    "PayloadError",
    "PayloadTooLarge",
    "ProtocolError",
    "RPCError",
    "RemoteError",
    "Timeout",
    "TransportError",
    "UnknownProcedure",
    "UnsupportedValue",
    "WorkerGone",
]


class RPCError(Exception):
    """Base of every exception the rpc package raises."""

    code = "rpc_error"
    status = 500


class TransportError(RPCError):
    """The HTTP exchange with the peer failed."""

    code = "transport_error"
    status = 502


class Timeout(TransportError):
    """A deadline (seconds) passed before the call finished."""

    code = "timeout"
    status = 504


class ConnectionLost(TransportError):
    """The peer could not be reached, or the connection dropped mid-exchange."""

    code = "connection_lost"
    status = 502


class ProtocolError(TransportError):
    """The peer answered something that does not follow the rpc protocol."""

    code = "protocol_error"
    status = 502


class WorkerGone(TransportError):
    """The relay has not heard from the worker for its `gone_after_s`: its calls fail at once
    instead of waiting for the caller's timeout."""

    code = "worker_gone"
    status = 503


class RemoteError(RPCError):
    """The remote procedure raised; carries its type name, message and traceback text."""

    code = "remote_error"
    status = 500

    def __init__(self, remote_type: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.message = message
        self.remote_traceback = remote_traceback


class PayloadError(RPCError):
    """A request or result body could not be carried."""

    code = "payload_error"
    status = 400


class PayloadTooLarge(PayloadError):
    """The body is larger than the receiver's max_body_bytes."""

    code = "payload_too_large"
    status = 413


class MalformedPayload(PayloadError):
    """The body is not a valid rpc body (bad header, dtype, shape, length or content type)."""

    code = "malformed_payload"
    status = 400


class UnsupportedValue(PayloadError, TypeError):
    """A value has a type the wire format cannot carry (raised before anything is sent)."""

    code = "unsupported_value"
    status = 400


class AuthError(RPCError):
    """The bearer token is missing or not accepted."""

    code = "unauthorized"
    status = 401


class UnknownProcedure(RPCError):
    """The worker has no procedure of that name."""

    code = "unknown_procedure"
    status = 404


class BadArguments(RPCError, TypeError):
    """The arguments do not fit the procedure's signature."""

    code = "bad_arguments"
    status = 400


class CallNotFound(RPCError):
    """No duplex call with that id is known (never made, or its result expired)."""

    code = "call_not_found"
    status = 404


# Maps the `error` code of an HTTP error body back to the class the caller raises.
BY_CODE: dict[str, type[RPCError]] = {
    cls.code: cls
    for cls in (
        RPCError,
        TransportError,
        Timeout,
        ConnectionLost,
        ProtocolError,
        PayloadError,
        PayloadTooLarge,
        MalformedPayload,
        UnsupportedValue,
        AuthError,
        UnknownProcedure,
        BadArguments,
        CallNotFound,
        WorkerGone,
    )
}
