"""Asynchronous tasks served by a real orchestrator process: SPIN end to end over REST.

Three learners enroll, download their shards, and run SPIN's client (alg. 1) against the
service's pull / updates routes; the task must aggregate its updates, record each version in
its history, and finish.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from learner_agent.spin_client import SpinClient
from orchestrator.local.fleet import LocalFleet
from plexus.models import build_model
from plexus.shards import decode_shard
from plexus.tensors import decode_state, encode_state

SPEC: dict[str, Any] = {
    "name": "async-spin", "model": "twonn", "mode": "async",
    "dataset": {"name": "synthetic", "samples": 900, "test_fraction": 0.33},
    "partition": {"shard_size": 200},  # 3 shards, one per learner
    "async": {"aggregator": "spin", "k": 3, "pi_s": 0.5, "max_updates": 6,
              "pull_threshold": 8, "epochs": 2},
}


def _enroll(url: str, join_token: str, name: str, facts: dict[str, Any]
            ) -> tuple[httpx.Client, int]:
    """An HTTP client with a fresh learner's token, and the learner's id."""
    enrolled = httpx.post(f"{url}/v1/learners/enroll", json={
        "join_token": join_token, "name": name, "facts": facts, "endpoint": None}).json()
    return httpx.Client(base_url=url, timeout=30.0, headers={
        "Authorization": f"Bearer {enrolled['token']}"}), int(enrolled["learner_id"])


def _ended(admin: httpx.Client, task_id: int, timeout_s: float,
           alive: tuple[httpx.Client, int] | None = None) -> dict[str, Any]:
    """The task once it is no longer running; `alive` (a learner) heartbeats meanwhile."""
    end = time.monotonic() + timeout_s
    while (state := admin.get(f"/v1/tasks/{task_id}").json())["state"] == "running":
        assert time.monotonic() < end, state
        if alive is not None:
            alive[0].post(f"/v1/learners/{alive[1]}/heartbeat", json={})
        time.sleep(0.2)
    return state


# First in the module: the shared orchestrator has no other learner yet. Extended: it waits
# out NO_LEARNER_GRACE_S (3 s) on top of a task submission.
@pytest.mark.extended
def test_an_async_task_no_learner_can_take_part_in_fails_naming_why(
        shared_orchestrator: LocalFleet, admin: httpx.Client) -> None:
    r = admin.post("/v1/tasks", json={**SPEC, "name": "async-nobody"})
    assert r.status_code == 201, r.text
    task_id = r.json()["id"]
    tiny = _enroll(shared_orchestrator.url, shared_orchestrator.join_token, "tiny",
                   {"memory_bytes": 1024})
    skipped = admin.get(f"/v1/tasks/{task_id}").json()["skipped"]
    assert "not enough memory" in skipped["tiny"]
    state = _ended(admin, task_id, 30, alive=tiny)
    assert state["state"] == "failed"
    assert state["reason"].startswith("no learner can take part: tiny: not enough memory")


def test_an_async_task_whose_clients_used_all_their_data_finishes_saying_so(
        shared_orchestrator: LocalFleet, admin: httpx.Client) -> None:
    spec = {**SPEC, "name": "async-exhausted", "async": {**SPEC["async"], "max_updates": 100}}
    task_id = admin.post("/v1/tasks", json=spec).json()["id"]
    http, _ = _enroll(shared_orchestrator.url, shared_orchestrator.join_token, "solo", {})
    # The whole partition (shard_size 200) at once: after this update it holds nothing new.
    pulled = http.post(f"/v1/tasks/{task_id}/pull", json={"n_samples": 200})
    assert pulled.status_code == 200, pulled.text
    state, meta = decode_state(pulled.content)
    pushed = http.post(f"/v1/tasks/{task_id}/updates", content=encode_state(
        state, {"base_version": meta["version"], "n_samples": 200}),
        headers={"content-type": "application/octet-stream"})
    assert pushed.status_code == 200 and pushed.json()["update_id"] >= 1, pushed.text
    ended = _ended(admin, task_id, 30)
    assert ended["state"] == "finished"
    assert ended["reason"].startswith("no further progress possible")
    # The lone buffered update (k = 3) was merged, not dropped.
    assert ended["model_version"] == 1
    (merged,) = admin.get(f"/v1/tasks/{task_id}/rounds").json()["rounds"]
    assert sum(merged["allocation"].values()) == 1


# A client whose push lands after the task ended gets 404 and its thread raises (SpinClient
# treats every error answer alike); that is the expected end here, not a failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_spin_task_runs_to_the_end_over_rest(shared_orchestrator: LocalFleet,
                                             admin: httpx.Client) -> None:
    url = shared_orchestrator.url
    r = admin.post("/v1/tasks", json=SPEC)
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["state"] == "running"
    stop = threading.Event()
    threads, clients = [], []
    for i in range(3):
        enrolled = httpx.post(f"{url}/v1/learners/enroll", json={
            "join_token": shared_orchestrator.join_token, "name": f"phone-{i}",
            "facts": {}, "endpoint": None}).json()
        http = httpx.Client(base_url=url, timeout=30.0,
                            headers={"Authorization": f"Bearer {enrolled['token']}"})
        # A learner takes part in an async task once it pulls (or the join sweep reaches it);
        # only then may its token read the task's data (docs/security.md).
        assert http.post(f"/v1/tasks/{task['id']}/pull", json={"n_samples": 1}).status_code == 200
        x, y, _ = decode_shard(http.get(f"/v1/tasks/{task['id']}/shards/{i}").content)
        model = build_model("twonn", tuple(x.shape[1:]), 10)  # the synthetic set has 10
        client = SpinClient(http, task["id"], model, x, y, rate=60.0, pull_threshold=8,
                            epochs=2, lr=0.05, seed=i)
        clients.append(client)
        threads.append(threading.Thread(target=client.run, args=(stop,), daemon=True))
    for t in threads:
        t.start()
    end = time.monotonic() + 90
    try:
        while (state := admin.get(f"/v1/tasks/{task['id']}").json())["state"] == "running":
            assert time.monotonic() < end, state
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
    assert state["state"] == "finished", state["reason"]
    rounds = admin.get(f"/v1/tasks/{task['id']}/rounds").json()["rounds"]
    # max_updates (6) merged, k = 3 at a time or fewer when π (0.5 s) runs out first.
    assert sum(sum(r["allocation"].values()) for r in rounds) >= 6
    assert 2 <= len(rounds) <= 6
    assert [r["model_version"] for r in rounds] == sorted({r["model_version"] for r in rounds})
    assert all(r["accuracy"] is not None for r in rounds)
    assert all(c.report.pushes >= 1 for c in clients)
    _, meta = decode_state(admin.get(f"/v1/tasks/{task['id']}/model").content)
    assert int(meta["version"]) == rounds[-1]["model_version"] == state["model_version"]
    # The async routes are gone once the task has ended.
    late = httpx.post(f"{url}/v1/tasks/{task['id']}/pull", json={"n_samples": 5},
                      headers=clients[0].http.headers)
    assert late.status_code == 404


def test_an_async_task_running_at_a_crash_resumes_after_restart(tmp_path: Path) -> None:
    # The whole kill -9 → restart → finish cycle with pushers is test_async_resume (extended).
    with LocalFleet(tmp_path / "data") as fleet:
        fleet.start_orchestrator()
        with fleet.client() as client:
            task = client.submit(SPEC)
            assert task["state"] == "running"
        fleet.kill_orchestrator(signal.SIGKILL)
        fleet.start_orchestrator()
        with fleet.client() as client:
            after = client.task(task["id"])
            assert after["state"] == "running" and after["reason"] is None
            enrolled = httpx.post(f"{fleet.url}/v1/learners/enroll", json={
                "join_token": fleet.join_token, "name": "late", "facts": {},
                "endpoint": None}).json()
            # The resumed task serves its routes again.
            pulled = httpx.post(f"{fleet.url}/v1/tasks/{task['id']}/pull",
                                json={"n_samples": 8},
                                headers={"Authorization": f"Bearer {enrolled['token']}"})
            assert pulled.status_code == 200 and pulled.headers["x-model-version"] == "0"
