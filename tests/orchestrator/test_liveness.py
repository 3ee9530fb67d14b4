"""Heartbeats in memory, enrolments group-committed (issue 18, the capacity fix).

A heartbeat is not acknowledged data: the store keeps it in memory, shows it at once and writes
the pending ones in one transaction every second and at a clean stop. An enrolment is
acknowledged (the learner gets its token): committed before the answer, several enrolments
sharing one transaction. In-process on a real SQLite store, and against a real orchestrator
process (`plexus orchestrator serve`) stopped cleanly or with SIGKILL.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from orchestrator.errors import Conflict, NotFound
from orchestrator.local.fleet import LocalFleet
from orchestrator.store import Store
from tests.waiting import wait_for


def test_a_heartbeat_is_seen_at_once_and_written_at_close(tmp_path: Path) -> None:
    store = Store(tmp_path)
    lr = store.enroll("pi", {"cores": 1}, None, 100.0)
    view = store.learner_view()  # the in-memory view exists before the heartbeat
    store.heartbeat(lr.id, {"cores": 2}, 200.0)
    store.heartbeat(lr.id, None, 150.0)  # an older beat without facts changes nothing
    [row] = store.learners()
    assert (row.last_seen, row.facts) == (200.0, {"cores": 2})
    assert [(r.last_seen, r.facts) for r in store.learner_view()] == [(200.0, {"cores": 2})]
    assert view[0].last_seen == 200.0
    assert store.learner_by_token(lr.token).last_seen == 200.0  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        store.heartbeat(lr.id + 1, None, 200.0)
    store.close()
    again = Store(tmp_path)
    [row] = again.learners()
    assert (row.last_seen, row.facts) == (200.0, {"cores": 2})
    again.close()


def test_pending_heartbeats_are_written_within_a_second_or_so(tmp_path: Path) -> None:
    store = Store(tmp_path)
    ids = [store.enroll(f"l{i}", {}, None, 1.0).id for i in range(50)]
    for i in ids:
        store.heartbeat(i, {"n": i}, 5.0)
    other = Store(tmp_path)  # another process's view of the database: only what is written
    try:
        wait_for(lambda: all(r.last_seen == 5.0 for r in other.learners()), 10.0,
                   "the flush of 50 heartbeats")
        assert [r.facts for r in other.learners()] == [{"n": i} for i in ids]
    finally:
        other.close()
        store.close()


def test_enrolments_arriving_together_share_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.enroll("taken", {}, None, 1.0)
    commits: list[int] = []
    names = [f"g{i}" for i in range(9)] + ["taken"]

    def on_commit(_conn: Any) -> None:
        # Hold the first enrolment's commit until the others are queued behind it.
        if not commits:
            wait_for(lambda: len(store._enrol_queue) >= len(names), 20.0,
                       "ten queued enrolments")
        commits.append(1)

    event.listen(store.engine, "commit", on_commit)
    with ThreadPoolExecutor(len(names) + 1) as pool:
        first = pool.submit(store.enroll, "first", {}, None, 2.0)
        wait_for(lambda: store._enrol_leading, 10.0, "the first enrolment leading")
        rest = [pool.submit(store.enroll, n, {}, None, 2.0) for n in names]
        assert first.result(30).name == "first"
        rows = [f.result(30) for f in rest[:-1]]
        with pytest.raises(Conflict):  # a name taken fails alone, the others are committed
            rest[-1].result(30)
    assert len(commits) == 2  # the first alone, then the ten queued behind it together
    event.remove(store.engine, "commit", on_commit)
    store.close()
    again = Store(tmp_path)
    got = {r.name: r.token for r in again.learners()}
    assert all(got[r.name] == r.token for r in rows)
    assert set(got) == {"taken", "first", *names}
    again.close()


# -- against a real orchestrator process ----------------------------------------------------


def enroll(c: httpx.Client, join_token: str, name: str) -> dict[str, Any]:
    resp = c.post("/v1/learners/enroll", json={"join_token": join_token, "name": name,
                                               "facts": {"cores": 1}})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def test_heartbeat_shown_at_once_and_last_seen_survives_a_clean_stop(tmp_path: Path) -> None:
    fleet = LocalFleet(tmp_path / "data")
    try:
        fleet.start_orchestrator()
        with httpx.Client(base_url=fleet.url, timeout=30.0) as c:
            me = enroll(c, fleet.join_token, "beating")
            sent_at = time.time()
            resp = c.post(f"/v1/learners/{me['learner_id']}/heartbeat",
                          json={"facts": {"cores": 7, "mark": "last"}},
                          headers={"Authorization": f"Bearer {me['token']}"})
            assert resp.status_code == 200, resp.text
            listed = c.get("/v1/learners",
                           headers={"Authorization": f"Bearer {fleet.admin_token}"}).json()
        [shown] = listed["learners"]
        assert shown["facts"] == {"cores": 7, "mark": "last"}
        assert shown["last_seen"] >= sent_at - 1.0 and shown["alive"]
        assert fleet.orchestrator is not None
        fleet.orchestrator.stop(timeout_s=30.0)  # SIGTERM: a clean stop
        assert fleet.orchestrator.popen.returncode == 0
    finally:
        fleet.stop()
    store = Store(tmp_path / "data")
    [row] = store.learners()
    store.close()
    assert row.facts == {"cores": 7, "mark": "last"}
    assert row.last_seen == shown["last_seen"]


def test_an_answered_enrolment_survives_kill_9(tmp_path: Path) -> None:
    fleet = LocalFleet(tmp_path / "data")
    answered: list[dict[str, Any]] = []
    lock = threading.Lock()
    try:
        fleet.start_orchestrator()

        def one(i: int) -> None:
            with httpx.Client(base_url=fleet.url, timeout=30.0) as c:
                got = enroll(c, fleet.join_token, f"k{i}")
            with lock:
                answered.append(got)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(48)))
        fleet.kill_orchestrator(signal.SIGKILL)  # at once after the last answer
    finally:
        fleet.stop()
    store = Store(tmp_path / "data")
    kept = {r.name: (r.id, r.token) for r in store.learners()}
    store.close()
    assert len(answered) == 48
    for a in answered:
        assert kept[a["name"]] == (a["learner_id"], a["token"])
