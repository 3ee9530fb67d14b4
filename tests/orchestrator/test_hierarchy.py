"""Hierarchical aggregation with real processes: orchestrator, an edge aggregator, agents.

Two agents enrol with the aggregator (`plexus aggregator serve --upstream URL`), one of them
through its relay (`--relay`, as behind NAT), a third with the orchestrator directly. Every
round's global model must equal flat FedAvg over the three learners' own updates (the
aggregator keeps its children's, the orchestrator the direct one's) within float tolerance.
Then the aggregator is killed (SIGKILL) and restarted on the same data directory; its children
are accepted again without re-enrolling and a second task, under DAB (each child plans its own
bound a_k; the subtree is allocated their sum), goes through the tier the same way.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from orchestrator.aggregation.fedavg import weighted_average
from orchestrator.local.fleet import LocalFleet, free_port
from orchestrator.store.files import Layout
from plexus.tensors import decode_state
from tests.waiting import spawn, stop, wait_for

pytestmark = [pytest.mark.extended, pytest.mark.slow, pytest.mark.timeout(600)]

CHILD_TOKEN = "children-join-token"
RELAYED = {"child-b"}  # binds no port: served through the aggregator's relay, as behind NAT
ROUNDS = 2








class Tier:
    """An aggregator process and the agents enrolled with it, under a LocalFleet orchestrator
    (or under another Tier's aggregator: `upstream`)."""

    def __init__(self, fleet: LocalFleet, root: Path, name: str = "edge-1",
                 upstream: Tier | None = None) -> None:
        self.fleet = fleet
        self.root = root
        self.name = name
        self.upstream_url = upstream.url if upstream else fleet.url
        self.upstream_token = CHILD_TOKEN if upstream else fleet.join_token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = root / name
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start_aggregator(self) -> None:
        self.procs["aggregator"] = spawn(
            ["aggregator", "serve", "--upstream", self.upstream_url, "--port", str(self.port),
             "--data-dir", str(self.data), "--join-token", CHILD_TOKEN, "--name", self.name,
             "--heartbeat-s", "1", "--grace-s", "4"],
            self.root / f"{self.name}.log", {"PLEXUS_UPSTREAM_JOIN_TOKEN": self.upstream_token})

    def start_child(self, name: str) -> None:
        # torch is imported before the agent enrols (as LocalFleet does): a one-off cost of a
        # fresh process that must not eat the first round's deadline on a loaded host.
        self.procs[name] = spawn(
            ["-c", "import sys, torch; from plexus.cli import main; sys.argv[0] = 'plexus'; "
             "main()", "agent", "run", "--orchestrator", self.url, "--name", name,
             "--host", "127.0.0.1", "--data-dir", str(self.root / "agents" / name),
             *(["--relay"] if name in RELAYED else [])],
            self.root / f"agent-{name}.log", {"PLEXUS_JOIN_TOKEN": CHILD_TOKEN})

    def health(self) -> dict[str, Any] | None:
        try:
            return dict(httpx.get(f"{self.url}/healthz", timeout=2).json())
        except (httpx.HTTPError, ValueError):
            return None

    def stop(self) -> None:
        for p in self.procs.values():
            stop(p)


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[Tier]:
    fleet = LocalFleet(tmp_path / "orchestrator", speeds={"direct": 1.0}, heartbeat_s=1.0)
    t = Tier(fleet, tmp_path)
    try:
        fleet.start()  # the orchestrator and agent "direct"
        t.start_aggregator()
        for name in ("child-a", "child-b"):
            t.start_child(name)
        yield t
    finally:
        t.stop()
        fleet.stop()
        for log in sorted(tmp_path.glob("*.log")):
            sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}\n")


def _spec(allocator: str) -> dict[str, Any]:
    return {"name": "tiers", "model": "twonn", "dataset": {"name": "mnist5k"},
            "partition": {"shard_size": 250}, "training": {"lr": 0.05, "iterations": 1},
            "sync": {"allocator": allocator, "deadline_s": 20.0, "grace_s": 20.0,
                     "rounds": ROUNDS, "total_shards": 6, "benchmark_shards": 2}}


def _flat_fedavg(layout: Layout, tier: Tier, task_id: int, index: int, direct_id: int,
                 samples: dict[str, int]) -> dict[str, torch.Tensor]:
    """FedAvg over the learners' own updates of round `index`, as one flat tier would."""
    states, weights = [], []
    if samples.get(str(direct_id), 0) > 0:
        state, _ = decode_state(layout.update(task_id, index, direct_id).read_bytes())
        states.append(state)
        weights.append(float(samples[str(direct_id)]))
    for child in ("child-a", "child-b"):
        path = tier.data / "updates" / str(task_id) / str(index) / f"{child}.safetensors"
        if path.exists():
            state, meta = decode_state(path.read_bytes())
            if int(meta["samples"]) > 0:
                states.append(state)
                weights.append(float(meta["samples"]))
    return weighted_average(states, weights)


