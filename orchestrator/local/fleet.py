"""A local fleet: one orchestrator process and agent processes of emulated speeds on loopback.

Used by `plexus demo`, the end-to-end tests and `benchmarks/dab_vs_csa.py`. Each process is a
real `plexus ... ` command line; speeds are imposed with `orchestrator.local.emulation.DutyCycle`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from orchestrator.client import APIError, Client
from orchestrator.local.emulation import DutyCycle


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # If the process running the fleet dies without stopping it (kill -9, a timeout), its
    # children must not linger, least of all frozen by a duty cycle (SIGSTOP): on Linux ask
    # the kernel to SIGKILL them when their parent goes.
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    duty: DutyCycle | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.duty is not None and sig != signal.SIGKILL:
            self.duty.stop()  # a stopped process would not act on the signal
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.duty is not None:
            self.duty.stop()
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.duty is not None:
            self.duty.stop()
        self.log.close()


@dataclass
class LocalFleet:
    """Start, kill and restart an orchestrator and named agents; `stop()` ends them all.

    `speeds` maps agent names to the CPU fraction each may use (1.0 = unthrottled).
    Durations are in seconds.
    """

    data_dir: Path
    speeds: dict[str, float] = field(default_factory=dict)
    heartbeat_s: float = 1.0
    port: int = field(default_factory=free_port)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    join_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    # Agents that bind no port and serve through the orchestrator's relay (as behind NAT).
    relayed: set[str] = field(default_factory=set)
    db_url: str | None = None  # None: SQLite file in data_dir
    # TLS: the orchestrator serves https with this certificate and key, and agents and the
    # admin client verify it against `ca_file` (PEM).
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ca_file: Path | None = None
    orchestrator: _Proc | None = None
    agents: dict[str, _Proc] = field(default_factory=dict)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_certfile else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def client(self) -> Client:
        if self.ca_file is None:
            return Client(self.url, self.admin_token)
        return Client(self.url, self.admin_token,
                      verify=ssl.create_default_context(cafile=str(self.ca_file)))

    def _spawn(self, args: list[str], log_name: str, boot: str | None = None,
               env: dict[str, str] | None = None) -> _Proc:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / log_name, "ab")  # noqa: SIM115 - closed by _Proc.stop
        # One thread per process: several agents share few cores, as separate devices would
        # not, and oversubscribed BLAS threads would only add noise.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", **(env or {})}
        head = ["-c", boot] if boot else ["-m", "plexus.cli"]
        popen = subprocess.Popen([sys.executable, *head, *args], stdout=log,
                                 stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                 preexec_fn=_die_with_parent)
        return _Proc(popen, log)

    def start_orchestrator(self, timeout_s: float = 60.0) -> None:
        """Start (or restart) the orchestrator on the same port and data dir; wait for it."""
        self.orchestrator = self._spawn(
            ["orchestrator", "serve", "--port", str(self.port), "--data-dir",
             str(self.data_dir), "--admin-token", self.admin_token, "--join-token",
             self.join_token, "--heartbeat-s", str(self.heartbeat_s), "--log-level",
             "warning", *(["--db-url", self.db_url] if self.db_url else []),
             *(["--ssl-certfile", str(self.ssl_certfile), "--ssl-keyfile",
                str(self.ssl_keyfile)] if self.ssl_certfile else [])],
            "orchestrator.log",
            # It calls relayed agents through its own relay over https: trust the CA there.
            env={"SSL_CERT_FILE": str(self.ca_file)} if self.ca_file else None)
        end = time.monotonic() + timeout_s
        with self.client() as c:
            while True:
                if not self.orchestrator.alive():
                    raise RuntimeError("the orchestrator exited at start; see "
                                       f"{self.data_dir / 'orchestrator.log'}")
                try:
                    c.health()
                    return
                except APIError:
                    if time.monotonic() > end:
                        raise
                time.sleep(0.1)

    def spawn_agent(self, name: str) -> None:
        """Start agent `name` unthrottled, with torch imported before it enrolls.

        Importing torch is a one-off cost of a fresh process, not part of any experiment;
        doing it before enrolment and throttling only afterwards keeps the emulation about the
        work (benchmarking, downloading, training).
        """
        boot = ("import sys, torch; from plexus.cli import main; sys.argv[0] = 'plexus'; "
                "main()")
        self.speeds.setdefault(name, 1.0)
        # The join token travels in the environment, not on the command line.
        args = ["agent", "run", "--orchestrator", self.url, "--name", name, "--host",
                "127.0.0.1", "--data-dir", str(self.data_dir / "agents" / name)]
        if self.ca_file is not None:
            args += ["--ca-file", str(self.ca_file)]
        if name in self.relayed:
            args.append("--relay")
        self.agents[name] = self._spawn(args, f"agent-{name}.log", boot=boot,
                                        env={"PLEXUS_JOIN_TOKEN": self.join_token})

    def throttle(self, name: str) -> None:
        """Impose agent `name`'s emulated speed (a CPU duty cycle) from now on."""
        proc = self.agents[name]
        if self.speeds[name] < 1.0 and proc.duty is None:
            proc.duty = DutyCycle(proc.popen.pid, self.speeds[name]).start()

    def start_agent(self, name: str, fraction: float | None = None,
                    timeout_s: float = 60.0) -> None:
        """Start agent `name`, wait until it is enrolled, then throttle it to its speed."""
        if fraction is not None:
            self.speeds[name] = fraction
        self.spawn_agent(name)
        self._wait_enrolled({name}, timeout_s)
        self.throttle(name)

    def _wait_enrolled(self, names: set[str], timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        with self.client() as c:
            while True:
                alive = {lr["name"] for lr in c.learners() if lr["alive"]}
                if names <= alive:
                    return
                for n in names - alive:
                    if not self.agents[n].alive():
                        raise RuntimeError(f"agent {n} exited; see "
                                           f"{self.data_dir / f'agent-{n}.log'}")
                if time.monotonic() > end:
                    raise TimeoutError(f"agents {sorted(names - alive)} did not enroll within "
                                       f"{timeout_s:.0f} s")
                time.sleep(0.2)

    def start(self, timeout_s: float = 90.0) -> None:
        """Orchestrator first, then every agent in `speeds`; throttle them once enrolled."""
        self.start_orchestrator()
        for name in self.speeds:
            self.spawn_agent(name)
        self._wait_enrolled(set(self.speeds), timeout_s)
        for name in self.speeds:
            self.throttle(name)

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.agents[name]
        proc.signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(10)

    def kill_orchestrator(self, sig: int = signal.SIGKILL) -> None:
        assert self.orchestrator is not None
        self.orchestrator.signal(sig)
        self.orchestrator.popen.wait(10)
        self.orchestrator.log.close()

    def stop(self) -> None:
        """Agents first (they would only retry), then the orchestrator; all agents are told
        at once so their shutdowns overlap."""
        for proc in self.agents.values():
            if proc.duty is not None:
                proc.duty.stop()
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.agents.values():
            # Agents hold nothing durable; one that is slow to exit is killed after 5 s.
            proc.stop(timeout_s=5.0)
        if self.orchestrator is not None:
            self.orchestrator.stop()

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
