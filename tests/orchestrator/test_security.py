"""Never trust a learner (issue 12, findings 1-6): update admission, token scope, identity.

Each test plays an enrolled device (or a holder of the join token) against a real orchestrator
process over HTTP on 127.0.0.1, sends the bad thing, and checks the refusal (a 4xx with a stable
code, counted in /metrics and on the task) and that nothing changed. docs/security.md lists
which claim each test checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator.local.fleet import LocalFleet
from plexus.tensors import decode_state, encode_state

# Large K and π: nothing is aggregated unless a test pushes K updates, so the version only
# moves when a test means it to.
ASYNC: dict[str, Any] = {
    "name": "sec-async", "model": "twonn", "mode": "async",
    "dataset": {"name": "synthetic", "samples": 900, "test_fraction": 0.33},
    "partition": {"shard_size": 200},
    "async": {"aggregator": "spin", "k": 2, "pi_s": 600.0, "max_updates": 1000},
}
SYNC: dict[str, Any] = {
    "name": "sec-sync", "model": "twonn", "dataset": {"name": "synthetic", "samples": 600},
    "partition": {"shard_size": 100},
    "sync": {"allocator": "equal", "deadline_s": 5.0, "rounds": 1, "grace_s": 1.0},
}


def _err(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text[:300]
    body: dict[str, Any] = r.json()
    assert body["error"] == code, body
    return body


class Learner:
    """An enrolled device speaking plain HTTP (no agent): it can send anything."""

    def __init__(self, fleet: LocalFleet, name: str) -> None:
        r = httpx.post(f"{fleet.url}/v1/learners/enroll", json={
            "join_token": fleet.join_token, "name": name, "facts": {}, "endpoint": None})
        assert r.status_code == 201, r.text
        self.id: int = r.json()["learner_id"]
        self.token: str = r.json()["token"]
        self.http = httpx.Client(base_url=fleet.url, timeout=30.0,
                                 headers={"Authorization": f"Bearer {self.token}"})

    def pull(self, task_id: int, n_samples: int = 20) -> httpx.Response:
        return self.http.post(f"/v1/tasks/{task_id}/pull", json={"n_samples": n_samples})

    def push(self, task_id: int, state: dict[str, Any], base: int, n: int) -> httpx.Response:
        body = encode_state(state, {"base_version": base, "n_samples": n})
        return self.http.post(f"/v1/tasks/{task_id}/updates", content=body,
                              headers={"content-type": "application/octet-stream"})


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    fleet = LocalFleet(tmp_path_factory.mktemp("sec") / "data")
    try:
        fleet.start_orchestrator()
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def admin(fleet: LocalFleet) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fleet.url, timeout=30.0,
                      headers={"Authorization": f"Bearer {fleet.admin_token}"}) as client:
        yield client


def _submit(admin: httpx.Client, spec: dict[str, Any]) -> int:
    r = admin.post("/v1/tasks", json=spec)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _status(who: Learner, task_id: int) -> dict[str, Any]:
    r = who.http.get(f"/v1/tasks/{task_id}/async")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _refused_metric(fleet: LocalFleet, reason: str) -> float:
    text = httpx.get(f"{fleet.url}/metrics").text
    m = re.search(rf'^plexus_updates_refused_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_finding_1_an_inflated_sample_count_is_refused(fleet: LocalFleet,
                                                       admin: httpx.Client) -> None:
    task = _submit(admin, ASYNC)
    a = Learner(fleet, "inflator")
    before = _refused_metric(fleet, "n_samples_too_large")
    r = a.pull(task, 20)
    assert r.status_code == 200, r.text
    state, meta = decode_state(r.content)
    version = int(meta["version"])
    poisoned = {k: v + 1.0 for k, v in state.items()}
    # More samples than the pull declared (10**12 against 20): refused, nothing queued.
    _err(a.push(task, poisoned, version, 10**12), 422, "n_samples_too_large")
    # A pull may not declare more than the learner's partition holds (200 here).
    _err(a.pull(task, 10**12), 422, "n_samples_over_partition")
    status = _status(a, task)
    assert status["version"] == version and status["queued"] == 0 and status["accepted"] == 0
    assert _refused_metric(fleet, "n_samples_too_large") == before + 1
    refused = admin.get(f"/v1/tasks/{task}").json()["refused"]
    assert refused == {"n_samples_too_large": 1, "n_samples_over_partition": 1}
    # The honest claim (what its pull declared) is accepted.
    r = a.pull(task, 20)
    assert r.status_code == 200
    ok = a.push(task, state, int(r.headers["X-Model-Version"]), 20)
    assert ok.status_code == 200 and ok.json()["accepted"] is True, ok.text


def test_finding_2_a_learner_that_never_pulled_cannot_push(fleet: LocalFleet,
                                                           admin: httpx.Client) -> None:
    task = _submit(admin, ASYNC)
    b = Learner(fleet, "never-pulled")
    state, meta = decode_state(admin.get(f"/v1/tasks/{task}/model").content)
    _err(b.push(task, state, int(meta["version"]), 20), 403, "no_outstanding_pull")
    # One pull answers one push: replaying the same update is refused too.
    r = b.pull(task, 20)
    version = int(r.headers["X-Model-Version"])
    assert b.push(task, state, version, 20).status_code == 200
    _err(b.push(task, state, version, 20), 403, "no_outstanding_pull")
    status = _status(b, task)
    assert status["accepted"] == 1 and status["queued"] == 1
    assert admin.get(f"/v1/tasks/{task}").json()["refused"] == {"no_outstanding_pull": 2}


def test_finding_3_a_learner_cannot_push_to_a_task_it_did_not_pull(
        fleet: LocalFleet, admin: httpx.Client) -> None:
    one, two = _submit(admin, ASYNC), _submit(admin, ASYNC)
    c = Learner(fleet, "other-task")
    r = c.pull(two, 20)
    state, meta = decode_state(r.content)
    _err(c.push(one, state, int(meta["version"]), 20), 403, "no_outstanding_pull")
    assert _status(c, one)["queued"] == 0
    assert c.push(two, state, int(meta["version"]), 20).status_code == 200


def test_finding_6_a_learner_token_reads_only_its_tasks(fleet: LocalFleet,
                                                        admin: httpx.Client) -> None:
    # A sync task cancelled before any learner was alive: nobody was given its work.
    task = _submit(admin, SYNC)
    assert admin.post(f"/v1/tasks/{task}/cancel").status_code == 200
    d = Learner(fleet, "snooper")
    _err(d.http.get(f"/v1/tasks/{task}/model"), 403, "not_a_participant")
    _err(d.http.get(f"/v1/tasks/{task}/shards/0"), 403, "not_a_participant")
    assert admin.get(f"/v1/tasks/{task}/model").status_code == 200
    assert admin.get(f"/v1/tasks/{task}/shards/0").status_code == 200
    assert admin.get(f"/v1/tasks/{task}").json()["refused"] == {"not_a_participant": 2}
    _err(d.http.get("/v1/tasks/999999/model"), 404, "task_not_found")
    # Every enrolled learner is invited to a running async task (the join sweep, or its
    # own pull): once it pulled, it reads that task's model.
    live = _submit(admin, ASYNC)
    assert d.pull(live, 20).status_code == 200
    assert d.http.get(f"/v1/tasks/{live}/model").status_code == 200
    assert _refused_metric(fleet, "not_a_participant") >= 2


def test_finding_5_the_join_token_cannot_take_over_a_learner(fleet: LocalFleet,
                                                             admin: httpx.Client) -> None:
    victim = Learner(fleet, "victim")
    hijack = httpx.post(f"{fleet.url}/v1/learners/enroll", json={
        "join_token": fleet.join_token, "name": "victim", "endpoint": "http://attacker:1"})
    body = _err(hijack, 409, "name_taken")
    assert "--name" in body["detail"]
    wrong = httpx.post(f"{fleet.url}/v1/learners/enroll", json={
        "join_token": fleet.join_token, "name": "victim", "secret": "guess"})
    _err(wrong, 409, "name_taken")
    # Nothing changed: the victim's token still works and its endpoint is its own.
    hb = victim.http.post(f"/v1/learners/{victim.id}/heartbeat", json={})
    assert hb.status_code == 200, hb.text
    row = next(lr for lr in admin.get("/v1/learners").json()["learners"]
               if lr["name"] == "victim")
    assert row["endpoint"] is None and row["id"] == victim.id
    # The learner itself re-enrolls with its secret: same id, fresh token.
    again = httpx.post(f"{fleet.url}/v1/learners/enroll", json={
        "join_token": fleet.join_token, "name": "victim", "secret": victim.token})
    assert again.status_code == 201, again.text
    assert again.json()["learner_id"] == victim.id and again.json()["token"] != victim.token


def test_an_admin_removes_a_learner_and_its_token_stops_at_once(
        fleet: LocalFleet, admin: httpx.Client) -> None:
    gone = Learner(fleet, "to-remove")
    _err(gone.http.delete(f"/v1/learners/{gone.id}"), 401, "unauthorized")
    r = admin.delete(f"/v1/learners/{gone.id}")
    assert r.status_code == 200 and r.json()["name"] == "to-remove", r.text
    _err(gone.http.post(f"/v1/learners/{gone.id}/heartbeat", json={}), 401, "unauthorized")
    assert "to-remove" not in {lr["name"] for lr in admin.get("/v1/learners").json()["learners"]}
    _err(admin.delete(f"/v1/learners/{gone.id}"), 404, "learner_not_found")


def test_finding_4_the_spin_timeout_counts_from_the_task_start() -> None:
    """Live SPIN's π runs on the runner's clock from the task's start: with K = 2 and
    π = 300 s, a first push 1 s after the start waits for a second one (or for π)."""
    import torch

    from orchestrator.runs.asynchronous import make_runner
    from plexus.spec import parse_spec

    spec = parse_spec({**ASYNC, "async": {"aggregator": "spin", "k": 2, "pi_s": 300.0}})
    now = [10_000.0]  # a monotonic clock far past π, as on any running host
    runner = make_runner(spec.async_, {"w": torch.zeros(3)}, 0, None, clock=lambda: now[0])
    now[0] += 1.0
    answer = runner.pull("a", 5)
    assert answer is not None
    version, _ = answer
    first = runner.push("a", encode_state({"w": torch.ones(3)},
                                          {"base_version": version, "n_samples": 5}))
    assert first["aggregated"] is False
    assert runner.core.next_deadline() == pytest.approx(10_300.0)
    now[0] = 10_300.0
    runner.start()  # its first tick is at the deadline: the lone update goes by timeout
    try:
        assert [h["trigger"] for h in runner.status()["history"]] == ["timeout"]
    finally:
        runner.close()


def test_a_sync_answer_counts_at_most_the_samples_it_was_given() -> None:
    """Sync admission: `samples_trained` above shards × shard size × μ is cut to that bound
    (and counted), so one learner's claim cannot outweigh its allocation in FedAvg."""
    from orchestrator.runs.gateway import Reply
    from orchestrator.runs.sync import cap_samples
    from orchestrator.store import LearnerRow

    honest, liar, idle = (LearnerRow(id=i, name=f"l{i}") for i in (1, 2, 3))
    replies = [Reply(honest, value={"params": {}, "samples_trained": 400}),
               Reply(liar, value={"params": {}, "samples_trained": 10**12}),
               Reply(idle, error="no answer by deadline + grace")]
    refused: list[str] = []
    out = cap_samples(replies, {"1": [0, 1], "2": [2, 3]}, 100 * 2, refused.append)
    assert [r.value["samples_trained"] for r in out[:2]] == [400, 400]
    assert out[2].error == replies[2].error and refused == ["samples_capped"]
