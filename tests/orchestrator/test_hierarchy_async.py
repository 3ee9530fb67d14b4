"""Asynchronous tasks (SPIN / FedBuff) through an edge aggregator (docs/hierarchy.md).

Default tier: the partial aggregate merged upstream equals merging its children's updates flat
(the real SPIN / FedBuff cores, float tolerance); an edge on a real server refuses hostile child
pulls and pushes with typed 4xx and keeps an accepted update across its own restart.
Extended tier (real processes on 127.0.0.1): a SPIN task whose learners all sit behind one edge
learns; an edge SIGKILLed with an accepted child update on disk still forwards it after its
restart, and the orchestrator's new model is the flat sample-weighted mean of both children.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import rpc
from orchestrator.aggregation import build_aggregator
from orchestrator.aggregation.base import Aggregated
from orchestrator.hierarchy import edge_async
from orchestrator.hierarchy.combine import combine
from orchestrator.hierarchy.edge import EdgeAggregator
from orchestrator.local.fleet import LocalFleet, free_port
from plexus.shards import encode_shard
from plexus.tensors import decode_state, encode_state
from tests.waiting import spawn, stop, wait_for

JOIN = "children-join-token"
SPEC: dict[str, Any] = {
        "name": "edge-async", "model": "twonn", "seed": 3, "dataset": {"name": "digits"},
        "partition": {"kind": "dirichlet", "alpha": 1.0, "shard_size": 450},
        "training": {"lr": 0.3, "batch_size": 16}, "mode": "async",
        "async": {"aggregator": "spin", "k": 1, "pi_s": 0.5, "pull_threshold": 80,
                  "epochs": 3, "arrival_rate": 40.0, "max_updates": 10}}


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}


# -- default tier: the partial equals the flat merge -------------------------------------------

@pytest.mark.parametrize("staleness", ["none", "poly"])
@pytest.mark.parametrize("name", ["spin", "fedbuff"])
def test_a_partial_merged_upstream_equals_merging_its_updates_flat(
        name: str, staleness: str) -> None:
    # Two cores of the same kind: "flat" merges every learner's own update, "tiered" the
    # direct learners' and the edge's one partial of its three children. Each merge is
    # `flush` (whatever is buffered), so both merge the same updates whatever K counts.
    def core() -> Any:
        return build_aggregator(name, _state(0), k=100, staleness=staleness, pi_s=None,
                                selection_interval_s=1.0, seed=0, concurrency=10)

    flat, tiered = core(), core()
    kids = {"a": (_state(4), 12), "b": (_state(5), 8), "c": (_state(6), 40)}
    # The children (flat) and the edge (tiered) pulled version 0 and train meanwhile.
    for who in kids:
        flat.outstanding[who] = 0
    tiered.outstanding["edge"] = 0
    # Round 1: a direct learner alone moves both to version 1.
    for c in (flat, tiered):
        c.push(0.0, "z", _state(1), 0, 30)
        c.flush(1.0)

    # Act: round 2: the children's updates, one version stale (base 0, merged into 1), and a
    # fresh direct one; a staleness handler weights the two kinds differently.
    flat.push(2.0, "q", _state(2), 1, 70)
    for who, (s, n) in kids.items():
        flat.push(2.0, who, s, 0, n)
    part = combine(kids)
    assert part.state is not None and part.weight == 60
    tiered.push(2.0, "q", _state(2), 1, 70)
    tiered.push(2.0, "edge", part.state, 0, part.weight)
    merged_f, merged_t = flat.flush(3.0), tiered.flush(3.0)

    # Assert: the same model, and the partial merged with its children's true staleness.
    assert flat.version == tiered.version == 2
    for key, value in flat.model.items():
        assert torch.allclose(tiered.model[key], value, rtol=0, atol=1e-6), key
    (f,), (t,) = merged_f, merged_t
    assert isinstance(f, Aggregated) and isinstance(t, Aggregated)
    assert f.staleness == (0, 1, 1, 1) and t.staleness == (0, 1)
    if staleness == "poly":  # the children's weight really was scaled down
        assert t.weights[1] < part.weight / (part.weight + 70)


# -- default tier: a real edge server refuses hostile children ---------------------------------

def _edge(data_dir: Path, port: int) -> EdgeAggregator:
    # The upstream is a closed port: the partial cannot go up, so it stays on disk.
    return EdgeAggregator(upstream="http://127.0.0.1:9", upstream_join_token="x",
                          join_token=JOIN, data_dir=data_dir, name="edge",
                          public_url=f"http://127.0.0.1:{port}", heartbeat_s=1.0,
                          async_flush_s=600.0)


def _enrol(url: str, name: str) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/learners/enroll", timeout=10, json={
        "join_token": JOIN, "name": name, "facts": {}, "endpoint": "http://127.0.0.1:9"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _push(url: str, token: str | None, body: bytes, task: int = 7) -> httpx.Response:
    headers = {"content-type": "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{url}/v1/tasks/{task}/updates", content=body, headers=headers,
                      timeout=10)


def test_hostile_children_get_typed_4xx_and_an_accepted_update_survives_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange: an edge taking part in task 7 as upstream client 0, children pi-1 and pi-2
    # (pi-3 enrolled later, no slot); pi-1 pulled version 3 declaring 50 samples.
    port = free_port()
    edge = _edge(tmp_path, port)
    monkeypatch.setattr(edge_async, "MAX_CHILD_UPDATE_BYTES", 64 * 1024)
    model = _state(0)
    with rpc.ServerThread(edge.app, port=port).start() as server:
        url = server.url
        kids = {n: _enrol(url, n)["token"] for n in ("pi-1", "pi-2", "pi-3")}
        tiers = edge.asyncs.tiers
        t = tiers.join(SPEC, 7, 0, ["pi-1", "pi-2"])
        t.sizes = {"pi-1": 60, "pi-2": 60}
        tiers.open_cohort(t, 3, encode_state(model, {"version": 3}))
        tiers.member(t, "pi-1", 50)
        good = encode_state(_state(5), {"base_version": 3, "n_samples": 40})
        nan = {**_state(5), "b": torch.tensor([0.0, float("nan"), 1.0])}

        def pull(token: str | None, body: Any) -> httpx.Response:
            return httpx.post(f"{url}/v1/tasks/7/pull", json=body, timeout=10,
                              headers={"Authorization": f"Bearer {token}"} if token else {})

        refusals = [
            (_push(url, None, good), 401, "unauthorized"),
            (_push(url, "not-a-token", good), 401, "unauthorized"),
            (_push(url, kids["pi-1"], good, task=8), 404, "not_found"),
            (_push(url, kids["pi-3"], good), 403, "not_a_client"),
            (_push(url, kids["pi-1"], b"garbage"), 422, "bad_update"),
            (_push(url, kids["pi-1"], encode_state(_state(5), {"n_samples": 4})), 422,
             "bad_update"),
            (_push(url, kids["pi-1"], encode_state(_state(5), {"base_version": "x",
                                                               "n_samples": 4})), 422,
             "bad_update"),
            (_push(url, kids["pi-1"], encode_state({"w": torch.zeros(4, 4), "b": model["b"]},
                                                   {"base_version": 3, "n_samples": 4})),
             422, "bad_update"),
            (_push(url, kids["pi-1"], encode_state({**model, "b": model["b"].double()},
                                                   {"base_version": 3, "n_samples": 4})),
             422, "bad_update"),
            (_push(url, kids["pi-1"], encode_state({"w": model["w"]},
                                                   {"base_version": 3, "n_samples": 4})),
             422, "bad_update"),
            (_push(url, kids["pi-1"], encode_state(nan, {"base_version": 3, "n_samples": 4})),
             422, "bad_update"),
            (_push(url, kids["pi-1"], encode_state(_state(5), {"base_version": 3,
                                                               "n_samples": 0})),
             422, "bad_update"),
            (_push(url, kids["pi-1"], encode_state(_state(5), {"base_version": 3,
                                                               "n_samples": 51})),
             422, "n_samples_too_large"),
            (_push(url, kids["pi-1"], encode_state(_state(5), {"base_version": 2,
                                                               "n_samples": 4})),
             409, "unknown_version"),
            (_push(url, kids["pi-2"], good), 403, "no_outstanding_pull"),
            (_push(url, kids["pi-1"], b"x" * (64 * 1024 + 1)), 413, "too_large"),
            (pull(None, {"n_samples": 5}), 401, "unauthorized"),
            (pull(kids["pi-3"], {"n_samples": 5}), 403, "not_a_client"),
            (pull(kids["pi-2"], {"n_samples": 0}), 422, "bad_request"),
            (pull(kids["pi-2"], {"n_samples": "5"}), 422, "bad_request"),
            (pull(kids["pi-2"], {"n_samples": True}), 422, "bad_request"),
            (pull(kids["pi-2"], {"n_samples": 5, "more": 1}), 422, "bad_request"),
            (pull(kids["pi-2"], [5]), 422, "bad_request"),
            (pull(kids["pi-2"], {"n_samples": 61}), 422, "n_samples_over_partition"),
        ]
        for i, (r, status, code) in enumerate(refusals):
            assert (r.status_code, r.json()["error"]) == (status, code), (i, r.text)
        assert tiers.tasks[7].cohort is not None and not tiers.tasks[7].cohort.buffered

        # Act: pi-1's update is accepted (on disk); pi-1 was the only member, so its cohort
        # is due and sealed, but the upstream is unreachable: the partial stays.
        r = _push(url, kids["pi-1"], good)
        assert r.status_code == 200 and r.json() == {"accepted": True, "version": 3,
                                                      "aggregated": False}, r.text
        partial = tmp_path / "async" / "7" / "partial.safetensors"
        deadline = time.monotonic() + 30
        while not partial.exists():
            assert time.monotonic() < deadline, "the cohort was never sealed"
            time.sleep(0.05)
        # A second push of the same version, and a pull while the cohort is sealed: refused.
        assert _push(url, kids["pi-1"], good).json()["error"] == "unknown_version"
        assert pull(kids["pi-2"], {"n_samples": 5}).status_code == 204

    # Assert: a fresh edge on the same data directory holds the sealed cohort, and its partial
    # is pi-1's update with pi-1's samples (one child: the partial is its update).
    again = _edge(tmp_path, port)
    c = again.asyncs.tiers.tasks[7].cohort
    assert c is not None and c.sealed and c.buffered == {"pi-1": 40}
    state, meta = decode_state(partial.read_bytes())
    assert meta["base_version"] == "3" and meta["n_samples"] == "40"
    for key, value in _state(5).items():
        assert torch.equal(state[key], value)


def test_the_subtree_is_exhausted_once_every_live_or_trained_child_used_its_stride() -> None:
    from orchestrator.hierarchy.asynctier import AsyncTier, TierTask

    t = TierTask(SPEC, 7, 0, {"a": 0, "b": 1, "c": 2}, sizes={"a": 3, "b": 3, "c": 2})
    t.trained = {"a": 3, "b": 2}
    assert not AsyncTier.exhausted(t, {"a", "b"})  # b has one sample left
    t.trained["b"] = 3
    assert AsyncTier.exhausted(t, {"a", "b"})  # c is gone and never trained: not waited for
    assert not AsyncTier.exhausted(t, {"a", "b", "c"})  # c is alive: it may still train
    assert AsyncTier.exhausted(t, set())  # those that trained count even when not alive
    t.trained = {}
    assert not AsyncTier.exhausted(t, set())  # nobody: not "used up"


@pytest.mark.parametrize(("n", "meta", "exhausted"), [
    (100, {}, True),  # a learner's update trained on its whole partition
    (60, {}, False),  # an edge's partial of part of it
    (60, {"exhausted": "true"}, True),  # the edge says every child used its whole stride
    (60, {"exhausted": "yes"}, False),
])
def test_the_runner_takes_an_edges_word_that_its_partition_is_used_up(
        n: int, meta: dict[str, str], exhausted: bool) -> None:
    from orchestrator.runs.async_runner import AsyncTaskRunner

    runner = AsyncTaskRunner(build_aggregator("spin", _state(0), k=10, pi_s=None))
    pulled = runner.pull("edge-1", 100, limit=100)
    assert pulled is not None and pulled[0] == 0
    runner.push("edge-1", encode_state(_state(1), {"base_version": 0, "n_samples": n, **meta}))
    assert ("edge-1" in runner.exhausted) is exhausted
    assert runner.stalled() is exhausted  # nothing in flight: a task would end now


def test_a_child_reads_only_its_own_stride_of_the_edges_partition() -> None:
    from orchestrator.hierarchy.asynctier import slice_rows

    rows = [slice_rows(10, j, 3) for j in range(3)]
    assert rows == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(r for row in rows for r in row) == list(range(10))
    # The edge re-encodes a stride as a shard of its own (the agent decodes it as it would
    # the orchestrator's partition).
    import numpy as np

    from plexus.shards import decode_shard

    x, y = np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10, dtype=np.int64)
    sx, sy, _ = decode_shard(encode_shard(x[rows[1]], y[rows[1]]))
    assert sy.tolist() == [1, 4, 7] and sx[:, 0].tolist() == [2.0, 8.0, 14.0]


# -- extended tier: real processes ------------------------------------------------------------







class Edge:
    """An edge aggregator process under a LocalFleet orchestrator."""

    def __init__(self, fleet: LocalFleet, root: Path, flush_s: float) -> None:
        self.fleet, self.root, self.flush_s = fleet, root, flush_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = root / "edge"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        self.procs["edge"] = spawn(
            ["aggregator", "serve", "--upstream", self.fleet.url, "--port", str(self.port),
             "--data-dir", str(self.data), "--join-token", JOIN, "--name", "edge-1",
             "--heartbeat-s", "1", "--async-flush-s", str(self.flush_s)],
            self.root / "edge.log", {"PLEXUS_UPSTREAM_JOIN_TOKEN": self.fleet.join_token})

    def start_child(self, name: str) -> None:
        self.procs[name] = spawn(
            ["-c", "import sys, torch; from plexus.cli import main; sys.argv[0] = 'plexus'; "
             "main()", "agent", "run", "--orchestrator", self.url, "--name", name,
             "--host", "127.0.0.1", "--data-dir", str(self.root / "agents" / name)],
            self.root / f"agent-{name}.log", {"PLEXUS_JOIN_TOKEN": JOIN})

    def health(self) -> dict[str, Any] | None:
        try:
            return dict(httpx.get(f"{self.url}/healthz", timeout=2).json())
        except (httpx.HTTPError, ValueError):
            return None

    def ready(self, children: int) -> bool:
        h = self.health()
        return bool(h and h["enrolled"] and h["children"] == children)

    def stop(self) -> None:
        for p in self.procs.values():
            stop(p)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    fleet = LocalFleet(tmp_path / "orchestrator", speeds={}, heartbeat_s=1.0)
    e = Edge(fleet, tmp_path, flush_s=600.0)
    try:
        fleet.start()
        yield e
    finally:
        e.stop()
        fleet.stop()
        logs = [*tmp_path.glob("*.log"), *(tmp_path / "orchestrator").glob("*.log")]
        for log in sorted(logs):
            sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}\n")


def _initial_accuracy(body: dict[str, Any]) -> float:
    from orchestrator.runs.taskdata import initial_model
    from plexus.datasets import load_dataset
    from plexus.spec import load_spec
    from plexus.training import evaluate

    parsed = load_spec(body)
    data = load_dataset(parsed.dataset, seed=parsed.seed)
    return float(evaluate(initial_model(parsed, data.input_shape, data.num_classes),
                          data.test_x, data.test_y)[1])


@pytest.mark.extended
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("aggregator", ["spin", "fedbuff"])
def test_an_async_task_through_an_edge_learns(edge: Edge, aggregator: str) -> None:
    # Arrange: the orchestrator's only learner is the edge; two agents sit behind it.
    edge.flush_s = 3.0
    edge.start()
    for name in ("child-a", "child-b"):
        edge.start_child(name)
    wait_for(lambda: edge.ready(2), 180, "the edge enrolled with two children")
    client = edge.fleet.client()
    # 225 samples per child arriving at 20/s: data for about 11 s (K = 2). max_updates is out
    # of reach, so the task ends when the edge says both strides are used up: with a bound
    # the faster child alone reached it before the other had 80 samples (CI: 17 pushes in 2 s).
    body = {**SPEC, "async": {**SPEC["async"], "aggregator": aggregator, "k": 2,
                              "arrival_rate": 20.0, "max_updates": 10_000}}
    start = _initial_accuracy(body)

    # Act
    task_id = int(client.submit(body)["id"])
    final = wait_for(lambda: (t := client.task(task_id))["state"] != "running" and t, 300,
                     "the task ending")

    # Assert: it finished once both children had trained on their whole strides (the edge
    # said its partition is used up), every merged update came from the edge, each child's
    # updates went up in some partial, and the model learned.
    assert final["state"] == "finished", final
    assert final["reason"] is not None and "no further progress" in final["reason"], final
    rounds = client.rounds(task_id)
    edge_id = {lr["name"]: str(lr["id"]) for lr in client.learners()}["edge-1"]
    assert {k for r in rounds for k in r["allocation"]} == {edge_id}
    assert len(rounds) >= 3
    sent = [line for line in (edge.root / "edge.log").read_text().splitlines()
            if "sent up" in line]
    for child in ("child-a", "child-b"):
        assert any(f"'{child}'" in line for line in sent), sent
    # Learned: the best version, not the last. The partitions are Dirichlet (non-i.i.d.), and
    # the last partials often come from one child alone, which pulls the model toward its
    # classes (CI: 0.11 -> 0.56 -> 0.40 at the end); that is async FL, not the tier.
    accuracy = [r["accuracy"] for r in rounds]
    assert max(accuracy) > start + 0.3, (start, accuracy)


class _Child:
    """A learner driven by the test: enrolled with the edge, its join_async answered by a
    real RPC server of its own; it pulls and pushes by hand."""

    def __init__(self, url: str, name: str) -> None:
        self.joined: list[int] = []
        registry = rpc.Registry()

        def join_async(task: dict[str, Any], task_id: int, client: int) -> dict[str, Any]:
            self.joined.append(client)
            return {"task_id": task_id, "client": client, "joined": True}

        def leave_async(task_id: int) -> dict[str, Any]:
            return {"left": True}

        registry.add(join_async, name="join_async")
        registry.add(leave_async, name="leave_async")
        self.worker = rpc.Worker(registry, tokens=frozenset())
        self.server = rpc.ServerThread(self.worker.app).start()
        r = httpx.post(f"{url}/v1/learners/enroll", timeout=10, json={
            "join_token": JOIN, "name": name, "facts": {}, "endpoint": self.server.url})
        assert r.status_code == 200, r.text
        self.id, token = int(r.json()["learner_id"]), str(r.json()["token"])
        self.worker.tokens = frozenset({token})
        self.http = httpx.Client(base_url=url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})
        self.name = name

    def heartbeat(self) -> bool:
        # As an agent does: a heartbeat the edge (restarting) misses is sent again later.
        with contextlib.suppress(httpx.TransportError):
            self.http.post(f"/v1/learners/{self.id}/heartbeat", json={"facts": {}})
        return True

    def close(self) -> None:
        self.http.close()
        self.server.stop()


@pytest.mark.extended
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_edge_killed_with_a_buffered_update_forwards_it_after_its_restart(
        edge: Edge) -> None:
    # Arrange: two hand-driven children behind the edge; a SPIN task with K = 1.
    edge.start()
    wait_for(lambda: edge.ready(0) or edge.health(), 120, "the edge up")
    kids = [_Child(edge.url, n) for n in ("kid-a", "kid-b")]
    try:
        for k in kids:
            k.heartbeat()
        wait_for(lambda: all([k.heartbeat() for k in kids]) and edge.ready(2), 60,
                 "the edge enrolled with two children")
        client = edge.fleet.client()
        task_id = int(client.submit({**SPEC, "async": {**SPEC["async"], "max_updates": 1}})
                      ["id"])
        wait_for(lambda: all([k.heartbeat() for k in kids]) and all(k.joined for k in kids), 60,
                 "both children joined")
        # Each child reads its own stride of the edge's partition.
        sizes = []
        for k in kids:
            r = k.http.get(f"/v1/tasks/{task_id}/partitions/{k.joined[0]}")
            assert r.status_code == 200, r.text
            sizes.append(len(decode_state(r.content)[0]["y"]))
        # Both pull version 0 (one upstream pull); a trains and pushes; the edge keeps it.
        pulled = [k.http.post(f"/v1/tasks/{task_id}/pull", json={"n_samples": n})
                  for k, n in zip(kids, sizes, strict=True)]
        assert [p.status_code for p in pulled] == [200, 200], [p.text for p in pulled]
        assert [p.headers["x-model-version"] for p in pulled] == ["0", "0"]
        base, _ = decode_state(pulled[0].content)
        trained = [{n: v + (i + 1) * 0.01 for n, v in base.items()} for i in range(2)]
        a = encode_state(trained[0], {"base_version": 0, "n_samples": sizes[0]})
        assert kids[0].http.post(f"/v1/tasks/{task_id}/updates", content=a).status_code == 200
        assert (edge.data / "async" / str(task_id) / "buffer" / "kid-a.safetensors").exists()

        # Act: SIGKILL the edge with a's update buffered, start it again; b pushes.
        stop(edge.procs["edge"], signal.SIGKILL)
        edge.start()
        wait_for(lambda: all([k.heartbeat() for k in kids]) and edge.ready(2), 120,
                 "the edge back with its children")
        b = encode_state(trained[1], {"base_version": 0, "n_samples": sizes[1]})
        r = kids[1].http.post(f"/v1/tasks/{task_id}/updates", content=b)
        assert r.status_code == 200, r.text

        # Assert: the partial went up (both members answered) and ended the task (max 1
        # update); the orchestrator's version 1 is the flat sample-weighted mean of a and b.
        final = wait_for(lambda: (t := client.task(task_id))["state"] != "running" and t,
                         60, "the task ending")
        assert final["state"] == "finished", final
        (merged,) = client.rounds(task_id)
        assert merged["model_version"] == 1
        model = json.loads(json.dumps(merged["allocation"]))
        assert sum(model.values()) == 1  # one (partial) update
        from orchestrator.store.files import Layout

        v1, _ = decode_state(Layout(edge.fleet.data_dir).model(task_id, 1).read_bytes())
        w = [float(s) for s in sizes]
        for n in base:
            flat = (w[0] * trained[0][n] + w[1] * trained[1][n]) / (w[0] + w[1])
            assert torch.allclose(v1[n], flat, rtol=0, atol=1e-6), n
    finally:
        for k in kids:
            k.close()