def _run_task(tier: Tier, ids: dict[str, int], allocator: str) -> int:
    """Run one sync task to the end; every round must have trained the subtree, and its model
    must be flat FedAvg over all three learners' own updates."""
    client = tier.fleet.client()
    task_id = int(client.submit(_spec(allocator))["id"])
    task = wait_for(lambda: (t := client.task(task_id))["state"] not in ("pending", "running")
                    and t, 300, f"task {task_id} finishing")
    assert task["state"] == "finished", task
    layout = Layout(tier.fleet.data_dir)
    edge = str(ids["edge-1"])
    rounds = client.rounds(task_id)
    assert len(rounds) == ROUNDS
    for r in rounds:
        index = int(r["index"])
        # The aggregator's one update carries its children's total samples ...
        kept = {c: int(decode_state(p.read_bytes())[1]["samples"])
                for c in ("child-a", "child-b")
                if (p := tier.data / "updates" / str(task_id) / str(index)
                    / f"{c}.safetensors").exists()}
        assert set(kept) == {"child-a", "child-b"}, (task_id, index, r["left_out"])
        assert r["samples"][edge] == sum(kept.values()) > 0
        # ... and the global model is flat FedAvg over all three learners' own updates.
        flat = _flat_fedavg(layout, tier, task_id, index, ids["direct"], r["samples"])
        model, _ = decode_state(layout.model(task_id, index + 1).read_bytes())
        for name, value in flat.items():
            assert torch.allclose(model[name], value, rtol=0, atol=1e-6), (index, name)
    return task_id


def _ready(tier: Tier) -> bool:
    h = tier.health()
    return bool(h and h["enrolled"] and h["children"] == 2)


def _identities(tier: Tier) -> dict[str, tuple[int, str]]:
    children = json.loads((tier.data / "aggregator.json").read_text())["children"]
    return {c["name"]: (int(c["id"]), str(c["token"])) for c in children}


def test_two_tiers_equal_flat_fedavg_and_the_aggregator_survives_a_restart(tier: Tier) -> None:
    # Arrange: the orchestrator sees two learners (direct + the aggregator), which has two.
    client = tier.fleet.client()
    wait_for(lambda: _ready(tier), 120, "the aggregator enrolled with two children")
    learners = wait_for(lambda: (ls := [lr for lr in client.learners() if lr["alive"]])
                        and len(ls) == 2 and ls, 60, "two learners upstream")
    ids = {lr["name"]: int(lr["id"]) for lr in learners}
    assert set(ids) == {"direct", "edge-1"}
    children_before = _identities(tier)

    # Act + assert: a task through the tier equals flat FedAvg, round by round.
    _run_task(tier, ids, "equal")

    # The aggregator dies hard and comes back on the same data directory: its children keep
    # their ids and tokens (no re-enrolment), it is the same learner upstream, and the next
    # task goes through the tier again.
    stop(tier.procs["aggregator"], signal.SIGKILL)
    tier.start_aggregator()
    wait_for(lambda: _ready(tier), 120, "the aggregator back with its two children")
    # (Their facts, e.g. load_1m, are refreshed on every hello and may differ.)
    assert _identities(tier) == children_before
    assert {lr["name"]: int(lr["id"]) for lr in client.learners()} == ids
    task_id = _run_task(tier, ids, "dab")
    # DAB through the tier: each child planned its own bound a_k; the orchestrator allocated
    # the subtree their sum, and each child was dealt its own a_k. DAB plans again every round
    # (sync.replan: each_round) and the aggregator keeps the latest plan: the last round's.
    shares = json.loads((tier.data / "aggregator.json").read_text())["shares"][str(task_id)]
    assert set(shares) == {"child-a", "child-b"} and min(shares.values()) > 0
    rounds = client.rounds(task_id)
    assert rounds[-1]["allocation"][str(ids["edge-1"])] == sum(shares.values())
    assert all(r["allocation"][str(ids["edge-1"])] > 0 for r in rounds)


def _kept(tier: Tier, task_id: int, index: int, child: str) -> tuple[dict[str, Any], int]:
    path = tier.data / "updates" / str(task_id) / str(index) / f"{child}.safetensors"
    state, meta = decode_state(path.read_bytes())
    return state, int(meta["samples"])


def test_tiers_nest_and_still_equal_flat_fedavg(tmp_path: Path) -> None:
    # Arrange: orchestrator <- edge-top <- {edge-low <- {child-a, child-b}, child-c}.
    fleet = LocalFleet(tmp_path / "orchestrator", speeds={}, heartbeat_s=1.0)
    top = Tier(fleet, tmp_path, "edge-top")
    low = Tier(fleet, tmp_path, "edge-low", upstream=top)
    try:
        fleet.start()
        top.start_aggregator()
        low.start_aggregator()
        top.start_child("child-c")
        for name in ("child-a", "child-b"):
            low.start_child(name)
        for t in (top, low):
            wait_for(lambda t=t: _ready(t), 180, f"{t.name} enrolled with two children")
        client = fleet.client()
        (learner,) = wait_for(lambda: [lr for lr in client.learners() if lr["alive"]], 60,
                              "edge-top upstream")
        # Act
        task_id = int(client.submit(_spec("equal"))["id"])
        task = wait_for(lambda: (t := client.task(task_id))["state"]
                        not in ("pending", "running") and t, 300, "the task finishing")
        # Assert: the one learner upstream carries all three agents' samples, and the model
        # is flat FedAvg over the three agents' own updates.
        assert task["state"] == "finished", task
        layout = Layout(fleet.data_dir)
        for r in client.rounds(task_id):
            index = int(r["index"])
            own = [_kept(low, task_id, index, "child-a"), _kept(low, task_id, index, "child-b"),
                   _kept(top, task_id, index, "child-c")]
            assert r["samples"] == {str(learner["id"]): sum(n for _, n in own)}
            flat = weighted_average([s for s, n in own if n > 0],
                                    [float(n) for _, n in own if n > 0])
            model, _ = decode_state(layout.model(task_id, index + 1).read_bytes())
            for name, value in flat.items():
                assert torch.allclose(model[name], value, rtol=0, atol=1e-6), (index, name)
    finally:
        low.stop()
        top.stop()
        fleet.stop()
        for log in sorted(tmp_path.glob("*.log")):
            sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}\n")
