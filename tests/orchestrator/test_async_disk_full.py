"""An async task whose aggregation cannot be recorded (the data directory is full) is held, not
failed or left hanging, and resumes from the store once space returns.

Found by the chaos matrix (benchmarks/chaos.py, `disk_full` on SPIN): the aggregation's
commit raised StorageFull, the runner stopped, and the task stayed `running` with nobody driving
it. Real processes: one `plexus orchestrator serve`; the test pushes over REST as a learner.
The file size limit (prlimit on the running orchestrator) sits between SQLite's write-ahead log
and the 8.3 MB model file, as in test_orchestrator_restarts.py.
"""

from __future__ import annotations

import resource
from pathlib import Path

import httpx
import pytest

from orchestrator.local.fleet import LocalFleet
from orchestrator.store import Store
from plexus.tensors import decode_state, encode_state
from tests.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.extended]

BIG = {"layers": ["Flatten", {"type": "Linear", "out_features": 28000}, "ReLU",
                  {"type": "Linear"}]}
LIMIT_BYTES = 6 * 1024 * 1024
UNLIMITED = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)




@pytest.mark.timeout(300)
def test_an_aggregation_that_cannot_be_written_waits_for_space_and_resumes(
        tmp_path: Path) -> None:
    spec = {"name": "full-async", "model": BIG, "mode": "async", "dataset": {"name": "digits"},
            "partition": {"shard_size": 200},
            "async": {"aggregator": "spin", "k": 50, "pi_s": 4.0, "max_updates": 1000,
                      "pull_threshold": 1}}
    with LocalFleet(tmp_path / "data") as fleet:
        fleet.start_orchestrator()
        assert fleet.orchestrator is not None
        pid = fleet.orchestrator.popen.pid
        with fleet.client() as client:
            task = client.submit(spec)
        enrolled = httpx.post(f"{fleet.url}/v1/learners/enroll", json={
            "join_token": fleet.join_token, "name": "pusher", "facts": {},
            "endpoint": None}).json()
        http = httpx.Client(base_url=fleet.url, timeout=30.0,
                            headers={"Authorization": f"Bearer {enrolled['token']}"})
        acked: list[int] = []
        try:
            for _attempt in range(4):
                with fleet.client() as client:
                    before = client.task(task["id"])["model_version"]
                r = http.post(f"/v1/tasks/{task['id']}/pull", json={"n_samples": 10})
                assert r.status_code == 200, r.text
                state, meta = decode_state(r.content)
                a = http.post(f"/v1/tasks/{task['id']}/updates", content=encode_state(
                    state, {"base_version": meta["version"], "n_samples": 10}),
                    headers={"content-type": "application/octet-stream"})
                assert a.status_code == 200, a.text
                acked.append(int(a.json()["update_id"]))
                # The SPIN timer (4 s) merges it later: fill the disk before that.
                resource.prlimit(pid, resource.RLIMIT_FSIZE,
                                 (LIMIT_BYTES, resource.RLIM_INFINITY))
                with fleet.client() as client:
                    if client.task(task["id"])["model_version"] == before:
                        break  # the merge is still to come, with the disk full
                resource.prlimit(pid, resource.RLIMIT_FSIZE, UNLIMITED)
            else:
                pytest.fail("every update was merged before the limit could be set")
            try:
                with fleet.client() as client:
                    held = wait_for(lambda: (t := client.task(task["id"]))["reason"]
                                    and "storage_full" in t["reason"] and t, 60,
                                    "the task held with storage_full")
                assert held["state"] == "running"
            finally:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, UNLIMITED)
            with fleet.client() as client:
                resumed = wait_for(lambda: (t := client.task(task["id"]))["reason"] is None
                                   and t["model_version"] > before and t, 120,
                                   "the task resumed and merged")
                assert resumed["state"] == "running"
                client.cancel(task["id"])
        finally:
            http.close()
    store = Store(tmp_path / "data")
    try:
        rows = {r.id: r for r in store.async_updates(task["id"])}
        assert set(acked) <= set(rows)
        assert all(rows[i].consumed_version is not None for i in acked)
        versions = [r.model_version for r in store.rounds(task["id"])]
        assert versions == list(range(1, len(versions) + 1))
    finally:
        store.close()
