"""Split learning end to end with real processes: an orchestrator and agents on loopback train
a factory model split at its hidden layer (device half on the agents, server half in the
orchestrator, one request per batch), the agent without the factory is not given the task,
the bytes received match the paths the gates chose, and the per-batch route refuses what does
not belong to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from orchestrator.client import Client
from orchestrator.local.fleet import LocalFleet
from tests.orchestrator.test_user_models import _with_path, plugin_path  # noqa: F401
from tests.waiting import finished, wait_for

pytestmark = pytest.mark.extended

ACCURACY = 0.80  # digits (10 classes, chance 0.10), 3 rounds of two learners
# The MLP factory is Flatten, Linear(64, 32), LayerNorm, ReLU, Linear: cut after the ReLU.
PATHS = [{"channels": None, "bits": 8}, {"channels": 4, "bits": 4}]
WIDE, CHEAP = 32 + 8, 2 + 8  # wire bytes per sample of each path (codes + lo/step)
# The gradient back per sample at each path's codes ([32] and [4] values): float32, 8 bits.
GRAD = {32: (32 * 4, 4 * 4), 8: (32 + 8, 4 + 8)}


def split_spec(name: str, **split: Any) -> dict[str, Any]:
    return {"name": name, "model": {"factory": "example-mlp"}, "dataset": {"name": "digits"},
            "partition": {"shard_size": 100}, "seed": 1,
            "training": {"optimizer": "adam", "lr": 0.01, "batch_size": 32},
            "mode": "split",
            "split": {"cut": 4, "paths": PATHS, "target_ratio": 0.3, "rounds": 3, **split}}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, plugin_path: Path  # noqa: F811
          ) -> Iterator[LocalFleet]:
    f = LocalFleet(Path(tmp_path_factory.mktemp("split")) / "data",
                   speeds={"a": 1.0, "b": 1.0})
    try:
        def with_factory() -> None:  # the orchestrator builds the server half: it needs it too
            f.start_orchestrator()
            f.spawn_agent("a")
            f.spawn_agent("b")

        _with_path(plugin_path, with_factory)
        _with_path(None, lambda: f.spawn_agent("bare"))  # no factory installed there
        # All three import torch at once (spawned, then waited for together).
        with f.client() as c:
            c.wait_learners(3, timeout_s=180.0)
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def client(fleet: LocalFleet) -> Iterator[Client]:
    with fleet.client() as c:
        yield c


@pytest.fixture(scope="module")
def trained(client: Client) -> dict[str, Any]:
    created = client.submit(split_spec("split-mlp"))
    return finished(client, created["id"], timeout_s=300.0)


def test_split_task_trains_with_two_agents_and_skips_the_one_without_the_factory(
        client: Client, trained: dict[str, Any]) -> None:
    assert trained["state"] == "finished", trained["reason"]
    ids = {lr["name"]: str(lr["id"]) for lr in client.learners()}
    rounds = client.rounds(trained["id"])
    assert [r["index"] for r in rounds] == [0, 1, 2]
    for r in rounds:
        assert set(r["samples"]) == {ids["a"], ids["b"]}
        assert min(r["samples"].values()) > 0
        assert "factory 'example-mlp' is not installed" in r["left_out"][ids["bare"]]
    assert rounds[-1]["accuracy"] >= ACCURACY, rounds[-1]


def test_bytes_received_match_the_paths_and_the_ratio_follows_the_target(
        client: Client, trained: dict[str, Any]) -> None:
    last = client.rounds(trained["id"])[-1]
    for key, n in last["samples"].items():
        stats = last["times"][key]
        # Per sample: its path's codes + lo/step, its label (8) and path id (1), plus each
        # request's RPC header (a few hundred bytes per 32-sample batch).
        per_sample = stats["payload_bytes"] / n
        expected = stats["ratio"] * WIDE + (1 - stats["ratio"]) * CHEAP + 9
        assert per_sample == pytest.approx(expected, abs=0.5)
        assert stats["payload_bytes"] < stats["received_bytes"] < stats["payload_bytes"] + \
            stats["batches"] * 1200
        assert abs(stats["ratio"] - 0.3) < 0.15, stats
        # The answers: the float32 gradient at the codes, plus each answer's RPC header.
        wide, cheap = GRAD[32]
        grads = n * (stats["ratio"] * wide + (1 - stats["ratio"]) * cheap)
        assert grads < stats["answered_bytes"] < grads + stats["batches"] * 1200, stats


def test_8_bit_gradients_come_back_in_fewer_bytes_and_still_train(client: Client) -> None:
    spec = split_spec("split-g8", grad_bits=8)
    done = finished(client, client.submit(spec)["id"], timeout_s=300.0)
    assert done["state"] == "finished", done["reason"]
    last = client.rounds(done["id"])[-1]
    assert last["accuracy"] >= ACCURACY, last
    wide, cheap = GRAD[8]
    for key, n in last["samples"].items():
        stats = last["times"][key]
        grads = n * (stats["ratio"] * wide + (1 - stats["ratio"]) * cheap)
        assert grads < stats["answered_bytes"] < grads + stats["batches"] * 1200, stats


def test_the_model_exports_as_one_network_and_as_two_halves(
        fleet: LocalFleet, trained: dict[str, Any], tmp_path: Path,
        plugin_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from plexus.split.export import load_network, save_halves

    monkeypatch.syspath_prepend(str(plugin_path))  # the factory, as where the model is used

    r = httpx.get(f"{fleet.url}/v1/tasks/{trained['id']}/model",
                  headers={"Authorization": f"Bearer {fleet.admin_token}"})
    assert r.status_code == 200
    path = tmp_path / "split.safetensors"
    path.write_bytes(r.content)
    spec = trained["spec"]
    net = load_network(path, spec)
    device_path, server_path = save_halves(path, spec, tmp_path)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        logits = net(x)
        assert logits.shape == (5, 10)
        halves = load_network(device_path, spec, server=server_path)
        torch.manual_seed(0)
        one = net(x)
        torch.manual_seed(0)
        assert torch.allclose(halves(x), one)


def test_a_cut_outside_the_network_is_refused_at_submission(client: Client) -> None:
    from orchestrator.client import APIError

    before = len(client.tasks())
    with pytest.raises(APIError) as caught:
        client.submit(split_spec("bad-cut", cut=9))
    assert caught.value.status == 422 and caught.value.code == "invalid_spec"
    assert "split.cut" in str(caught.value)
    assert len(client.tasks()) == before


def test_the_example_spec_runs(client: Client) -> None:
    from plexus.spec import load_spec

    example = load_spec(Path(__file__).resolve().parents[2] / "docs" / "examples" /
                        "split-digits.yaml").to_dict()
    done = finished(client, client.submit(example)["id"], timeout_s=300.0)
    assert done["state"] == "finished", done["reason"]
    rounds = client.rounds(done["id"])
    # No factory needed: the agent without the plugin takes part too. Three SplitFed rounds
    # of ~15 batches per learner (one learner alone: 0.43 after its 45 batches, 0.86 after 90).
    assert all(len(r["samples"]) == 3 for r in rounds)
    assert rounds[-1]["accuracy"] > 0.3, rounds[-1]
    # `plexus task logs` shows a split task's rounds and its end like any other task's.
    # (The final state is noted just after the task row changes: wait for it.)
    kinds = wait_for(lambda: (k := [e["kind"] for e in client.events(done["id"])["events"]])
                     and k[-1] == "state" and k, 30, "the final state event")
    assert kinds.count("round_closed") == len(rounds), kinds


# Last: the learner it enrolls never answers calls, so a later round would wait for it.
def test_the_step_route_refuses_what_is_not_its_own(fleet: LocalFleet, client: Client,
                                                    trained: dict[str, Any]) -> None:
    url = f"{fleet.url}/v1/tasks/{trained['id']}/split/step"
    assert httpx.post(url, content=b"x").status_code == 401
    enrolled = httpx.post(f"{fleet.url}/v1/learners/enroll", json={
        "join_token": fleet.join_token, "name": "intruder", "facts": {}, "endpoint": None}
    ).json()
    learner = {"Authorization": f"Bearer {enrolled['token']}"}
    finished_answer = httpx.post(url, content=b"garbage", headers=learner)
    assert finished_answer.status_code == 409
    assert finished_answer.json()["error"] == "task_not_running"
    other = httpx.post(f"{fleet.url}/v1/tasks/999999/split/step", content=b"x",
                       headers=learner)
    assert other.status_code == 404
    assert client.task(trained["id"])["state"] == "finished"


def test_a_learner_that_stops_heartbeating_does_not_hold_the_round(
        fleet: LocalFleet, client: Client) -> None:
    import socket
    import threading
    import time

    from plexus.spec import load_spec

    # The ghost's endpoint accepts connections (the kernel completes them) and never answers:
    # the round's call reaches it and hangs, as on a device that crashed after taking it. (With
    # no endpoint it would be a relayed learner that never polls, refused at once by the relay.)
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    ghost = httpx.post(f"{fleet.url}/v1/learners/enroll", json={
        "join_token": fleet.join_token, "name": "ghost", "facts": {},
        "endpoint": f"http://127.0.0.1:{hole.getsockname()[1]}"}).json()
    beat = f"{fleet.url}/v1/learners/{ghost['learner_id']}/heartbeat"
    headers = {"Authorization": f"Bearer {ghost['token']}"}
    example = load_spec(Path(__file__).resolve().parents[2] / "docs" / "examples" /
                        "split-digits.yaml").to_dict()
    example["split"] = {**example["split"], "rounds": 1, "max_batches": 2}
    running = threading.Event()

    def heartbeat() -> None:  # alive until picked for a round, then silent (a crash)
        while not running.is_set():
            httpx.post(beat, json={"facts": {}}, headers=headers)
            time.sleep(0.5)

    thread = threading.Thread(target=heartbeat)
    thread.start()
    try:
        task = client.submit(example)
            # Picked for the round = granted the task: its token may then read the task's model.
        wait_for(lambda: httpx.get(f"{fleet.url}/v1/tasks/{task['id']}/model",
                                   headers=headers).status_code == 200, 60, "ghost picked")
    finally:
        running.set()
        thread.join()
    try:
        done = finished(client, task["id"], timeout_s=100.0)  # round_timeout_s is 600
    finally:
        hole.close()
    assert done["state"] == "finished", done["reason"]
    last = client.rounds(task["id"])[-1]
    # Left out as gone: by the heartbeat sweep, or at once by the relay (rpc.WorkerGone) when
    # the ghost's relay queue had not been polled for alive_after_s.
    why = last["left_out"][str(ghost["learner_id"])]
    assert "stopped heartbeating" in why or "has not polled this relay" in why, why
    assert len(last["samples"]) == 3
