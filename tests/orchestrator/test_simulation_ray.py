"""`plexus simulate --ray` on a real two-node Ray cluster: the same trace as without Ray.

The cluster is two `ray start --block` processes on 127.0.0.1 (a head and a second node that
joins it by address), one CPU and a 100 MB object store each, no dashboard; the fixture tears
both down even when the test fails. Without Ray installed the test skips (fails when CI is
"true").
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.simulation import Simulation, build_world, load_config, simulate

pytestmark = [pytest.mark.extended, pytest.mark.timeout(600)]

OBJECT_STORE_BYTES = 100_000_000


def _need_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        reason = "ray is not installed (pip install 'plexus-edge[ray]')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the Ray cluster test")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_start(args: list[str], temp_dir: str, log: Path) -> subprocess.Popen[bytes]:
    ray = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}  # with the fixture's token
    common = ["--num-cpus=1", f"--object-store-memory={OBJECT_STORE_BYTES}",
              "--disable-usage-stats", f"--temp-dir={temp_dir}", "--block"]
    with log.open("ab") as out:
        return subprocess.Popen([ray, "start", *args, *common], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_port(port: int, proc: subprocess.Popen[bytes], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start --head exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)  # polling the port with a deadline, not waiting for a fixed time
    raise AssertionError(f"Ray head did not listen on {port} within {deadline_s} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to a `ray start --block` stops the node's processes; SIGKILL its group after."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture
def ray_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Address HOST:PORT of a two-node Ray cluster made of separate `ray start` processes."""
    _need_ray()
    # Ray's token authentication, with a token of this test's own: the nodes, this process's
    # driver and the CLI's (which inherits the environment) all present it.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    # Ray's socket paths must stay short: a temp dir of our own under /tmp, not tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path / "ray.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_ray_start(["--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                                 "--include-dashboard=false"], temp_dir, log))
        _wait_port(port, procs[0], 120)
        procs.append(_ray_start([f"--address={address}", "--node-ip-address=127.0.0.1"],
                                temp_dir, log))
        yield address
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(temp_dir, ignore_errors=True)
        if log.exists():
            sys.stderr.write(log.read_text(errors="replace")[-4000:])


def _config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "seed": 3,
        "clients": 12,
        "model": "twonn",
        "dataset": {"name": "synthetic", "samples": 600, "test_fraction": 0.2},
        "pretrain": {"samples": 60, "epochs": 2},
        "training": {"lr": 0.05, "batch_size": 8, "epochs": 1},
        "arrivals": {"rate": 0.5, "pull_threshold": 4},
        "devices": {"compute": 20.0, "bandwidth": 1.0e6},
        "aggregator": {"name": "spin", "k": 3, "pi_s": 2.0},
        "stop": {"max_time_s": 20.0},
        "threads": 1,
        "chunk": 2,  # several Ray tasks per training call, so both nodes get work
    }
    cfg.update(over)
    return cfg


def _wait_nodes(ray: Any, n: int, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if sum(1 for node in ray.nodes() if node.get("Alive")) >= n:
            return
        time.sleep(0.5)  # polling cluster membership with a deadline
    raise AssertionError(f"the Ray cluster did not reach {n} nodes in {deadline_s} s")


def _without_wall(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "wall_s"}


def test_ray_two_node_cluster_gives_the_embedded_trace(ray_cluster: str, tmp_path: Path) -> None:
    import ray

    from orchestrator.simulation.ray_backend import RayTrainer

    # Arrange: the embedded run, and a driver connected to the two-node cluster.
    cfg = load_config(_config())
    embedded_summary, embedded = simulate(cfg)
    world = build_world(cfg)
    trainer = RayTrainer(ray_cluster, model=cfg.model, input_shape=world.input_shape,
                         num_classes=world.num_classes, threads=cfg.threads)
    try:
        _wait_nodes(ray, 2, 120)
        # Act
        sim = Simulation(world, trainer=trainer)
        summary = sim.run()
        # Assert: identical events (times, versions, weights, accuracies) and summary.
        assert sim.trace == embedded.trace
        assert _without_wall(summary) == _without_wall(embedded_summary)
        assert summary["aggregations"] > 0
        assert trainer.nodes() == 2
        assert trainer.tasks > 1
        assert len(trainer.nodes_used) == 2, "both nodes' workers trained clients"
    finally:
        ray.shutdown()

    # The CLI, in its own process, on the same cluster: the same trace again.
    cfg_path = tmp_path / "sim.json"
    cfg_path.write_text(json.dumps(_config()))
    out = tmp_path / "trace.json"
    run = subprocess.run(
        [str(Path(sys.executable).with_name("plexus")), "simulate", str(cfg_path),
         "--ray", ray_cluster, "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 node(s)" in run.stderr
    doc = json.loads(out.read_text())
    assert doc["events"] == json.loads(json.dumps(embedded.trace))
