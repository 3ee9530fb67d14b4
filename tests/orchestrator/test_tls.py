"""Orchestrator over https: agents with --ca-file, direct and relayed, enroll and train."""

from __future__ import annotations

import sqlite3
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

import rpc
from orchestrator.local.fleet import LocalFleet

TASK = {
    "name": "tls",
    "model": "twonn",
    "seed": 0,
    "dataset": {"name": "synthetic", "samples": 600},
    "partition": {"kind": "iid", "shard_size": 100},
    "training": {"optimizer": "sgd", "lr": 0.1, "batch_size": 25, "iterations": 1},
    "mode": "sync",
    "sync": {"allocator": "dab", "deadline_s": 20.0, "rounds": 1, "benchmark_shards": 1},
}


@pytest.fixture
def tls_fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for blob in leaf.cert_chain_pems[1:]:
        blob.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    fleet = LocalFleet(tmp_path / "data", ssl_certfile=cert, ssl_keyfile=key, ca_file=ca_file,
                       relayed={"tls-nat"})
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.mark.extended  # an agent and orchestrator over https (~26 s with teardown)
def test_agent_enrolls_over_https_and_the_orchestrator_calls_it(tls_fleet: LocalFleet) -> None:
    tls_fleet.start_orchestrator()
    assert tls_fleet.url.startswith("https://")
    # Plain http is not served, and a client that trusts only the public CAs refuses the
    # private certificate: the agent's --ca-file is what makes enrolment work.
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls_fleet.url.replace("https://", "http://") + "/healthz", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(tls_fleet.url + "/healthz", timeout=5)
    ctx = ssl.create_default_context(cafile=str(tls_fleet.ca_file))
    assert httpx.get(tls_fleet.url + "/healthz", verify=ctx, timeout=5).status_code == 200

    # One agent serving on its own port, one behind "NAT" long-polling the https relay.
    tls_fleet.speeds.update({"tls-pi": 1.0, "tls-nat": 1.0})
    for name in tls_fleet.speeds:
        tls_fleet.spawn_agent(name)
    with tls_fleet.client() as admin:
        admin.wait_learners(2, timeout_s=60)
    with tls_fleet.client() as admin:
        task_id = admin.submit(TASK)["id"]
        end = time.monotonic() + 120
        while (task := admin.task(task_id))["state"] in ("pending", "running"):
            assert time.monotonic() < end, "the task did not finish within 120 s"
            time.sleep(0.2)
        rounds = admin.rounds(task_id)
    # The DAB round asked the agent to plan (subset benchmarking) and to train, both duplex:
    # their results came back to the orchestrator's https callback endpoint.
    assert task["state"] == "finished", task
    assert len(rounds) == 1 and len(rounds[0]["allocation"]) == 2, rounds
    for learner_id, shards in rounds[0]["allocation"].items():
        assert shards > 0 and rounds[0]["samples"][learner_id] > 0, rounds

    # The driver falls back to fetching a result by call id, so the round alone does not
    # prove the agent's https callbacks work: call it with a receiver that counts the
    # results posted to it (served with the same certificate).
    posts: list[str] = []

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            posts.append(scope["path"])
        await receiver.app(scope, receive, send)

    with sqlite3.connect(tls_fleet.data_dir / "plexus.db") as db:
        (endpoint, token), = db.execute(
            "SELECT endpoint, token FROM learners WHERE name = 'tls-pi'").fetchall()
    receiver = rpc.CallbackReceiver()
    with rpc.ServerThread(counting, ssl_certfile=str(tls_fleet.ssl_certfile),
                          ssl_keyfile=str(tls_fleet.ssl_keyfile)).start() as server:
        receiver.public_url = server.url
        with rpc.connect(endpoint, token=token, duplex=True, timeout=60, callback=receiver,
                         poll_interval_s=60.0) as agent:
            assert agent.status()["name"] == "tls-pi"
    assert posts, "the agent did not post its duplex result to the https callback"
