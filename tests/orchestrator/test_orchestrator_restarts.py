"""The orchestrator stopped under a running job or task: SIGKILL, SIGTERM, a full disk.

Real processes on loopback (one orchestrator, three agents): a multi-task MED job survives a
`kill -9` and finishes from its last committed GUC with its stored setup, no GUC committed
twice; SIGTERM mid-round exits 0 within seconds and a restart resumes the task; a data
directory that cannot take a model file (RLIMIT_FSIZE lowered on the running orchestrator with
prlimit) holds the task running with reason `storage_full`, leaves no temp or half file, and
the task finishes once the limit is lifted. Kill/restart cycles: the extended tier.
"""

from __future__ import annotations

import resource
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from learner_agent.stressors import sample_state
from orchestrator.client import Client
from orchestrator.local.fleet import LocalFleet
from orchestrator.runs.jobs import draw_seed
from tests.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.extended]

AGENTS = ("r1", "r2", "r3")


# A model of 2.1 M parameters (8.3 MB as a file), larger than SQLite's write-ahead log ever
# grows (about 4 MB): a file size limit between the two stops model files, not the database.
BIG = {"layers": ["Flatten", {"type": "Linear", "out_features": 28000}, "ReLU",
                  {"type": "Linear"}]}
LIMIT_BYTES = 6 * 1024 * 1024


def task(name: str, *, rounds: int, deadline_s: float = 1.0, total_shards: int = 4,
         model: Any = "twonn") -> dict[str, Any]:
    return {"name": name, "model": model, "dataset": {"name": "digits"},
            "partition": {"shard_size": 50}, "training": {"lr": 0.1, "iterations": 1},
            "sync": {"deadline_s": deadline_s, "grace_s": 2.0, "rounds": rounds,
                     "benchmark_shards": 1, "total_shards": total_shards,
                     "allocator": "equal",
                     # A learner in a stressed state may train nothing by a 1 s deadline: these
                     # tests are about restarts, not about empty rounds.
                     "max_empty_rounds": rounds}}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    f = LocalFleet(Path(tmp_path_factory.mktemp("restarts")) / "data",
                   speeds=dict.fromkeys(AGENTS, 1.0))
    try:
        f.start()
        yield f
    finally:
        f.stop()




def ended(get: Any, timeout_s: float = 180.0) -> dict[str, Any]:
    return wait_for(lambda: (x := get())["state"] not in ("pending", "running") and x,
                    timeout_s, "the end")


def no_temp_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "tasks").rglob("*.tmp"))


def models_load(client: Client, task_id: int, versions: int) -> None:
    from plexus.tensors import decode_state

    for v in range(versions + 1):
        state, _meta = decode_state(client.model(task_id, v))
        assert state, f"model version {v} of task {task_id} is empty"


def test_a_job_killed_mid_run_resumes_from_its_last_guc(fleet: LocalFleet) -> None:
    rounds = 4
    # MMTT-Ideal: the learners reveal their drawn states, so the test can check the draws.
    body = {"allocator": "mmtt_ideal", "seed": 7,
            "tasks": [task("resume-a", rounds=rounds), task("resume-b", rounds=rounds - 1)]}
    with fleet.client() as client:
        created = client.submit_job(body)
        before = wait_for(lambda: (j := client.job(created["id"]))["rounds_done"] >= 1 and j,
                          90.0, "a committed GUC")
    assert before["state"] == "running" and before["rounds_done"] < rounds
    fleet.kill_orchestrator()  # SIGKILL, mid-job
    fleet.start_orchestrator()
    with fleet.client() as client:
        job = ended(lambda: client.job(created["id"]))
        assert job["state"] == "finished", job["reason"]
        # The stored setup was resumed, not drawn again (same distributions, same benchmarks).
        for key in ("distributions", "benchmarked_state", "benchmarks", "eligible"):
            assert job["setup"][key] == before["setup"][key], key
        # Every GUC of every task committed exactly once, in order.
        for t, n in zip(job["tasks"], (rounds, rounds - 1), strict=True):
            assert t["state"] == "finished" and t["rounds_done"] == n, t
            indices = [r["round"] for r in job["records"] if r["task_id"] == t["id"]]
            assert indices == list(range(n)), indices
            assert [r["index"] for r in client.rounds(t["id"])] == list(range(n))
            assert [r["model_version"] for r in client.rounds(t["id"])] == list(range(1, n + 1))
            models_load(client, t["id"], n)
        # The records before the kill are the ones the job shows now.
        kept = {(r["task_id"], r["round"]): r for r in job["records"]}
        for r in before["records"]:
            assert kept[(r["task_id"], r["round"])] == r
        # Every GUC, before and after the kill, drew each learner's state from the seed of
        # (job seed, GUC, learner): what a run without the kill draws.
        for r in job["records"]:
            for lid, state in r["states_revealed"].items():
                dist = job["setup"]["distributions"][lid]
                rng = np.random.default_rng(draw_seed(7, r["round"], int(lid)))
                assert state == sample_state(dist, rng), (r["round"], lid)


