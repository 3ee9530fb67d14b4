"""Stubs share one default TLS context and make no blocking client until a blocking call.

An orchestrator holds one stub per learner; before this, each stub built two httpx clients,
each loading the CA bundle into its own SSLContext (0.1 s of CPU, 0.9 MB each), which
`benchmarks/capacity.py` showed as the first limit of one orchestrator.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest

import rpc
from rpc._http import ClientPool, tls_verify


def test_verify_true_is_one_shared_context() -> None:
    first, second = tls_verify(True), tls_verify(True)
    assert isinstance(first, ssl.SSLContext)
    assert first is second
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname


def test_ssl_cert_file_gets_its_own_context(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    default = tls_verify(True)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    custom = tls_verify(True)
    assert custom is not default
    assert custom is tls_verify(True)
    # The custom context trusts exactly the bundle it was told to.
    assert len(custom.get_ca_certs()) == 1


def test_false_and_contexts_pass_through() -> None:
    ctx = ssl.create_default_context()
    assert tls_verify(False) is False
    assert tls_verify(ctx) is ctx


def test_stubs_share_the_context_and_build_no_blocking_client(server: rpc.ServerThread,
                                                              clean_probe: Any) -> None:
    remotes = [rpc.connect(server.url) for _ in range(3)]
    assert all(r._sync is None for r in remotes)  # nothing built for blocking calls yet
    pools = [ClientPool(True) for _ in range(2)]
    assert pools[0]._verify is pools[1]._verify is tls_verify(True)

    async def go() -> list[Any]:
        return [await r.add.acall(i, 1) for i, r in enumerate(remotes)]

    assert asyncio.run(go()) == [1, 2, 3]
    assert all(r._sync is None for r in remotes)  # acall alone never makes one
    assert remotes[0].add(2, 2) == 4  # a blocking call makes it on first use
    assert remotes[0]._sync is not None
    remotes[0].close()
    assert remotes[0]._sync is None
    assert clean_probe.ran == ["add"] * 4
