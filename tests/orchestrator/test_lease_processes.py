"""Two real orchestrator processes on one database (SQLite file, and PostgreSQL when
PLEXUS_TEST_DB_URL is set): only the lease holder drives tasks, the other stands by and
refuses new work, and takes over the running task once the holder was SIGKILLed and its lease
expired; no round runs twice."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import APIError
from orchestrator.local.fleet import LocalFleet
from tests.orchestrator.postgres import fresh_database, postgres_url
from tests.waiting import finished, wait_for

# Two orchestrators, two agents and a takeover: 1.5 min alone, up to 4 on a loaded host.
pytestmark = [pytest.mark.slow, pytest.mark.extended, pytest.mark.timeout(480)]

TTL_S = 3.0  # the driver lease; a standby takes over this long after the holder died
ROUNDS = 3


def spec(name: str) -> dict[str, Any]:
    return {"name": name, "model": "twonn", "dataset": {"name": "mnist5k"},
            "partition": {"shard_size": 500}, "training": {"lr": 0.05, "iterations": 1},
            "sync": {"allocator": "equal", "deadline_s": 2.0, "grace_s": 10.0,
                     "rounds": ROUNDS}}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None  # both use the SQLite file of the shared data directory
        return
    with fresh_database(postgres_url()) as url:
        yield url


def test_a_standby_instance_never_drives_and_takes_over_after_the_lease_expires(
        db_url: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLEXUS_LEASE_TTL_S", str(TTL_S))
    data = tmp_path / "data"  # shared: the model files live there whatever the database
    first = LocalFleet(data, speeds={"one": 1.0}, db_url=db_url)
    with ExitStack() as stack:
        stack.callback(first.stop)
        first.start()
        second = LocalFleet(data, db_url=db_url, admin_token=first.admin_token,
                            join_token=first.join_token)
        stack.callback(second.stop)
        second.start_orchestrator()
        # An agent of the standby, enrolled before the takeover (enrolment works on a
        # standby): the first instance's agent reports to the dead one and fails its calls.
        second.start_agent("two")
        with first.client() as a, second.client() as b:
            assert a.health()["driving"] is True
            assert b.health()["driving"] is False
            with pytest.raises(APIError) as refused:
                b.submit(spec("to-the-standby"))
            assert (refused.value.status, refused.value.code) == (409, "standby")
            assert [t["name"] for t in b.tasks()] == []  # nothing was created
            task = a.submit(spec("lease"))
            wait_for(lambda: a.task(task["id"])["rounds_done"] >= 1, 120, "round 0")
        first.kill_orchestrator(signal.SIGKILL)
        killed_at = time.monotonic()
        with second.client() as b:
            wait_for(lambda: b.health()["driving"], 30, "the standby taking over")
            took_s = time.monotonic() - killed_at
            final = finished(b, task["id"], timeout_s=180)
            rounds = b.rounds(task["id"])
    assert final["state"] == "finished", final["reason"]
    assert took_s >= TTL_S - 1.5  # not before the dead holder's lease ran out (± one renewal)
    assert [r["index"] for r in rounds] == list(range(ROUNDS))  # no round ran twice
    assert [r["model_version"] for r in rounds] == list(range(1, ROUNDS + 1))
