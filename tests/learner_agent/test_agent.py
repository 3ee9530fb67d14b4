"""The agent process enrolls against the real orchestrator and answers its procedures over RPC."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch

import rpc
from learner_agent.daemon import AgentDaemon
from orchestrator.client import Client
from orchestrator.local.fleet import LocalFleet

from .conftest import TASK

ROOT = Path(__file__).resolve().parents[2]


def _poll(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < end, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.1)


def _learner(client: Client, name: str) -> dict[str, object] | None:
    return next((lr for lr in client.learners() if lr["name"] == name and lr["alive"]), None)


def _learner_token(fleet: LocalFleet, name: str) -> str:
    # The token the orchestrator issued is in its store (the API never shows it); only a
    # test that plays the orchestrator's part in calling the agent needs it.
    with sqlite3.connect(fleet.data_dir / "plexus.db") as db:
        row = db.execute("SELECT token FROM learners WHERE name = ?", (name,)).fetchone()
    assert row is not None, f"learner {name} is not in the orchestrator's store"
    return str(row[0])


def _grant(fleet: LocalFleet, name: str, task_id: int) -> None:
    # A learner token reads only the tasks the orchestrator gave it work of; the orchestrator
    # records that before it calls the agent (`LearnerGateway.grant`), so a test playing its
    # part records it too.
    with sqlite3.connect(fleet.data_dir / "plexus.db") as db:
        row = db.execute("SELECT id FROM learners WHERE name = ?", (name,)).fetchone()
        assert row is not None, f"learner {name} is not in the orchestrator's store"
        db.execute("INSERT INTO task_participants (task_id, learner_id) VALUES (?, ?)",
                   (task_id, row[0]))


def _shard_bytes_served(fleet: LocalFleet) -> float:
    text = httpx.get(f"{fleet.url}/metrics", timeout=10).text
    found = re.search(r'^plexus_bytes_served_total\{kind="shard"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def orchestrator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFleet, int]]:
    """A real `plexus orchestrator serve` with TASK submitted and cancelled at once: its
    shards and model stay served, and no round driver calls the agents under test."""
    fleet = LocalFleet(tmp_path_factory.mktemp("orch") / "data")
    try:
        fleet.start_orchestrator()
        with fleet.client() as c:
            task_id = int(c.submit(TASK)["id"])
            c.cancel(task_id)
        yield fleet, task_id
    finally:
        fleet.stop()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _agent_cmd(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "plexus.cli", "agent", "run", "--orchestrator", url, *extra]


def test_agent_process_enrolls_and_answers(
    orchestrator: tuple[LocalFleet, int], tmp_path: Path
) -> None:
    fleet, task_id = orchestrator
    token_file = tmp_path / "join-token"
    token_file.write_text(fleet.join_token + "\n")
    token_file.chmod(0o600)
    proc = subprocess.Popen(
        _agent_cmd(fleet.url, "--join-token-file", str(token_file), "--name", "pi-07",
                   "--host", "127.0.0.1", "--data-dir", str(tmp_path / "agent")),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        with fleet.client() as admin:
            _poll(lambda: _learner(admin, "pi-07") is not None, "enrolment of pi-07")
            record = _learner(admin, "pi-07")
            assert record is not None
            version = admin.task(task_id)["model_version"]
        assert set(record["facts"]) == {  # type: ignore[arg-type]
            "cores", "memory_bytes", "load_1m", "platform", "machine", "cuda", "model_factories"}
        endpoint = str(record["endpoint"])
        assert endpoint.startswith("http://127.0.0.1:")
        # The idle agent started by the CLI has not loaded torch (its ~250 MB wait for a task).
        maps = Path(f"/proc/{proc.pid}/maps")
        if maps.exists():
            assert "libtorch" not in maps.read_text()

        # Without the learner token the worker refuses to run anything.
        with rpc.connect(endpoint) as anonymous, pytest.raises(rpc.AuthError):
            anonymous.status()

        token = _learner_token(fleet, "pi-07")
        _grant(fleet, "pi-07", task_id)
        with rpc.connect(endpoint, token=token, duplex=True, timeout=60) as agent:
            bench = agent.benchmark(TASK, task_id, None)
            assert bench["bandwidth"] > 0 and bench["compute"] > 0 and bench["state"] == "idle"

            plan = agent.plan(TASK, task_id)
            assert set(plan) == {"a_k"} and isinstance(plan["a_k"], int) and plan["a_k"] > 0

            # A bad spec is a typed error, and the agent keeps serving.
            with pytest.raises(rpc.RemoteError) as info:
                agent.plan({**TASK, "model": "resnet"}, task_id)
            assert info.value.remote_type == "BadTask" and "model" in str(info.value)

            answer = agent.train(TASK, task_id, 0, [0, 1, 2], 30.0, None)
            assert answer["samples_trained"] == 3 * 100 * 2 and not answer["halted"]
            assert answer["model_version"] == version
            assert isinstance(answer["params"]["1.weight"], torch.Tensor)

            status = agent.status()
            assert status["name"] == "pi-07" and not status["busy"]
            assert "bandwidth" not in status["facts"] and "compute" not in status["facts"]
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        _stop(proc)


def test_agent_refuses_a_readable_token_file_and_a_missing_token(
    orchestrator: tuple[LocalFleet, int], tmp_path: Path
) -> None:
    fleet, _ = orchestrator
    token_file = tmp_path / "join-token"
    token_file.write_text(fleet.join_token)
    token_file.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if k != "PLEXUS_JOIN_TOKEN"}
    loose = subprocess.run(_agent_cmd(fleet.url, "--join-token-file", str(token_file)),
                           capture_output=True, text=True, env=env, timeout=60, check=False)
    assert loose.returncode == 2 and "chmod 600" in loose.stderr
    none = subprocess.run(_agent_cmd(fleet.url), capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert none.returncode == 2 and "--join-token-file" in none.stderr
    both = subprocess.run(
        _agent_cmd(fleet.url, "--ca-file", str(token_file), "--insecure"),
        capture_output=True, text=True, env={**env, "PLEXUS_JOIN_TOKEN": "t"}, timeout=60,
        check=False)
    assert both.returncode == 2 and "contradict" in both.stderr

    # --insecure runs, but says loudly what it gives up before it starts serving.
    insecure = subprocess.Popen(
        _agent_cmd(fleet.url, "--insecure", "--name", "insecure", "--host", "127.0.0.1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**env, "PLEXUS_JOIN_TOKEN": fleet.join_token, "COLUMNS": "200"})
    killer = threading.Timer(60, insecure.kill)
    killer.start()
    try:
        seen = []
        assert insecure.stderr is not None
        for line in insecure.stderr:
            seen.append(line)
            if "serving" in line:
                break
        text = "".join(seen)
        assert "WARNING: --insecure" in text and text.index("WARNING") < text.index("serving")
    finally:
        killer.cancel()
        _stop(insecure)  # type: ignore[arg-type]


def test_daemon_waits_for_the_orchestrator_and_re_enrolls_when_forgotten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="learner_agent")
    fleet = LocalFleet(tmp_path / "data")
    daemon = AgentDaemon(fleet.url, fleet.join_token, name="late", backoff_s=0.05,
                         max_backoff_s=0.2)
    daemon.start(wait_s=0)
    try:
        assert not daemon.enrolled.is_set()  # nothing listens yet: it keeps retrying
        fleet.start_orchestrator()
        assert daemon.enrolled.wait(30)
        # Each connection change is one log line: lost, retrying, reconnected.
        _poll(lambda: any(r.getMessage().startswith("reconnected to the orchestrator after")
                          for r in caplog.records), "a reconnected line")
        said = [r.getMessage() for r in caplog.records if r.name == "learner_agent"]
        assert sum(m.startswith("connection lost:") for m in said) == 1, said
        assert any(m.startswith("retrying in") for m in said), said
        first_token = daemon.client.token
        # The orchestrator goes away and comes back having lost its store: the agent's
        # heartbeats are refused, so it enrolls again under the same name.
        fleet.kill_orchestrator()
        shutil.rmtree(fleet.data_dir)
        fleet.start_orchestrator()
        with fleet.client() as admin:
            _poll(lambda: _learner(admin, "late") is not None, "re-enrolment of late")
        assert daemon.client.token != first_token
        assert daemon.client.token == _learner_token(fleet, "late")
    finally:
        daemon.stop()
        fleet.stop()


def test_stressor_states_in_benchmark_and_train(orchestrator: tuple[LocalFleet, int]) -> None:
    from learner_agent.client import OrchestratorClient
    from learner_agent.errors import BadTask
    from learner_agent.procedures import Agent

    fleet, task_id = orchestrator
    client = OrchestratorClient(fleet.url)
    client.enroll(fleet.join_token, "stressed", {}, None)
    _grant(fleet, "stressed", task_id)
    agent = Agent("stressed", client)
    try:
        shard_size = len(client.shard(task_id, 0))
        before = _shard_bytes_served(fleet)
        answer = agent.benchmark(TASK, task_id, "downloading")
        assert answer["state"] == "downloading" and answer["compute"] > 0
        # 2 benchmark shards plus at least one competing download by the stressor
        assert _shard_bytes_served(fleet) - before >= (2 + 1) * shard_size
        trained = agent.train(TASK, task_id, 0, [0], 30.0, "training")
        assert trained["samples_trained"] == 200 and agent.status()["state"] == "idle"
        # More benchmark shards than the task has (6): the agent reuses the ones it got.
        big = {**TASK, "sync": {**TASK["sync"], "benchmark_shards": 9}}
        assert agent.benchmark(big, task_id, None)["compute"] > 0
        with pytest.raises(BadTask, match="stressor state"):
            agent.benchmark(TASK, task_id, "sleeping")
        with pytest.raises(BadTask, match="deadline_s"):
            agent.train(TASK, task_id, 0, [0], -1.0, None)
        with pytest.raises(BadTask, match="shard"):
            agent.train(TASK, task_id, 0, [-3], 5.0, None)
    finally:
        client.close()


def test_sb_bandwidth_predicts_a_rounds_download_of_a_big_model_and_small_shards(
    orchestrator: tuple[LocalFleet, int]
) -> None:
    """b_k from SB predicts what a round transfers: the 8.3 MB FashionNet model and 50-sample
    shards (157 kB). Timed on the shards alone, b_k was mostly per-request cost and eq. 4.3's
    download term came out ~10x the real one (docs/results.md, "Live agents")."""
    import statistics

    from learner_agent.client import OrchestratorClient
    from learner_agent.procedures import Agent

    fleet, _ = orchestrator
    task = {**TASK, "name": "big-model", "model": "fashionnet",
            "dataset": {"name": "synthetic", "samples": 400},
            "partition": {"kind": "iid", "shard_size": 50},
            "training": {**TASK["training"], "iterations": 1}}
    with fleet.client() as c:
        task_id = int(c.submit(task)["id"])
        c.cancel(task_id)
    client = OrchestratorClient(fleet.url)
    client.enroll(fleet.join_token, "sb-bandwidth", {}, None)
    _grant(fleet, "sb-bandwidth", task_id)
    agent = Agent("sb-bandwidth", client)
    try:
        model_bytes, shard_bytes = len(client.model(task_id)), len(client.shard(task_id, 0))
        assert model_bytes > 20 * shard_bytes  # the case the fix is about
        b = agent.benchmark(task, task_id, "idle")["bandwidth"]
        predicted = (model_bytes + 2 * shard_bytes) / b
        measured = statistics.median(
            agent.train(task, task_id, r, [2 * r, 2 * r + 1], 60.0, "idle")["download_s"]
            for r in range(3))
        # Same process, same link, seconds apart: within 3x either way (it was ~10x over).
        assert measured / 3 < predicted < 3 * measured, (predicted, measured)
    finally:
        client.close()


def test_a_shard_named_several_times_is_downloaded_once(
    orchestrator: tuple[LocalFleet, int],
) -> None:
    # DAB duplicates shards when Σa_k exceeds the dataset: the learner trains on every copy
    # but fetches each distinct shard over the link only once.
    from learner_agent.client import OrchestratorClient
    from learner_agent.procedures import Agent

    fleet, task_id = orchestrator
    client = OrchestratorClient(fleet.url)
    client.enroll(fleet.join_token, "duplicates", {}, None)
    _grant(fleet, "duplicates", task_id)
    agent = Agent("duplicates", client)
    try:
        shard_size = len(client.shard(task_id, 0))
        before = _shard_bytes_served(fleet)
        answer = agent.train(TASK, task_id, 0, [0, 1, 0, 1, 0], 30.0, None)
        assert answer["samples_trained"] == 5 * 100 * 2 and not answer["halted"]
        assert answer["samples_allocated"] == 5 * 100 * 2
        assert _shard_bytes_served(fleet) - before == 2 * shard_size
    finally:
        client.close()


def test_the_agent_keeps_its_secret_and_a_second_one_under_its_name_stops_with_a_hint(
    orchestrator: tuple[LocalFleet, int], tmp_path: Path
) -> None:
    """Finding 5: re-enrolling a name needs that learner's own secret (kept 0600 in the
    agent's data directory); a second agent under the same name gets 409 name_taken, says
    to pass --name and exits non-zero instead of looping."""
    import stat

    fleet, _task = orchestrator
    state = tmp_path / "twin"
    first = AgentDaemon(fleet.url, fleet.join_token, name="twin", data_dir=state, relay=True)
    first.start(wait_s=30)
    try:
        secret = state / "learner_token"
        assert secret.read_text() == first.client.token
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        learner_id = first.client.learner_id
        # The same data directory, while the first agent runs: it may not use the secret.
        second = AgentDaemon(fleet.url, fleet.join_token, name="twin", data_dir=state,
                             relay=True)
        second.start(wait_s=0)
        assert second.wait(30), "the second agent kept trying"
        assert second.fatal is not None and "--name" in second.fatal
        assert not second.enrolled.is_set()
        second.stop()
        # A process on another data directory: the hint on its output and a non-zero exit.
        proc = subprocess.run(
            _agent_cmd(fleet.url, "--name", "twin", "--relay", "--data-dir",
                       str(tmp_path / "elsewhere")),
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PLEXUS_JOIN_TOKEN": fleet.join_token, "COLUMNS": "200"},
        )
        assert proc.returncode != 0
        assert "--name" in proc.stdout + proc.stderr
        first.client.heartbeat({})  # the first agent was never disturbed
        assert secret.read_text() == first.client.token
    finally:
        first.stop()
    # Restarted on its data directory, the learner gets its name (and id) back.
    again = AgentDaemon(fleet.url, fleet.join_token, name="twin", data_dir=state, relay=True)
    again.start(wait_s=30)
    try:
        assert again.client.learner_id == learner_id
    finally:
        again.stop()


def test_retry_delay_doubles_up_to_one_heartbeat_interval() -> None:
    # An agent that beats every 2 s retries an unreachable orchestrator at most every 2 s
    # (not up to max_backoff_s: that left agents "not alive" after a short restart).
    daemon = AgentDaemon("http://127.0.0.1:9", "t", name="backoff", backoff_s=0.5,
                         max_backoff_s=30.0)
    daemon.heartbeat_interval_s = 2.0
    delays = [0.5]
    for _ in range(4):
        delays.append(daemon._longer(delays[-1]))
    assert delays == [0.5, 1.0, 2.0, 2.0, 2.0]
    daemon.heartbeat_interval_s = 60.0
    assert daemon._longer(16.0) == 30.0  # max_backoff_s still bounds it
