"""A live async task with `staleness: inversion`: an orchestrator process and three real agents.

Extended tier (it starts a fleet and trains for seconds). SPIN with three agents and K = 3
aggregates while some agents still train, so updates arrive one or more versions stale and the
handler inverts them in its worker thread; the task view shows what each inversion cost.
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

UPDATES = 12


def spec() -> dict[str, Any]:
    return {
        "name": "live-inversion", "model": "twonn", "seed": 5,
        "dataset": {"name": "digits"},
        "partition": {"kind": "dirichlet", "alpha": 1.0, "shard_size": 400},
        "training": {"lr": 0.3, "batch_size": 16},
        "mode": "async",
        "async": {"aggregator": "spin", "k": 3, "pi_s": 0.5, "pull_threshold": 60,
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
        seen: dict[str, Any] | None = None
        last: Any = None
        end = time.monotonic() + 150
        while (state := client.task(task["id"]))["state"] == "running":
            assert time.monotonic() < end, f"task did not finish in 150 s: {state}, {last}"
            last = ui.get(f"/ui/api/tasks/{task['id']}").json().get("async")
            if last and last.get("staleness_handler"):
                seen = last["staleness_handler"]
            time.sleep(0.2)
        rounds = client.rounds(task["id"])
    # Assert: the task finished and trained; stale updates were handled by inversion
    # (inverted, or left as they came when late or refused), each with a recorded cost.
    assert state["state"] == "finished", state["reason"]
    assert sum(sum(r["allocation"].values()) for r in rounds) >= UPDATES
    assert max(r["accuracy"] for r in rounds) > 0.2, [r["accuracy"] for r in rounds]
    assert seen is not None
    assert seen["inverted"] + seen["late"] + seen["dropped"] >= 1, seen
    if seen["inverted"]:
        assert seen["iterations"] >= 1 and seen["seconds"] > 0, seen
