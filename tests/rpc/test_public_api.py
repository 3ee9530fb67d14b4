"""`rpc.__all__` lists exactly the public names, and importing rpc stays light."""

from __future__ import annotations

import subprocess
import sys

import rpc

# The public surface, written out: adding or removing a name is a deliberate API change that
# shows up in this file's diff (docs/rpc.md documents each one).
PUBLIC = [
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


def test_all_is_the_pinned_list() -> None:
    assert rpc.__all__ == PUBLIC


def test_all_is_exactly_the_public_names() -> None:
    # `annotations` is the __future__ feature bound by `from __future__ import annotations`.
    public = {n for n in dir(rpc) if not n.startswith("_")} - {"annotations"}
    assert public == set(rpc.__all__)
    assert len(rpc.__all__) == len(set(rpc.__all__))


def test_public_objects_come_from_the_package() -> None:
    for name in rpc.__all__:
        obj = getattr(rpc, name)
        if isinstance(obj, str):
            continue
        module = getattr(obj, "__module__", None) or getattr(obj, "__name__", "")
        assert module.startswith("rpc"), (name, module)


def test_import_rpc_does_not_import_torch_or_fastapi() -> None:
    code = "import sys, rpc; print('torch' in sys.modules, 'fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
