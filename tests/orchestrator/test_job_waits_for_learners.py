"""A MED job whose GUC finds fewer alive learners than tasks waits for them instead of failing.

A learner serves one task per GUC (eq. 4.4f), so a GUC of two tasks with one alive learner has
no allocation. Found by the chaos matrix (`med / orch_kill_agg` on the testbed): after the
previous cell's orchestrator restart two agents' heartbeats had backed off to 16 s, they
dropped out of `alive` for a moment, and the next job failed in its second GUC with "med found
no allocation (infeasible; constraint families: one_task)". The job now waits (at most
JOINED_WAIT_S) for another learner and runs the GUC again.

Here: two agents (heartbeat 1 s, so alive_after_s is 10 s), a MED job of two tasks; one agent
is SIGSTOPped after the first GUC until the job says it is waiting for learners, then
resumed; the job must finish with every round of both tasks once. Real processes on
127.0.0.1; 29 s plus 12 s of fleet start at load ~9 (`--durations`), extended tier.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.local.fleet import LocalFleet
from tests.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.extended]
ROUNDS = 10


def _task(name: str, seed: int) -> dict[str, Any]:
    return {"name": name, "model": "twonn", "seed": seed, "dataset": {"name": "digits"},
            "partition": {"shard_size": 50}, "training": {"lr": 0.3, "iterations": 2},
            "sync": {"deadline_s": 1.0, "grace_s": 2.0, "rounds": ROUNDS,
                     "benchmark_shards": 1, "total_shards": 6,
                     "max_empty_rounds": ROUNDS}}


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    f = LocalFleet(tmp_path / "data", speeds={"w1": 1.0, "w2": 1.0})
    try:
        f.start()
        yield f
    finally:
        f.stop()


@pytest.mark.timeout(300)
def test_a_guc_with_too_few_alive_learners_waits_for_them(fleet: LocalFleet) -> None:
    log = fleet.data_dir / "orchestrator.log"
    with fleet.client() as c:
        job = c.submit_job({"allocator": "med", "seed": 3,
                            "tasks": [_task("ja", 1), _task("jb", 2)]})
        wait_for(lambda: c.job(job["id"])["rounds_done"] >= 1, 120, "the first GUC")
        pid = fleet.agents["w2"].popen.pid
        os.killpg(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: "waiting (at most" in log.read_text(errors="replace")
                     or c.job(job["id"])["state"] not in ("pending", "running"),
                     120, "the job waiting for learners")
        finally:
            os.killpg(pid, signal.SIGCONT)
        end = wait_for(lambda: (j := c.job(job["id"]))["state"] not in ("pending", "running")
                       and j, 180, "the job's end")
        assert end["state"] == "finished", end
        assert "waiting (at most" in log.read_text(errors="replace")
        for t in end["tasks"]:
            rounds = [r["index"] for r in c.rounds(int(t["id"]))]
            assert sorted(rounds) == list(range(ROUNDS)), (t["name"], rounds)
