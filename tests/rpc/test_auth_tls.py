"""Bearer tokens (401, nothing runs) and TLS with a self-signed certificate made here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import rpc


@pytest.fixture()
def guarded(probe: Any) -> Iterator[rpc.ServerThread]:
    reg = rpc.Registry()

    @reg.procedure
    def touch() -> str:
        probe.ran.append("touch")
        return "touched"

    with rpc.Worker(reg, tokens={"s3cret", "other"}).start() as srv:
        yield srv


@pytest.mark.parametrize("duplex", [False, True], ids=["simplex", "duplex"])
@pytest.mark.parametrize("token", [None, "wrong", "s3cret-but-longer"])
def test_missing_or_wrong_token_is_401_and_nothing_runs(
    guarded: rpc.ServerThread, clean_probe: Any, token: str | None, duplex: bool
) -> None:
    remote = rpc.connect(guarded.url, token=token, duplex=duplex, timeout=10)
    with pytest.raises(rpc.AuthError):
        remote.touch()
    assert clean_probe.ran == []


def test_valid_token_runs(guarded: rpc.ServerThread, clean_probe: Any) -> None:
    assert rpc.connect(guarded.url, token="s3cret").touch() == "touched"
    assert rpc.connect(guarded.url, token="other", duplex=True, timeout=10).touch() == "touched"
    assert clean_probe.ran == ["touch", "touch"]


def test_raw_401_body_is_json(guarded: rpc.ServerThread) -> None:
    resp = httpx.post(f"{guarded.url}/call/touch", headers={"authorization": "Bearer nope"})
    assert resp.status_code == 401
    assert resp.json()["error"] == "unauthorized"
    assert httpx.get(f"{guarded.url}/calls/{'a' * 32}").status_code == 401


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    out = tmp_path_factory.mktemp("tls")
    paths = {"ca": out / "ca.pem", "cert": out / "cert.pem", "key": out / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return {k: str(Path(v)) for k, v in paths.items()}


@pytest.mark.parametrize("duplex", [False, True], ids=["simplex", "duplex"])
def test_tls_with_a_self_signed_certificate(
    worker: rpc.Worker, certs: dict[str, str], duplex: bool
) -> None:
    with worker.start(ssl_certfile=certs["cert"], ssl_keyfile=certs["key"]) as srv:
        assert srv.url.startswith("https://")
        with rpc.connect(srv.url, verify=certs["ca"], duplex=duplex, timeout=10) as remote:
            assert remote.add(2, 3) == 5
        # Without the CA the certificate is not trusted.
        with pytest.raises(rpc.ConnectionLost):
            rpc.connect(srv.url, timeout=10).add(1, 1)
