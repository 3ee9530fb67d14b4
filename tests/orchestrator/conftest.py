"""Fixtures for the orchestrator tests: real orchestrator and agent processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ADMIN = "test-admin-token"
JOIN = "test-join-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose output goes to a log file (shown when a test fails)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log = args, log
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self._fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._fh.close()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Orchestrator(Proc):
    """`plexus orchestrator serve` on an ephemeral loopback port."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token, self.join_token = ADMIN, JOIN
        super().__init__(
            [sys.executable, "-m", "plexus.cli", "orchestrator", "serve", "--port",
             str(self.port), "--data-dir", str(data_dir), "--admin-token", ADMIN,
             "--join-token", JOIN, "--heartbeat-s", "1", "--log-level", "warning"],
            data_dir.parent / f"orchestrator-{self.port}.log")

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.popen.poll() is not None:
                raise RuntimeError(f"orchestrator exited early:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"orchestrator not healthy after {timeout_s} s:\n{self.tail()}")


@pytest.fixture
def orchestrator(tmp_path: Path) -> Iterator[Orchestrator]:
    orch = Orchestrator(tmp_path / "data")
    try:
        orch.wait_healthy()
        yield orch
    finally:
        orch.stop()


@pytest.fixture(scope="module")
def shared_orchestrator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    """One orchestrator for a whole test module (starting one costs seconds)."""
    orch = Orchestrator(tmp_path_factory.mktemp("orch") / "data")
    try:
        orch.wait_healthy()
        yield orch
    finally:
        orch.stop()


@pytest.fixture
def admin(shared_orchestrator: Orchestrator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_orchestrator.url, timeout=30.0,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        yield client
