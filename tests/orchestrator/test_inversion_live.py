"""A live async task with `staleness: inversion`: an orchestrator process and three real agents.

Extended tier (it starts a fleet and trains for seconds). SPIN with K = 1 merges every push at
once; the three agents pull at every new sample once they hold 120 (3 s after joining, so all
three have joined by then) and train in overlapping windows, so many updates arrive one or
more versions stale and the handler inverts them in its worker thread. The task view shows
what each inversion cost while the task runs; each aggregation's event keeps the handler's
running totals, so the test checks them against the staleness the events record.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.local.fleet import LocalFleet

pytestmark = [pytest.mark.slow, pytest.mark.extended]

UPDATES = 24


def spec() -> dict[str, Any]:
    return {
        "name": "live-inversion", "model": "twonn", "seed": 5,
        "dataset": {"name": "digits"},
        "partition": {"kind": "dirichlet", "alpha": 1.0, "shard_size": 400},
        "training": {"lr": 0.3, "batch_size": 16},
        "mode": "async",
        "async": {"aggregator": "spin", "k": 1, "pi_s": 0.5, "pull_threshold": 120,
                  "epochs": 2, "arrival_rate": 40.0, "max_updates": UPDATES,
                  "staleness": "inversion"},
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    f = LocalFleet(Path(tmp_path_factory.mktemp("inversion-fleet")) / "data",
                   speeds={"a": 1.0, "b": 1.0, "c": 0.5})
    try:
        f.start()
        yield f
    finally:
        f.stop()


@pytest.mark.timeout(240)
def test_async_task_with_inversion_runs_and_shows_its_cost(fleet: LocalFleet) -> None:
    # Arrange
    ui = httpx.Client(base_url=fleet.url, follow_redirects=False, timeout=10)
    assert ui.post("/ui/login", data={"token": fleet.admin_token, "next": "/ui/"}
                   ).status_code == 303
    # Act: run the task to its end, reading the task view while it runs.
    with fleet.client() as client:
        task = client.submit(spec())
        shown: dict[str, Any] | None = None
        end = time.monotonic() + 150
        while (state := client.task(task["id"]))["state"] == "running":
            assert time.monotonic() < end, f"task did not finish in 150 s: {state}"
            view = ui.get(f"/ui/api/tasks/{task['id']}").json().get("async")
            if view and view.get("staleness_handler"):
                shown = view["staleness_handler"]
            time.sleep(0.2)
        rounds = client.rounds(task["id"])
        merged = [e["data"] for e in client.events(task["id"])["events"]
                  if e["kind"] == "aggregated"]
    # Assert: the task finished and trained; the task view showed the handler's record.
    assert state["state"] == "finished", state["reason"]
    # It ends at max_updates, or earlier once every agent has trained on its whole partition
    # (on a loaded machine each round takes in more new samples, so there are fewer rounds).
    merged_updates = sum(sum(r["allocation"].values()) for r in rounds)
    assert merged_updates >= UPDATES or (
        "no further progress" in state["reason"] and merged_updates >= 3), (state, len(rounds))
    assert max(r["accuracy"] for r in rounds) > 0.2, [r["accuracy"] for r in rounds]
    assert shown is not None and "recent" in shown, shown
    # Every stale update was handled by inversion (inverted, or merged as it came when its
    # inversion was late or refused), each with a recorded cost, kept with the events.
    stale = sum(1 for e in merged for tau in e["staleness"] if tau >= 1)
    totals = merged[-1]["staleness_handler"]
    handled = totals["inverted"] + totals["late"] + totals["dropped"]
    assert stale >= 1, [(e["staleness"], e.get("version")) for e in merged]
    assert 1 <= handled <= stale, (totals, [e["staleness"] for e in merged])
    if totals["inverted"]:
        assert totals["iterations"] >= 1 and totals["seconds"] > 0, totals
