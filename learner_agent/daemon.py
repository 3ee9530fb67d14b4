"""The agent daemon: serve the procedures, enroll, heartbeat, and come back after outages.

Order of start-up: bind the RPC worker first (so the enrolment can carry its real URL), then
enroll, then open the worker to the learner token the orchestrator issued. Behind NAT
(`relay=True`) the worker binds nothing and long-polls the orchestrator's relay instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from learner_agent.client import OrchestratorClient
from learner_agent.errors import OrchestratorRefused, OrchestratorUnreachable
from learner_agent.facts import device_facts
from learner_agent.procedures import Agent, make_registry

log = logging.getLogger("learner_agent")

_NAME_OK = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SECRET_FILE = "learner_token"  # the learner's own secret, mode 0600, in the data directory
NAME_TAKEN_HINT = (
    "another learner already holds the name {name!r} at the orchestrator (a second agent on "
    "this host, or another device): start this agent with --name <another name> (and its own "
    "--data-dir); if it is the same learner restarted, give it the --data-dir it used before"
)


def state_dir(name: str) -> Path:
    """The default data directory of agent `name`: `$XDG_STATE_HOME/plexus/agents/<name>`."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "plexus" / "agents" / name


def _write_secret(path: Path, secret: str) -> None:
    """Write the secret readable by this user only (0600 from the start), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def default_name(data_dir: Path | None) -> str:
    """The name stored in `data_dir/agent.json`, else one made from the host name."""
    if data_dir is not None:
        stored = data_dir / "agent.json"
        if stored.is_file():
            try:
                name = json.loads(stored.read_text()).get("name")
                if isinstance(name, str) and _NAME_OK.match(name):
                    return name
            except ValueError:
                pass
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64] or "learner"
    return host


def _reachable_ip(orchestrator_url: str) -> str:
    # The address this host uses to reach the orchestrator is the one it can be reached on
    # (a UDP connect sends nothing, it only picks the route).
    parts = urlsplit(orchestrator_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, port))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


class AgentDaemon:
    """A running learner agent. `start()` returns once enrolled; `stop()` shuts it down.

    `backoff_s` is the first retry delay after the orchestrator is unreachable (seconds); it
    doubles up to `max_backoff_s` and to the heartbeat interval the orchestrator gave.
    `verify` checks an https orchestrator's certificate: True (system CAs), a CA file path,
    or False (testing only); it covers the REST calls, the duplex results posted to its
    callback endpoint and the relay connection alike.
    """

    def __init__(
        self,
        orchestrator_url: str,
        join_token: str,
        *,
        name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        relay: bool = False,
        data_dir: Path | None = None,
        stress_heat: float | None = None,
        threads: int = 1,
        local_data: Path | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        verify: bool | str = True,
    ) -> None:
        self.data_dir = data_dir
        self.name = name or default_name(data_dir)
        if not _NAME_OK.match(self.name):
            raise ValueError(
                f"agent name {self.name!r} may hold only letters, digits, '_', '.', '-' "
                "(at most 64): pass another --name"
            )
        self.join_token = join_token
        self.host = host
        self.port = port
        self.relay = relay
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # One SSL context for every connection to the orchestrator (a path given to httpx
        # directly is deprecated there).
        self.verify: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        self.client = OrchestratorClient(orchestrator_url, verify=self.verify)
        self.agent = Agent(self.name, self.client, stress_heat=stress_heat, threads=threads,
                           local_data=local_data)
        self.endpoint: str | None = None
        self.heartbeat_interval_s = 10.0
        self.enrolled = threading.Event()
        self._stop = threading.Event()
        self._worker: Any = None
        self._server: Any = None
        self._relay_conn: Any = None
        self._thread: threading.Thread | None = None
        # Why the agent gave up (e.g. its name is another learner's); None while it runs.
        self.fatal: str | None = None
        self._lock_fd: int | None = None
        self._secret = self._load_secret()

    def _load_secret(self) -> str | None:
        """The learner's secret kept in the data directory, if this agent may use it.

        The directory is locked for the agent's lifetime: a second agent started on the
        same directory (same host, same name) gets no secret, so the orchestrator answers
        it 409 `name_taken` and it stops with a hint instead of taking the first one over.
        """
        if self.data_dir is None:
            return None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.warning("another agent is running with data directory %s", self.data_dir)
            return None
        self._lock_fd = fd
        path = self.data_dir / SECRET_FILE
        try:
            return path.read_text().strip() or None
        except FileNotFoundError:
            return None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, wait_s: float | None = 0.0) -> None:
        """Start serving and enrolling in the background; wait up to `wait_s` seconds for the
        first enrolment (0 = do not wait, None = wait forever). Raises
        `OrchestratorUnreachable` when a positive wait runs out (the retries go on)."""
        import rpc

        self._worker = rpc.Worker(
            make_registry(self.agent), tokens=frozenset(), callback_verify=self.verify
        )
        if not self.relay:
            self._server = self._worker.start(host=self.host, port=self.port)
            bound = urlsplit(self._server.url)
            advertised = self.host
            if self.host in ("0.0.0.0", "::", ""):
                advertised = _reachable_ip(self.client.base_url)
            self.endpoint = f"{bound.scheme}://{advertised}:{bound.port}"
        self._thread = threading.Thread(target=self._loop, name="agent-heartbeat", daemon=True)
        self._thread.start()
        if wait_s == 0:
            return
        if not self.enrolled.wait(wait_s):
            raise OrchestratorUnreachable(
                f"could not enroll with {self.client.base_url} within {wait_s} s"
            )

    def stop(self) -> None:
        """Stop heartbeating and serving; async client threads are told to stop first."""
        self._stop.set()
        self.agent.asynchronous.leave_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._relay_conn is not None:
            self._relay_conn.stop()
        if self._server is not None:
            self._server.stop()
        self.client.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until `stop()` is called (from another thread or a signal handler) or the
        agent gives up (`fatal`); False if `timeout_s` passed first."""
        return self._stop.wait(timeout_s)

    # -- enrolment and heartbeats ----------------------------------------------------------
    def _enroll(self) -> None:
        # The current token (or the one kept from the last run) proves this is that learner.
        secret = self.client.token or self._secret
        answer = self.client.enroll(
            self.join_token, self.name, device_facts(), self.endpoint, secret=secret
        )
        self.heartbeat_interval_s = float(answer.get("heartbeat_interval_s", 10.0))
        # Only the orchestrator holding this token may call the procedures.
        self._worker.tokens = frozenset({self.client.token})
        if self.relay:
            if self._relay_conn is not None:
                self._relay_conn.stop()
            relay_url = answer.get("relay_url")
            if not relay_url:
                raise OrchestratorRefused(
                    "the orchestrator offers no relay; run the agent without --relay",
                    status=0,
                    code="no_relay",
                )
            self._relay_conn = self._worker.start_relay(
                relay_url, self.name, token=self.client.token, verify=self.verify
            )
        if self.data_dir is not None and self._lock_fd is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            (self.data_dir / "agent.json").write_text(
                json.dumps({"name": self.name, "learner_id": self.client.learner_id})
            )
            if self.client.token:
                _write_secret(self.data_dir / SECRET_FILE, self.client.token)
        log.info("enrolled as %s (learner %s)", self.name, self.client.learner_id)
        self.enrolled.set()

    def _longer(self, delay: float) -> float:
        """The next retry delay: doubled, but never past one heartbeat interval (retrying
        at the rate the agent beats at anyway costs the orchestrator nothing more; longer
        left the agent "not alive" for up to 30 s after a short orchestrator restart) nor
        `max_backoff_s`."""
        return min(delay * 2, self.max_backoff_s, max(self.backoff_s, self.heartbeat_interval_s))

    def _loop(self) -> None:
        delay = self.backoff_s
        need_enroll = True
        lost_at: float | None = None  # when the orchestrator last stopped answering
        while not self._stop.is_set():
            try:
                if need_enroll:
                    self._enroll()
                    need_enroll = False
                else:
                    self.client.heartbeat(device_facts())
                if lost_at is not None:
                    log.info("reconnected to the orchestrator after %.0f s",
                             time.monotonic() - lost_at, extra={"connection": "reconnected"})
                    lost_at = None
                delay = self.backoff_s
                self._stop.wait(self.heartbeat_interval_s)
            except OrchestratorUnreachable as exc:
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning("connection lost: %s", exc, extra={"connection": "lost"})
                log.warning("retrying in %.1f s", delay, extra={"connection": "retrying"})
                self._stop.wait(delay)
                delay = self._longer(delay)
            except OrchestratorRefused as exc:
                if exc.status == 409 and exc.code == "name_taken":
                    # Retrying cannot help: another learner holds this name.
                    self.fatal = NAME_TAKEN_HINT.format(name=self.name)
                    log.error("enrolment refused (%s); %s", exc, self.fatal)
                    self._stop.set()
                    return
                if exc.status in (401, 403, 404) and not need_enroll:
                    # The orchestrator forgot us (restart with a new store, revoked token):
                    # enroll again under the same name.
                    log.warning("heartbeat refused (%s); enrolling again", exc)
                    need_enroll = True
                    continue
                log.error("%s; retrying in %.1f s", exc, delay)
                self._stop.wait(delay)
                delay = self._longer(delay)
            except Exception:
                # Whatever goes wrong in one beat, the agent must keep beating and serving.
                log.exception("heartbeat loop error; retrying in %.1f s", delay)
                self._stop.wait(delay)
                delay = self._longer(delay)
