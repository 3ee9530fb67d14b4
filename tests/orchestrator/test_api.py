"""The REST API of a real orchestrator process: auth, enrollment, tasks, errors, downloads."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from orchestrator.local.fleet import LocalFleet as Orchestrator
from plexus.shards import decode_shard
from plexus.tensors import decode_state

SPEC: dict[str, Any] = {
    "name": "api-test", "model": "twonn", "dataset": {"name": "mnist5k"},
    "sync": {"allocator": "dab", "deadline_s": 5.0, "rounds": 2, "grace_s": 1.0},
}


def _err(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error", "detail"}
    if code is not None:
        assert body["error"] == code
    return body


def _enroll(orch: Orchestrator, name: str) -> dict[str, Any]:
    r = httpx.post(f"{orch.url}/v1/learners/enroll",
                   json={"join_token": orch.join_token, "name": name, "facts": {"cores": 1},
                         "endpoint": None})
    assert r.status_code == 201, r.text
    return r.json()


def test_health_docs_and_metrics(shared_orchestrator: Orchestrator) -> None:
    assert httpx.get(f"{shared_orchestrator.url}/healthz").json()["ok"] is True
    assert httpx.get(f"{shared_orchestrator.url}/docs").status_code == 200
    paths = httpx.get(f"{shared_orchestrator.url}/openapi.json").json()["paths"]
    assert "/v1/tasks" in paths and "/v1/learners/enroll" in paths
    text = httpx.get(f"{shared_orchestrator.url}/metrics").text
    for name in ("plexus_learners_alive", "plexus_round_time_seconds", "plexus_rounds_total",
                 "plexus_updates_received_total"):
        assert name in text


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/tasks"), ("POST", "/v1/tasks"), ("GET", "/v1/learners"),
    ("GET", "/v1/tasks/1"), ("POST", "/v1/tasks/1/cancel"), ("GET", "/v1/tasks/1/rounds"),
    ("GET", "/v1/tasks/1/model"), ("GET", "/v1/tasks/1/shards/0"),
])
def test_calls_without_a_valid_token_are_refused(shared_orchestrator: Orchestrator, method: str,
                                                 path: str) -> None:
    url = shared_orchestrator.url + path
    _err(httpx.request(method, url, json=SPEC), 401, "unauthorized")
    _err(httpx.request(method, url, json=SPEC, headers={"Authorization": "Bearer wrong"}),
         401, "unauthorized")


def test_enrollment_issues_tokens_and_reenrolling_keeps_the_id(
        shared_orchestrator: Orchestrator, admin: httpx.Client) -> None:
    url = shared_orchestrator.url
    _err(httpx.post(f"{url}/v1/learners/enroll",
                    json={"join_token": "nope", "name": "a", "facts": {}, "endpoint": None}),
         401, "unauthorized")
    body = _err(httpx.post(f"{url}/v1/learners/enroll",
                           json={"join_token": shared_orchestrator.join_token, "name": "bad/name",
                                 "endpoint": None}),
                422, "invalid_request")
    assert "name" in body["detail"]
    first = _enroll(shared_orchestrator, "pi-1")
    assert first["relay_url"].endswith("/relay") and first["heartbeat_interval_s"] > 0
    # Re-enrolling a name needs that learner's secret, its current token (test_security.py).
    r = httpx.post(f"{url}/v1/learners/enroll",
                   json={"join_token": shared_orchestrator.join_token, "name": "pi-1",
                         "facts": {"cores": 1}, "endpoint": None, "secret": first["token"]})
    assert r.status_code == 201, r.text
    again = r.json()
    assert again["learner_id"] == first["learner_id"] and again["token"] != first["token"]
    hb = f"{url}/v1/learners/{first['learner_id']}/heartbeat"
    _err(httpx.post(hb, json={"facts": {}}, headers={"Authorization": f"Bearer {first['token']}"}),
         401)
    ok = httpx.post(hb, json={"facts": {"cores": 2}},
                    headers={"Authorization": f"Bearer {again['token']}"})
    assert ok.json() == {"ok": True}
    other = _enroll(shared_orchestrator, "pi-2")
    _err(httpx.post(f"{url}/v1/learners/{other['learner_id']}/heartbeat", json={},
                    headers={"Authorization": f"Bearer {again['token']}"}), 403, "forbidden")
    learners = {lr["name"]: lr for lr in admin.get("/v1/learners").json()["learners"]}
    assert {"pi-1", "pi-2"} <= set(learners)
    assert all(lr["alive"] and "token" not in lr for lr in learners.values())
    assert learners["pi-1"]["facts"] == {"cores": 2}


@pytest.mark.parametrize(("spec", "field"), [
    ({**SPEC, "colour": "red"}, "colour"),
    ({**SPEC, "sync": {**SPEC["sync"], "deadline_s": "soon"}}, "sync.deadline_s"),
    ({**SPEC, "sync": {**SPEC["sync"], "rounds": 0}}, "sync.rounds"),
    ({**SPEC, "model": "resnet"}, "model"),
    ({**SPEC, "dataset": {"name": "mnist"}}, "dataset"),
    ({**SPEC, "partition": {"shard_size": 100000}}, "partition"),
])
def test_bad_specs_get_422_naming_the_field_and_create_nothing(
        admin: httpx.Client, spec: dict[str, Any], field: str) -> None:
    before = admin.get("/v1/tasks").json()["tasks"]
    body = _err(admin.post("/v1/tasks", json=spec), 422, "invalid_spec")
    assert field in body["detail"]
    assert admin.get("/v1/tasks").json()["tasks"] == before


def test_a_body_that_is_not_json_is_a_4xx(admin: httpx.Client) -> None:
    r = admin.post("/v1/tasks", content=b"{not json", headers={"content-type": "application/json"})
    _err(r, 422)
    _err(admin.post("/v1/tasks", json=[1, 2]), 422)
    body = _err(admin.post("/v1/tasks", json={**SPEC, "mode": "async", "sync": None,
                                              "async": {"k": 0}}), 422, "invalid_spec")
    assert "async.k" in body["detail"]


def test_unknown_ids_are_404_json(admin: httpx.Client) -> None:
    for path in ("/v1/tasks/99", "/v1/tasks/99/rounds", "/v1/tasks/99/model"):
        _err(admin.get(path), 404, "task_not_found")
    _err(admin.post("/v1/tasks/99/cancel"), 404, "task_not_found")
    _err(admin.get("/v1/nothing-here"), 404)
    _err(admin.get("/v1/tasks/abc"), 422)


def test_task_lifecycle_downloads_and_cancel(shared_orchestrator: Orchestrator,
                                             admin: httpx.Client) -> None:
    r = admin.post("/v1/tasks", json=SPEC)
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["state"] in ("pending", "running") and task["num_shards"] == 8
    # Shards are for the admin and the learners given the task's work (test_security.py).
    auth = {"Authorization": f"Bearer {shared_orchestrator.admin_token}"}
    shard = httpx.get(f"{shared_orchestrator.url}/v1/tasks/{task['id']}/shards/3", headers=auth)
    assert shard.status_code == 200
    x, y, meta = decode_shard(shard.content)
    assert x.shape == (500, 1, 28, 28) and len(y) == 500 and meta["shard"] == "3"
    _err(httpx.get(f"{shared_orchestrator.url}/v1/tasks/{task['id']}/shards/8", headers=auth),
         404, "shard_not_found")
    # Version 0 by number: on a loaded host the first round (no learner can be reached) may
    # already have closed and written version 1.
    state, meta = decode_state(admin.get(f"/v1/tasks/{task['id']}/model",
                                         params={"version": 0}).content)
    assert meta["version"] == "0" and any(t.dim() == 2 for t in state.values())
    served = httpx.get(f"{shared_orchestrator.url}/metrics").text
    assert 'plexus_bytes_served_total{kind="shard"}' in served
    cancelled = admin.post(f"/v1/tasks/{task['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and cancelled["reason"]
    _err(admin.post(f"/v1/tasks/{task['id']}/cancel"), 409, "conflict")
    assert admin.get(f"/v1/tasks/{task['id']}").json()["state"] == "cancelled"


# Issue 12, finding 8: ids beyond 64 bits reached SQLite and answered 500 OverflowError.
HUGE_IDS = [str(2**63), str(2**64 + 5), str(10**30), "0", "-1", str(-(2**63) - 1)]
ID_PATHS = [
    ("GET", "/v1/tasks/{id}"), ("GET", "/v1/tasks/{id}/rounds"), ("GET", "/v1/tasks/{id}/model"),
    ("POST", "/v1/tasks/{id}/cancel"), ("GET", "/v1/jobs/{id}"), ("POST", "/v1/jobs/{id}/cancel"),
]
LEARNER_PATHS = [
    ("GET", "/v1/tasks/{id}/shards/0"), ("GET", "/v1/tasks/1/shards/{id}"),
    ("GET", "/v1/tasks/{id}/partitions/0"), ("GET", "/v1/tasks/{id}/stop"),
    ("GET", "/v1/tasks/{id}/async"), ("POST", "/v1/tasks/{id}/updates"),
]


@pytest.mark.parametrize("big", HUGE_IDS)
def test_ids_outside_64_bits_are_422_never_500(
        shared_orchestrator: Orchestrator, admin: httpx.Client, big: str) -> None:
    before = admin.get("/v1/tasks").json()["tasks"]
    for method, path in ID_PATHS:
        _err(admin.request(method, path.format(id=big)), 422, "invalid_request")
    # One learner per case: re-enrolling a taken name needs its secret (docs/security.md).
    me = _enroll(shared_orchestrator, f"big-ids-{HUGE_IDS.index(big)}")
    auth = {"Authorization": f"Bearer {me['token']}"}
    url = shared_orchestrator.url
    for method, path in LEARNER_PATHS:
        if path.endswith("/shards/{id}") and big == "0":
            continue  # shard 0 is a valid index
        _err(httpx.request(method, url + path.format(id=big), headers=auth), 422,
             "invalid_request")
    _err(httpx.post(f"{url}/v1/tasks/{big}/pull", json={"n_samples": 1}, headers=auth), 422,
         "invalid_request")
    _err(httpx.post(f"{url}/v1/learners/{big}/heartbeat", json={}, headers=auth), 422,
         "invalid_request")
    # The largest id that exists is a plain 404.
    _err(admin.get(f"/v1/tasks/{2**63 - 1}"), 404, "task_not_found")
    assert admin.get("/v1/tasks").json()["tasks"] == before


# Issue 12, finding 9: hmac.compare_digest on str raised TypeError for non-ASCII tokens.
@pytest.mark.parametrize("token", ["é", "Bearer-ü-ß", "\u2603" * 20, "token\u00ff"])
def test_non_ascii_tokens_are_401_never_500(shared_orchestrator: Orchestrator,
                                            admin: httpx.Client, token: str) -> None:
    url = shared_orchestrator.url
    header = {"Authorization": f"Bearer {token}".encode()}  # sent as UTF-8 bytes
    def names() -> list[tuple[int, str]]:
        return [(lr["id"], lr["name"]) for lr in admin.get("/v1/learners").json()["learners"]]

    before = names()
    for path in ("/v1/tasks", "/v1/learners", "/v1/tasks/1/model", "/v1/tasks/1/shards/0",
                 "/v1/tasks/1/async"):
        _err(httpx.get(url + path, headers=header), 401, "unauthorized")
    for join in (token, "\ud800", "é" * 64):
        _err(httpx.post(f"{url}/v1/learners/enroll",
                        content=json.dumps({"join_token": join, "name": "intruder"}),
                        headers={"content-type": "application/json"}), 401, "unauthorized")
    assert names() == before


# Issue 12, finding 11 (API side): NaN and Infinity are not JSON numbers; Python reads them.
@pytest.mark.parametrize(("body", "field"), [
    ('{"name": "x", "sync": {"deadline_s": Infinity}}', "sync.deadline_s"),
    ('{"name": "x", "sync": {"deadline_s": 1e999}}', "sync.deadline_s"),
    ('{"name": "x", "training": {"lr": NaN}}', "training.lr"),
    ('{"name": "x", "mode": "async", "async": {"pi_s": -Infinity}}', "async.pi_s"),
])
def test_non_finite_numbers_in_a_task_are_422_naming_the_field(
        admin: httpx.Client, body: str, field: str) -> None:
    before = admin.get("/v1/tasks").json()["tasks"]
    for ctype in ({"content-type": "application/json"}, {}):
        detail = _err(admin.post("/v1/tasks", content=body, headers=ctype), 422,
                      "invalid_request")["detail"]
        assert detail.startswith(field), detail
    assert admin.get("/v1/tasks").json()["tasks"] == before


def test_non_finite_numbers_in_a_job_are_422_naming_the_field(admin: httpx.Client) -> None:
    before = admin.get("/v1/jobs").json()["jobs"]
    spec = json.dumps({**SPEC, "sync": {**SPEC["sync"], "allocator": "med"}})
    nan = spec.replace('"deadline_s": 5.0', '"deadline_s": NaN')
    for body, field in (
        ('{"budget": Infinity, "tasks": [' + spec + "]}", "budget"),
        ('{"tasks": [' + spec + ", " + nan + "]}", "tasks.1.sync.deadline_s"),
        ('{"time_limit_s": 1e400, "tasks": [' + spec + "]}", "time_limit_s"),
    ):
        detail = _err(admin.post("/v1/jobs", content=body,
                                 headers={"content-type": "application/json"}),
                      422, "invalid_request")["detail"]
        assert detail.startswith(field), detail
    assert admin.get("/v1/jobs").json()["jobs"] == before


def test_a_task_submitted_to_a_full_data_dir_is_507_and_nothing_is_kept(
        shared_orchestrator: Orchestrator) -> None:
    # The data directory is "full": RLIMIT_FSIZE lowered on the running orchestrator (prlimit).
    import resource

    from orchestrator.client import APIError

    orch = shared_orchestrator
    assert orch.orchestrator is not None
    pid = orch.orchestrator.popen.pid
    spec = {"name": "full", "dataset": {"name": "digits"}, "partition": {"shard_size": 50},
            "sync": {"rounds": 1}}
    with orch.client() as client:
        before = client.tasks()
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
        try:
            with pytest.raises(APIError) as err:
                client.submit(spec)
            assert err.value.status == 507 and err.value.code == "storage_full", err.value
            assert "free space" in err.value.detail
            assert client.tasks() == before  # nothing half-made is visible
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        # Space is back: the same request succeeds, and no temp file was left behind.
        created = client.submit(spec)
        assert [t["id"] for t in client.tasks()] == [t["id"] for t in before] + [created["id"]]
        client.cancel(created["id"])
    assert sorted((orch.data_dir / "tasks").rglob("*.tmp")) == []


def test_a_client_hanging_up_mid_body_is_one_warning_line_not_a_traceback(
        shared_orchestrator: Orchestrator) -> None:
    # Arrange: a request promising 100 kB of body, to a route that reads its body itself as
    # the async update route does (an agent killed mid-upload: a traceback in the log before).
    import socket

    from tests.waiting import wait_for

    path = "/ui/login"

    orch = shared_orchestrator
    log = orch.data_dir / "orchestrator.log"
    seen = log.read_text(errors="replace").count("the client disconnected")
    host, port = orch.url.removeprefix("http://").split(":")
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n")
    # Act: send the head and 10 bytes of the body, then hang up.
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.encode() + b"token=abc&")
    # Assert: the orchestrator says so in one warning line (not an ERROR with a traceback)
    # and still answers.
    wait_for(lambda: log.read_text(errors="replace").count("the client disconnected") > seen,
             30, "the warning about the hung-up client")
    text = log.read_text(errors="replace")
    assert "Exception in ASGI application" not in text and "Traceback" not in text, text[-3000:]
    assert httpx.get(f"{orch.url}/healthz", timeout=10).json()["ok"] is True
