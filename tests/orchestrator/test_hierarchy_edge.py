"""The edge aggregator's learner-facing routes on a real server: hostile enrolments, tokens,
and children that survive a restart of the aggregator (same data directory)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import rpc
from orchestrator.hierarchy.edge import EdgeAggregator
from orchestrator.local.fleet import free_port

JOIN = "children-join-token"


def _edge(data_dir: Path, port: int) -> EdgeAggregator:
    # The upstream is a closed port: the aggregator keeps retrying its enrolment there, which
    # these routes do not need.
    return EdgeAggregator(upstream="http://127.0.0.1:9", upstream_join_token="x",
                          join_token=JOIN, data_dir=data_dir, name="edge",
                          public_url=f"http://127.0.0.1:{port}", heartbeat_s=1.0)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    with rpc.ServerThread(_edge(tmp_path, port).app, port=port).start() as server:
        yield server.url, tmp_path


def _enrol(url: str, **over: object) -> httpx.Response:
    body = {"join_token": JOIN, "name": "pi-1", "facts": {"memory_bytes": 10**9},
            "endpoint": "http://127.0.0.1:5000", **over}
    # json.dumps escapes lone surrogates ("\ud800"), which httpx's own encoder refuses.
    return httpx.post(f"{url}/v1/learners/enroll", content=json.dumps(body), timeout=10,
                      headers={"Content-Type": "application/json"})


def _children(data_dir: Path) -> list[dict[str, object]]:
    path = data_dir / "aggregator.json"
    return json.loads(path.read_text())["children"] if path.exists() else []


@pytest.mark.parametrize(("over", "status", "code"), [
    ({"join_token": "wrong"}, 401, "bad_join_token"),
    ({"join_token": "jöin"}, 401, "bad_join_token"),
    ({"join_token": 7}, 401, "bad_join_token"),
    ({"join_token": "\ud800"}, 401, "bad_join_token"),
    ({"name": "../etc"}, 400, "bad_name"),
    ({"name": "x" * 65}, 400, "bad_name"),
    ({"endpoint": 42}, 400, "bad_endpoint"),
    ({"endpoint": "file:///etc/passwd"}, 400, "bad_endpoint"),
    ({"facts": {"blob": "x" * 20_000}}, 400, "bad_facts"),
    ({"facts": [1, 2]}, 400, "bad_facts"),
])
def test_bad_enrolments_are_refused_and_change_nothing(
        served: tuple[str, Path], over: dict[str, object], status: int, code: str) -> None:
    url, data_dir = served
    r = _enrol(url, **over)
    assert (r.status_code, r.json()["error"]) == (status, code)
    assert _children(data_dir) == []


def test_garbage_body_is_a_400(served: tuple[str, Path]) -> None:
    url, data_dir = served
    r = httpx.post(f"{url}/v1/learners/enroll", content=b"\xff{", timeout=10)
    assert (r.status_code, r.json()["error"]) == (400, "malformed_json")
    assert _children(data_dir) == []


def test_an_oversized_body_is_a_413(served: tuple[str, Path]) -> None:
    url, data_dir = served
    body = json.dumps({"join_token": JOIN, "name": "big", "endpoint": "http://127.0.0.1:1",
                       "facts": {}, "pad": "x" * 100_000})
    r = httpx.post(f"{url}/v1/learners/enroll", content=body, timeout=10)
    assert (r.status_code, r.json()["error"]) == (413, "payload_too_large")
    assert _children(data_dir) == []


def test_a_name_is_kept_by_its_secret_and_tokens_guard_the_routes(
        served: tuple[str, Path]) -> None:
    url, data_dir = served
    first = _enrol(url).json()
    # Another enrolment under the same name without its secret: 409, nothing changes.
    for secret in (None, "wrong", "sécret", "\ud800"):
        r = _enrol(url, endpoint="http://127.0.0.1:6000", secret=secret)
        assert (r.status_code, r.json()["error"]) == (409, "name_taken")
    assert [(c["name"], c["token"], c["endpoint"]) for c in _children(data_dir)] == [
        ("pi-1", first["token"], "http://127.0.0.1:5000")]
    # With its secret it re-enrols: same id and token, the new endpoint.
    again = _enrol(url, endpoint="http://127.0.0.1:6000", secret=first["token"]).json()
    assert (again["learner_id"], again["token"]) == (first["learner_id"], first["token"])
    lid = first["learner_id"]
    ok = {"Authorization": f"Bearer {first['token']}"}
    bad = {"Authorization": "Bearer nope"}
    assert httpx.post(f"{url}/v1/learners/{lid}/heartbeat", json={"facts": {}},
                      headers=bad, timeout=10).status_code == 401
    assert httpx.post(f"{url}/v1/learners/{lid + 1}/heartbeat", json={"facts": {}},
                      headers=ok, timeout=10).status_code == 401  # not its own id
    assert httpx.get(f"{url}/v1/tasks/1/model", timeout=10).status_code == 401
    assert httpx.get(f"{url}/v1/tasks/1/shards/0", headers=bad, timeout=10).status_code == 401
    # Its own token, but a task it was never called for: refused like a non-participant.
    r = httpx.get(f"{url}/v1/tasks/1/model", headers=ok, timeout=10)
    assert (r.status_code, r.json()["error"]) == (403, "not_a_participant")
    assert httpx.post(f"{url}/v1/learners/{lid}/heartbeat", json={"facts": {}},
                      headers=ok, timeout=10).status_code == 200


def test_a_child_behind_nat_enrols_without_endpoint_and_only_it_polls_its_relay_queue(
        served: tuple[str, Path]) -> None:
    url, data_dir = served
    child = _enrol(url, name="nat-1", endpoint=None).json()
    assert child["relay_url"] == f"{url}/relay"
    assert [(c["name"], c["endpoint"]) for c in _children(data_dir)] == [("nat-1", "")]
    other = _enrol(url, name="pi-2").json()
    # Another child's token cannot take nat-1's calls; no token cannot either.
    for headers in ({"Authorization": f"Bearer {other['token']}"}, {}):
        r = httpx.get(f"{url}/relay/nat-1/_poll", headers=headers, timeout=10)
        assert r.status_code == 401
    # Nobody but the aggregator may call through its relay.
    r = httpx.post(f"{url}/relay/nat-1/call/status", content=b"", timeout=10,
                   headers={"Authorization": f"Bearer {child['token']}"})
    assert r.status_code == 401


def test_children_survive_a_restart_of_the_aggregator(tmp_path: Path) -> None:
    port = free_port()
    with rpc.ServerThread(_edge(tmp_path, port).app, port=port).start() as server:
        child = _enrol(server.url).json()
    # A new process on the same data directory: the child's token still speaks for it.
    with rpc.ServerThread(_edge(tmp_path, port).app, port=port).start() as server:
        r = httpx.post(f"{server.url}/v1/learners/{child['learner_id']}/heartbeat",
                       json={"facts": {}}, timeout=10,
                       headers={"Authorization": f"Bearer {child['token']}"})
        assert r.status_code == 200
        assert httpx.get(f"{server.url}/healthz", timeout=10).json()["children"] == 1
