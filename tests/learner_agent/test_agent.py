"""The agent process enrolls against a real server and answers its procedures over RPC."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import rpc
from learner_agent.daemon import AgentDaemon

from .conftest import JOIN_TOKEN, TASK, StandIn, make_standin

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def agent_process(standin: StandIn, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [
        sys.executable,
        "-m",
        "plexus.cli",
        "agent",
        "run",
        "--orchestrator",
        standin.url,
        "--join-token",
        JOIN_TOKEN,
        "--name",
        "pi-07",
        "--host",
        "127.0.0.1",
        "--data-dir",
        str(tmp_path / "agent"),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_agent_process_enrolls_and_answers(
    standin: StandIn, agent_process: subprocess.Popen[bytes]
) -> None:
    standin.wait_for(lambda: "pi-07" in standin.learners and standin.heartbeats >= 1)
    record = standin.learners["pi-07"]
    assert set(record["facts"]) == {
        "cores",
        "memory_bytes",
        "load_1m",
        "platform",
        "machine",
        "cuda",
    }
    assert record["endpoint"].startswith("http://127.0.0.1:")
    # The idle agent started by the CLI has not loaded torch (its ~250 MB wait for a task).
    maps = Path(f"/proc/{agent_process.pid}/maps")
    if maps.exists():
        assert "libtorch" not in maps.read_text()

    # Without the learner token the worker refuses to run anything.
    with rpc.connect(record["endpoint"]) as anonymous, pytest.raises(rpc.AuthError):
        anonymous.status()

    with rpc.connect(record["endpoint"], token=record["token"], duplex=True, timeout=60) as agent:
        bench = agent.benchmark(TASK, 1, None)
        assert bench["bandwidth"] > 0 and bench["compute"] > 0 and bench["state"] == "idle"

        plan = agent.plan(TASK, 1)
        assert set(plan) == {"a_k"} and isinstance(plan["a_k"], int) and plan["a_k"] > 0

        # A bad spec is a typed error, and the agent keeps serving.
        with pytest.raises(rpc.RemoteError) as info:
            agent.plan({**TASK, "model": "resnet"}, 1)
        assert info.value.remote_type == "BadTask" and "model" in str(info.value)

        answer = agent.train(TASK, 1, 0, [0, 1, 2], 30.0, None)
        assert answer["samples_trained"] == 3 * 100 * 2 and not answer["halted"]
        assert answer["model_version"] == 5
        assert isinstance(answer["params"]["1.weight"], torch.Tensor)

        status = agent.status()
        assert status["name"] == "pi-07" and not status["busy"]
        assert "bandwidth" not in status["facts"] and "compute" not in status["facts"]
    assert agent_process.poll() is None
    agent_process.send_signal(signal.SIGTERM)
    assert agent_process.wait(timeout=20) in (0, -signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_daemon_waits_for_the_orchestrator_and_re_enrolls_when_forgotten() -> None:
    port = _free_port()
    daemon = AgentDaemon(
        f"http://127.0.0.1:{port}", JOIN_TOKEN, name="late", backoff_s=0.05, max_backoff_s=0.2
    )
    daemon.start(wait_s=0)
    try:
        assert not daemon.enrolled.is_set()  # nothing listens yet: it keeps retrying
        state = make_standin()
        with rpc.ServerThread(state.app(), port=port).start():
            assert daemon.enrolled.wait(30)
            state.wait_for(lambda: state.heartbeats >= 1)
            state.forget_learners()  # e.g. the orchestrator lost its store
            state.wait_for(lambda: state.enrolls >= 2 and daemon.client.token in state.tokens)
            assert daemon.enrolled.is_set()
    finally:
        daemon.stop()


def test_stressor_states_in_benchmark_and_train(standin: StandIn) -> None:
    from learner_agent.client import OrchestratorClient
    from learner_agent.errors import BadTask
    from learner_agent.procedures import Agent

    client = OrchestratorClient(standin.url)
    client.enroll(JOIN_TOKEN, "stressed", {}, None)
    agent = Agent("stressed", client)
    try:
        before = standin.shard_gets
        answer = agent.benchmark(TASK, 1, "downloading")
        assert answer["state"] == "downloading" and answer["compute"] > 0
        # 2 benchmark shards plus at least one competing download by the stressor
        assert standin.shard_gets - before >= 2 + 1
        trained = agent.train(TASK, 1, 0, [0], 30.0, "training")
        assert trained["samples_trained"] == 200 and agent.status()["state"] == "idle"
        # More benchmark shards than the task has (6): the agent reuses the ones it got.
        big = {**TASK, "sync": {**TASK["sync"], "benchmark_shards": 9}}
        assert agent.benchmark(big, 1, None)["compute"] > 0
        with pytest.raises(BadTask, match="stressor state"):
            agent.benchmark(TASK, 1, "sleeping")
        with pytest.raises(BadTask, match="deadline_s"):
            agent.train(TASK, 1, 0, [0], -1.0, None)
        with pytest.raises(BadTask, match="shard"):
            agent.train(TASK, 1, 0, [-3], 5.0, None)
    finally:
        client.close()
