"""An async task survives `kill -9` of the orchestrator process, as real processes.

Three pushers (learners talking REST from this process, as SPIN's client does) pull and push
through a real `plexus orchestrator serve`, and log the id of every update answered
"accepted". Mid-run the orchestrator is SIGKILLed and restarted on the same data directory;
the pushers ride over the outage (connection errors: pull again) and finish their partitions,
after which the task ends by itself ("no further progress"). Every acknowledged id must be in
the store, merged into exactly one committed model version, and the versions contiguous.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.local.fleet import LocalFleet
from orchestrator.store import Store
from plexus.tensors import decode_state, encode_state
from tests.waiting import wait_for

pytestmark = pytest.mark.extended

SHARD = 200  # samples per partition (shard_size)
STEPS = (50, 100, 150, SHARD)  # the samples each pusher holds at its successive pulls


def spec(aggregator: str) -> dict[str, Any]:
    return {"name": f"resume-{aggregator}", "model": "twonn", "mode": "async",
            "dataset": {"name": "synthetic", "samples": 900, "test_fraction": 0.33},
            "partition": {"shard_size": SHARD},  # 3 partitions
            "async": {"aggregator": aggregator, "k": 2, "pi_s": 0.5, "max_updates": 1000,
                      "pull_threshold": 8}}


class Pusher:
    """One learner: pulls, "trains" (nudges the weights), pushes; logs acknowledged ids."""

    def __init__(self, url: str, token: str, task_id: int) -> None:
        self.http = httpx.Client(base_url=url, timeout=10.0,
                                 headers={"Authorization": f"Bearer {token}"})
        self.task_id = task_id
        self.acked: list[int] = []
        self.outages = 0
        self.error: str | None = None

    def run(self, stop: threading.Event) -> None:
        step = 0
        while step < len(STEPS) and not stop.is_set():
            try:
                step += self._round(STEPS[step])
            except httpx.TransportError:  # the orchestrator is down: try again shortly
                self.outages += 1
                stop.wait(0.2)
            except AssertionError as exc:
                self.error = str(exc)
                return
            stop.wait(0.1)

    def _round(self, n: int) -> int:
        r = self.http.post(f"/v1/tasks/{self.task_id}/pull", json={"n_samples": n})
        if r.status_code == 204:  # FedBuff: not picked this time
            return 0
        assert r.status_code == 200, f"pull answered {r.status_code} {r.text}"
        state, meta = decode_state(r.content)
        trained = {k: v + 0.01 for k, v in state.items()}
        body = encode_state(trained, {"base_version": meta["version"], "n_samples": n})
        a = self.http.post(f"/v1/tasks/{self.task_id}/updates", content=body,
                           headers={"content-type": "application/octet-stream"})
        if a.status_code == 409 and a.json().get("error") == "unknown_version":
            return 0
        assert a.status_code == 200, f"update answered {a.status_code} {a.text}"
        self.acked.append(int(a.json()["update_id"]))
        return 1




@pytest.mark.timeout(300)  # two orchestrator starts; about 65 s on a loaded 2-core host
@pytest.mark.parametrize("aggregator", ["spin", "fedbuff"])
def test_kill_9_mid_run_resumes_and_merges_every_acknowledged_update_once(
        tmp_path: Path, aggregator: str) -> None:
    stop = threading.Event()
    pushers: list[Pusher] = []
    threads: list[threading.Thread] = []
    with LocalFleet(tmp_path / "data") as fleet:
        fleet.start_orchestrator()
        with fleet.client() as client:
            task = client.submit(spec(aggregator))
        for i in range(3):
            enrolled = httpx.post(f"{fleet.url}/v1/learners/enroll", json={
                "join_token": fleet.join_token, "name": f"pusher-{i}", "facts": {},
                "endpoint": None}).json()
            pushers.append(Pusher(fleet.url, enrolled["token"], task["id"]))
        threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in pushers]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: sum(len(p.acked) for p in pushers) >= 4, 60, "4 acknowledged")
            fleet.kill_orchestrator(signal.SIGKILL)
            acked_at_kill = sum(len(p.acked) for p in pushers)
            fleet.start_orchestrator()
            with fleet.client() as client:
                done = wait_for(
                    lambda: (t := client.task(task["id"]))["state"] != "running" and t,
                    120, "the task to end")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=20)
    assert [p.error for p in pushers] == [None] * 3
    assert done["state"] == "finished", done["reason"]
    assert "no further progress" in (done["reason"] or "")
    acked = sorted(i for p in pushers for i in p.acked)
    assert len(acked) == 3 * len(STEPS) > acked_at_kill
    assert any(p.outages for p in pushers)  # the pushers did see the orchestrator gone

    store = Store(tmp_path / "data")
    try:
        rows = {r.id: r for r in store.async_updates(task["id"])}
        assert set(acked) <= set(rows), "an acknowledged update is missing from the store"
        assert all(rows[i].consumed_version is not None for i in acked)
        rounds = store.rounds(task["id"])
        versions = [r.model_version for r in rounds]
        assert versions == list(range(1, len(rounds) + 1))
        # Each stored update merged into exactly one version: per version, the ids that name
        # it match the updates that version's round row counts.
        for r in rounds:
            named = sum(1 for row in rows.values() if row.consumed_version == r.model_version)
            assert named == sum(r.allocation.values()), r.model_version
        assert store.task(task["id"]).model_version == versions[-1]
    finally:
        store.close()


@pytest.mark.timeout(400)  # a fleet of three agents and two orchestrator starts
def test_real_agents_ride_over_a_kill_9_and_the_task_finishes(tmp_path: Path) -> None:
    # Three agent processes run SPIN's client over their digits partitions (as in
    # test_async_agents); the orchestrator is SIGKILLed once two versions exist.
    body = {"name": "resume-agents", "model": "twonn", "seed": 3, "dataset": {"name": "digits"},
            "partition": {"kind": "dirichlet", "alpha": 1.0, "shard_size": 450},
            "training": {"lr": 0.3, "batch_size": 16}, "mode": "async",
            "async": {"aggregator": "spin", "k": 3, "pi_s": 0.5, "pull_threshold": 80,
                      "epochs": 1, "arrival_rate": 40.0, "max_updates": 1000}}
    with LocalFleet(tmp_path / "data", speeds={n: 1.0 for n in ("a", "b", "c")}) as fleet:
        fleet.start()
        with fleet.client() as client:
            task = client.submit(body)
            wait_for(lambda: client.task(task["id"])["model_version"] >= 2, 90, "2 versions")
        fleet.kill_orchestrator(signal.SIGKILL)
        fleet.start_orchestrator()
        with fleet.client() as client:
            done = wait_for(lambda: (t := client.task(task["id"]))["state"] != "running" and t,
                            180, "the task to end")
    assert done["state"] == "finished", done["reason"]
    assert "no further progress" in (done["reason"] or "")
    store = Store(tmp_path / "data")
    try:
        rows = store.async_updates(task["id"])
        rounds = store.rounds(task["id"])
        assert rows and all(r.consumed_version is not None for r in rows)
        assert [r.model_version for r in rounds] == list(range(1, len(rounds) + 1))
        assert sum(sum(r.allocation.values()) for r in rounds) == len(rows)
        assert {r.learner for r in rows} == {"a", "b", "c"}
    finally:
        store.close()
