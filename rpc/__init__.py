"""Plexus RPC: decorator-based duplex RPC over HTTP (see rpc/errors.py for the error family)."""

from __future__ import annotations

from rpc._callback import CallbackReceiver
from rpc._client import CallHandle, Remote, Stub, connect
from rpc._registry import Procedure, Registry, default_registry, procedure
from rpc._relay import Relay, RelayConnection
from rpc._relay_store import RelayRecord, RelayStore, SqliteRelayStore
from rpc._server import ServerThread
from rpc._wire import CONTENT_TYPE, decode, encode
from rpc._worker import Worker
from rpc.errors import (
    AuthError,
    BadArguments,
    CallNotFound,
    ConnectionLost,
    MalformedPayload,
    PayloadError,
    PayloadTooLarge,
    ProtocolError,
    RemoteError,
    RPCError,
    Timeout,
    TransportError,
    UnknownProcedure,
    UnsupportedValue,
    WorkerGone,
)

__all__ = [
    "CONTENT_TYPE",
    "AuthError",
    "BadArguments",
    "CallHandle",
    "CallNotFound",
    "CallbackReceiver",
    "ConnectionLost",
    "MalformedPayload",
    "PayloadError",
    "PayloadTooLarge",
    "Procedure",
    "ProtocolError",
    "RPCError",
    "Registry",
    "Relay",
    "RelayConnection",
    "RelayRecord",
    "RelayStore",
    "Remote",
    "RemoteError",
    "ServerThread",
    "SqliteRelayStore",
    "Stub",
    "Timeout",
    "TransportError",
    "UnknownProcedure",
    "UnsupportedValue",
    "Worker",
    "WorkerGone",
    "connect",
    "decode",
    "default_registry",
    "encode",
    "errors",
    "procedure",
]

from rpc import errors
