"""Async tasks with real learner agents: an orchestrator process and three agent processes.

The orchestrator gives each alive agent a client index and calls its `join_async`; each agent
downloads its Dirichlet(1) partition of digits and runs SPIN's client (alg. 1) with Poisson
arrivals against the pull / updates routes. SPIN and FedBuff each run one task on the same fleet.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.client import Client
from orchestrator.local.fleet import LocalFleet
from plexus.shards import decode_shard

pytestmark = pytest.mark.slow

AGENTS = ("a", "b", "c")
# TwoNN from its seeded random start (0.11 on the digits' 10 classes); 10-15 aggregations of
# small non-i.i.d. partitions lift it to 0.8-0.9 in our runs, so demand a clear gain.
MARGIN = 0.3
UPDATES = 30
PARTITION = 450  # samples per client partition


def spec(aggregator: str) -> dict[str, Any]:
    return {
        "name": f"live-{aggregator}", "model": "twonn", "seed": 3,
        "dataset": {"name": "digits"},
        # 3 partitions of 450 samples (of the 1438 training digits), one per client. At 40
        # samples/s they last 11 s; the tasks end (max_updates) in about 4 s (SPIN) and 9 s
        # (FedBuff, which waits for its draws) on a busy 2-core host. Every update trains 3
        # epochs over at least 80 samples, so each moves the model.
        "partition": {"kind": "dirichlet", "alpha": 1.0, "shard_size": PARTITION},
        "training": {"lr": 0.3, "batch_size": 16},
        "mode": "async",
        "async": {"aggregator": aggregator, "k": 3, "pi_s": 0.5, "pull_threshold": 80,
                  "epochs": 3, "arrival_rate": 40.0, "max_updates": UPDATES},
    }


def initial_accuracy(body: dict[str, Any]) -> float:
    """Accuracy of model version 0 on the task's held-out split (the same seeded code)."""
    from orchestrator.runs.taskdata import initial_model
    from plexus.datasets import load_dataset
    from plexus.spec import load_spec
    from plexus.training import evaluate

    parsed = load_spec(body)
    data = load_dataset(parsed.dataset, seed=parsed.seed)
    model = initial_model(parsed, data.input_shape, data.num_classes)
    return float(evaluate(model, data.test_x, data.test_y)[1])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    f = LocalFleet(Path(tmp_path_factory.mktemp("async-fleet")) / "data",
                   speeds={name: 1.0 for name in AGENTS})
    try:
        f.start()
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def start_accuracy() -> Future[float]:
    """Version 0's accuracy (both tasks share the seed, so the model), computed in a thread
    while the fleet starts: loading torch and digits here takes seconds. Request this
    fixture before `fleet`."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(initial_accuracy, spec("spin"))
    pool.shutdown(wait=False)
    return future


def partition_bytes(fleet: LocalFleet) -> float:
    """Bytes of client partitions the orchestrator has served (its /metrics counter)."""
    text = httpx.get(f"{fleet.url}/metrics").text
    for line in text.splitlines():
        if line.startswith('plexus_bytes_served_total{kind="partition"}'):
            return float(line.split()[-1])
    return 0.0


def run_to_end(client: Client, body: dict[str, Any], timeout_s: float = 60.0
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    task = client.submit(body)
    assert task["state"] == "running", task
    end = time.monotonic() + timeout_s
    while (state := client.task(task["id"]))["state"] == "running":
        assert time.monotonic() < end, f"task did not finish in {timeout_s} s: {state}"
        time.sleep(0.2)
    return state, client.rounds(task["id"])


@pytest.mark.parametrize("aggregator", ["spin", "fedbuff"])
def test_three_agents_raise_accuracy(start_accuracy: Future[float], fleet: LocalFleet,
                                     aggregator: str) -> None:
    body = spec(aggregator)
    start = start_accuracy.result(timeout=120)
    served = partition_bytes(fleet)
    with fleet.client() as client:
        final, rounds = run_to_end(client, body)
        ids = {str(lr["id"]) for lr in client.learners()}
    assert final["state"] == "finished", final["reason"]
    assert sum(sum(r["allocation"].values()) for r in rounds) >= UPDATES
    # Each of the three agents joined and downloaded its own partition (x alone is
    # PARTITION × 64 float32 values).
    one = PARTITION * 64 * 4
    assert 3 * one <= partition_bytes(fleet) - served < 4 * one
    contributors = {learner for r in rounds for learner in r["allocation"]}
    if aggregator == "fedbuff":
        # The server draws among every client holding data: all three take part.
        assert contributors == ids, (contributors, ids)
    else:
        # SPIN lets whoever is quickest fill the queue; an agent that started last on a busy
        # host may only catch the end, so at least two of the three must have been aggregated.
        assert contributors <= ids and len(contributors) >= 2, (contributors, ids)
    assert rounds[-1]["accuracy"] > start + MARGIN, (start, [r["accuracy"] for r in rounds])
    assert final["model_version"] == rounds[-1]["model_version"] == len(rounds)


def test_partitions_are_private_and_cancel_ends_every_client(fleet: LocalFleet) -> None:
    one = PARTITION * 64 * 4
    served = partition_bytes(fleet)
    with fleet.client() as client:
        task = client.submit(spec("spin"))
        end = time.monotonic() + 30
        while partition_bytes(fleet) - served < 3 * one:  # all three agents have joined
            assert time.monotonic() < end, "the agents did not download their partitions"
            time.sleep(0.1)
        # A learner enrolling while the task runs is given the next index (3) at the next
        # sweep (its join call fails: no agent serves it). Until then it is no client (404);
        # then another client's partition is refused (403) and its own served; no token: 401.
        outsider = httpx.post(f"{fleet.url}/v1/learners/enroll", json={
            "join_token": fleet.join_token, "name": "outsider", "facts": {}}).json()
        auth = {"Authorization": f"Bearer {outsider['token']}"}
        base = f"{fleet.url}/v1/tasks/{task['id']}/partitions"
        try:
            end = time.monotonic() + 10
            while (r := httpx.get(f"{base}/0", headers=auth)).status_code == 404:
                assert r.json()["error"] == "not_a_client", r.text
                assert time.monotonic() < end, "the late learner was never given an index"
                time.sleep(0.1)
            assert r.status_code == 403, r.text
            own = httpx.get(f"{base}/3", headers=auth)
            assert own.status_code == 200 and decode_shard(own.content)[1].shape == (PARTITION,)
            assert httpx.get(f"{base}/0").status_code == 401
        finally:
            client.cancel(task["id"])
    # Cancelling ends every agent's client thread (leave_async, or the routes' 404): each
    # agent logs the end of its run.
    pattern = re.compile(rf"async task {task['id']}: client \d+ ended")
    end = time.monotonic() + 30
    while True:
        logs = [(fleet.data_dir / f"agent-{name}.log").read_text() for name in AGENTS]
        if all(pattern.search(text) for text in logs):
            break
        assert time.monotonic() < end, "an agent's client did not end after the cancel"
        time.sleep(0.2)