def test_sigterm_mid_round_exits_0_quickly_and_the_restart_resumes(fleet: LocalFleet) -> None:
    rounds = 4
    with fleet.client() as client:
        created = client.submit(task("term", rounds=rounds))
        wait_for(lambda: client.task(created["id"])["rounds_done"] >= 1, 90.0, "round 1")
    proc = fleet.orchestrator
    assert proc is not None
    t0 = time.monotonic()
    proc.popen.send_signal(signal.SIGTERM)
    rc = proc.popen.wait(30)
    took = time.monotonic() - t0
    proc.log.close()
    assert rc == 0, f"exit status {rc} after SIGTERM"
    assert took < 15.0, f"took {took:.1f} s to stop"
    fleet.start_orchestrator()
    with fleet.client() as client:
        final = ended(lambda: client.task(created["id"]))
        assert final["state"] == "finished", final["reason"]
        assert [r["index"] for r in client.rounds(created["id"])] == list(range(rounds))
        models_load(client, created["id"], rounds)
        # The agents came back by themselves and were not removed.
        alive = wait_for(lambda: {lr["name"] for lr in client.learners() if lr["alive"]}
                         >= set(AGENTS), 60.0, "agents back")
        assert alive


def test_a_full_data_dir_holds_the_task_which_goes_on_when_space_returns(fleet: LocalFleet
                                                                         ) -> None:
    rounds = 4
    proc = fleet.orchestrator
    assert proc is not None
    pid = proc.popen.pid
    with fleet.client() as client:
        created = client.submit(task("full", rounds=rounds, model=BIG, deadline_s=2.0))
        wait_for(lambda: client.task(created["id"])["rounds_done"] >= 1, 90.0, "round 1")
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (LIMIT_BYTES, resource.RLIM_INFINITY))
        try:
            held = wait_for(lambda: (t := client.task(created["id"]))["reason"]
                            and "storage_full" in t["reason"] and t, 60.0, "storage_full")
            assert held["state"] == "running"
            stuck_at = held["rounds_done"]
            assert stuck_at < rounds
            assert no_temp_files(fleet.data_dir) == []
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE,
                             (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        final = ended(lambda: client.task(created["id"]))
        assert final["state"] == "finished", final["reason"]
        assert final["reason"] is None
        assert [r["index"] for r in client.rounds(created["id"])] == list(range(rounds))
        models_load(client, created["id"], rounds)
        assert no_temp_files(fleet.data_dir) == []


def test_a_job_leaves_out_learners_that_cannot_hold_its_model(fleet: LocalFleet) -> None:
    import httpx

    # A learner enrolled through the API (as an agent would) that reports 1 KiB of memory.
    r = httpx.post(f"{fleet.url}/v1/learners/enroll", json={
        "join_token": fleet.join_token, "name": "tiny",
        "facts": {"memory_bytes": 1024, "model_factories": []}})
    assert r.status_code == 201
    tiny = str(r.json()["learner_id"])
    with fleet.client() as client:
        created = client.submit_job({"allocator": "med", "learners": 4,
                                     "tasks": [task("fit", rounds=1, deadline_s=4.0)]})
        job = ended(lambda: client.job(created["id"]))
        assert job["state"] == "finished", job["reason"]
        (t,) = job["tasks"]
        assert "not enough memory" in job["setup"]["skipped"][str(t["id"])][tiny]
        assert tiny not in job["setup"]["benchmarks"]  # never asked to benchmark
        assert all(tiny not in r["allocation"] for r in job["records"])
