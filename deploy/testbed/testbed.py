"""The emulated testbed: bring a fleet up, inject faults, report status, tear everything down.

`Testbed.up(fleet)` makes, in order and recording each step in a state file first: a bridge with
the orchestrator's address, and per learner a namespace, a veth pair onto the bridge, htb rate
caps on both ends, and cgroups with a CPU quota and a memory limit; then it starts the
orchestrator (optional) and one agent per learner inside its namespace and cgroups.
`down(prefix)` removes all of it, from the state file and, after a crash, by the name prefix.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from deploy.errors import PrivilegeError, StateError, TestbedError
from deploy.testbed import cgroups, network, processes
from deploy.testbed.fleet import DEFAULT_PREFIX, Fleet
from deploy.testbed.profiles import DeviceProfile

STATE_ROOT = Path("/run/plexus-testbed")  # tmpfs: it vanishes on reboot, as namespaces do
STATE_VERSION = 1


def require_root() -> None:
    """Raise PrivilegeError unless running as root."""
    if os.geteuid() != 0:
        raise PrivilegeError(
            "the testbed needs root to create network namespaces, tc qdiscs and cgroups; "
            "run it with sudo"
        )


def state_dir_for(prefix: str, state_root: Path | None = None) -> Path:
    """Where a testbed with this prefix keeps its state file, logs and join token."""
    return (state_root or STATE_ROOT) / prefix


@dataclass
class LearnerRuntime:
    """One learner as built: names of its namespace, links, cgroups and agent process."""

    name: str
    index: int
    profile: dict[str, Any]
    netns: str
    host_if: str
    ns_if: str
    ip: str
    cgroups: list[str] = field(default_factory=list)
    pid: int | None = None
    start_ticks: int | None = None
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def device(self) -> DeviceProfile:
        return DeviceProfile(**self.profile)


@dataclass
class TestbedState:
    """Everything `down` needs to undo a testbed, written to `state.json` as it is built."""

    __test__ = False  # not a pytest test class

    prefix: str
    subnet: str
    bridge: str
    bridge_ip: str
    cgroup_version: int
    url: str
    join_token_file: str
    learners: list[LearnerRuntime] = field(default_factory=list)
    bridge_made: bool = False
    orchestrator_pid: int | None = None
    orchestrator_ticks: int | None = None
    orchestrator_command: list[str] = field(default_factory=list)
    version: int = STATE_VERSION

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TestbedState:
        learners = [LearnerRuntime(**entry) for entry in data.pop("learners", [])]
        return cls(learners=learners, **data)


def _fill(template: list[str], values: dict[str, str]) -> list[str]:
    return [arg.format(**values) for arg in template]


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise StateError(f"the orchestrator did not answer {url} within {timeout:.0f} s ({last})")


class Testbed:
    """A running testbed, bound to its state directory; see `up`, `attach` and `down`."""

    __test__ = False  # not a pytest test class

    def __init__(self, state: TestbedState, state_dir: Path) -> None:
        self.state = state
        self.state_dir = state_dir
        self.backend = cgroups.detect()
        # Popen objects of processes this object started, kept so they can be reaped.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ building
    @classmethod
    def up(
        cls,
        fleet: Fleet,
        *,
        state_root: Path | None = None,
        health_timeout: float = 60.0,
    ) -> Testbed:
        """Build the fleet and start its orchestrator and agents (unless the fleet says not to).

        Raises StateError when a testbed with the same prefix is up or left over: run `down`.
        On any failure half-way, everything made so far is removed before the error propagates.
        """
        require_root()
        network.require_tools()
        backend = cgroups.detect()
        state_dir = state_dir_for(fleet.prefix, state_root)
        left = leftovers(fleet.prefix)
        if (state_dir / "state.json").exists() or any(left.values()):
            raise StateError(
                f"a testbed with prefix {fleet.prefix!r} is up or was left over by a crash "
                f"({_summary(left)}); run `plexus testbed down --prefix {fleet.prefix}` first"
            )
        net = fleet.network
        hosts = list(net.hosts())
        bridge_ip = str(hosts[0])
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "logs").mkdir(exist_ok=True)
        token = fleet.orchestrator.join_token or secrets.token_urlsafe(24)
        token_file = state_dir / "join-token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        url = fleet.orchestrator.url or f"http://{bridge_ip}:{fleet.orchestrator.port}"
        state = TestbedState(
            prefix=fleet.prefix,
            subnet=str(net),
            bridge=network.bridge_name(fleet.prefix),
            bridge_ip=bridge_ip,
            cgroup_version=backend.version,
            url=url,
            join_token_file=str(token_file),
        )
        bed = cls(state, state_dir)
        bed._save()
        try:
            bed._build(fleet, hosts, net.prefixlen)
            if fleet.orchestrator.start:
                bed._start_orchestrator(fleet, token, health_timeout)
            if fleet.agent.start:
                for learner in state.learners:
                    bed._start_agent(learner)
        except BaseException:
            with contextlib.suppress(TestbedError):
                down(fleet.prefix, state_root=state_root)
            raise
        return bed

    def _build(self, fleet: Fleet, hosts: list[ipaddress.IPv4Address], prefixlen: int) -> None:
        st = self.state
        network.create_bridge(st.bridge, st.bridge_ip, prefixlen)
        st.bridge_made = True
        self._save()
        for index, spec in enumerate(fleet.learners):
            learner = LearnerRuntime(
                name=spec.name,
                index=index,
                profile=asdict(spec.profile),
                netns=network.netns_name(st.prefix, spec.name),
                host_if=network.host_if(st.prefix, index),
                ns_if=network.ns_if(st.prefix, index),
                ip=str(hosts[9 + index]),
            )
            # Record before creating, so a crash in between still leaves a trace for `down`.
            st.learners.append(learner)
            self._save()
            network.create_learner_link(
                netns=learner.netns,
                host=learner.host_if,
                inner=learner.ns_if,
                bridge=st.bridge,
                address=learner.ip,
                prefixlen=prefixlen,
            )
            # Download direction: what leaves the bridge-side end towards the learner.
            network.set_rate(learner.host_if, spec.profile.down_rate)
            # Upload direction: what leaves the learner's own end.
            network.set_rate(learner.ns_if, spec.profile.up_rate, netns=learner.netns)
            made = cgroups.create(
                self.backend,
                st.prefix,
                spec.name,
                cpu=spec.profile.cpu,
                memory_bytes=spec.profile.memory_bytes,
            )
            learner.cgroups = [str(p) for p in made]
            learner.command = self._agent_command(fleet, learner)
            learner.env = self._agent_env(fleet, spec.profile)
            self._save()

    def _agent_command(self, fleet: Fleet, learner: LearnerRuntime) -> list[str]:
        values = {
            "python": sys.executable,
            "url": self.state.url,
            "token": self.token,
            "name": learner.name,
            "ip": learner.ip,
        }
        if fleet.agent.command is not None:
            return _fill(fleet.agent.command, values)
        argv = [
            sys.executable,
            "-m",
            "plexus.cli",
            "agent",
            "run",
            "--orchestrator",
            self.state.url,
            # The token file (mode 600) keeps the token out of every process listing.
            "--join-token-file",
            str(self.state_dir / "join-token"),
            "--name",
            learner.name,
        ]
        return [*argv, "--relay"] if fleet.agent.relay else argv

    @staticmethod
    def _agent_env(fleet: Fleet, profile: DeviceProfile) -> dict[str, str]:
        # Thread pools sized to the quota: more threads than the share of a core only adds
        # throttling stalls, which a real 4-core Pi would not have.
        threads = str(max(1, round(profile.cpu)))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        env.update(fleet.agent.env)
        return env

    def _start_orchestrator(self, fleet: Fleet, token: str, timeout: float) -> None:
        st = self.state
        data_dir = self.state_dir / "orchestrator"
        data_dir.mkdir(exist_ok=True)
        values = {
            "python": sys.executable,
            "host": st.bridge_ip,
            "port": str(fleet.orchestrator.port),
            "data_dir": str(data_dir),
            "token": token,
        }
        template = fleet.orchestrator.command or [
            "{python}",
            "-m",
            "plexus.cli",
            "orchestrator",
            "serve",
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--data-dir",
            "{data_dir}",
            "--join-token",
            "{token}",
        ]
        argv = _fill(template, values)
        with open(self.state_dir / "logs" / "orchestrator.log", "ab") as log:
            child = processes.spawn(argv, netns=None, cgroups=[], stdout=log)
        self._children[child.pid] = child
        st.orchestrator_pid = child.pid
        st.orchestrator_ticks = processes.start_ticks(child.pid)
        st.orchestrator_command = argv
        self._save()
        _wait_http(f"{st.url}/healthz", timeout)

    def _start_agent(self, learner: LearnerRuntime) -> None:
        env = dict(os.environ)
        env.update(learner.env)
        with open(self.log_path(learner.name), "ab") as log:
            child = processes.spawn(
                learner.command,
                netns=learner.netns,
                cgroups=self._leaves(learner),
                env=env,
                stdout=log,
            )
        self._children[child.pid] = child
        learner.pid = child.pid
        learner.start_ticks = processes.start_ticks(child.pid)
        self._save()

    # ------------------------------------------------------------------ state
    @classmethod
    def attach(cls, prefix: str = DEFAULT_PREFIX, *, state_root: Path | None = None) -> Testbed:
        """The testbed that `up` left running (from its state file); StateError if none."""
        state_dir = state_dir_for(prefix, state_root)
        path = state_dir / "state.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise StateError(
                f"no testbed with prefix {prefix!r} is up (no {path}); start one with "
                f"`plexus testbed up FLEET.yaml`"
            ) from exc
        return cls(TestbedState.from_json(data), state_dir)

    def _save(self) -> None:
        path = self.state_dir / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        tmp.replace(path)

    @property
    def token(self) -> str:
        """The join token agents enroll with."""
        return Path(self.state.join_token_file).read_text().strip()

    @property
    def url(self) -> str:
        """The orchestrator's base URL as the learners see it."""
        return self.state.url

    @property
    def learners(self) -> list[LearnerRuntime]:
        return list(self.state.learners)

    def learner(self, name: str) -> LearnerRuntime:
        """The learner called `name`; StateError listing the names when there is none."""
        for learner in self.state.learners:
            if learner.name == name:
                return learner
        known = ", ".join(lr.name for lr in self.state.learners)
        raise StateError(f"no learner {name!r} in testbed {self.state.prefix!r}; learners: {known}")

    def log_path(self, name: str) -> Path:
        """The agent's log file (stdout and stderr)."""
        return self.state_dir / "logs" / f"{name}.log"

    def _leaves(self, learner: LearnerRuntime) -> list[Path]:
        return cgroups.leaves([Path(p) for p in learner.cgroups], self.backend)

    # ------------------------------------------------------------------ running things inside
    def spawn_in(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
    ) -> subprocess.Popen[bytes]:
        """Start a process inside learner `name`'s namespace and cgroups (its CPU/memory caps)."""
        learner = self.learner(name)
        full_env = dict(os.environ)
        full_env.update(learner.env)
        full_env.update(env or {})
        return processes.spawn(
            argv,
            netns=learner.netns,
            cgroups=self._leaves(learner),
            env=full_env,
            stdout=stdout,
            stderr=stderr,
        )

    def run_in(
        self,
        name: str,
        argv: list[str],
        *,
        timeout: float = 120.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command to completion inside learner `name`; kills it after `timeout` s."""
        child = self.spawn_in(name, argv, env=env)
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            processes.signal_group(child.pid, signal.SIGKILL)
            out, err = child.communicate()
        return subprocess.CompletedProcess(argv, child.returncode, out, err)

    # ------------------------------------------------------------------ faults
    def link_down(self, name: str) -> None:
        """Cut learner `name` off the bridge (its packets are dropped until `link_up`)."""
        network.set_link(self.learner(name).host_if, up=False)

    def link_up(self, name: str) -> None:
        """Reconnect learner `name` to the bridge."""
        network.set_link(self.learner(name).host_if, up=True)

    def set_rate(self, name: str, *, down: float | None = None, up: float | None = None) -> None:
        """Change learner `name`'s link caps (bytes/s) at once, e.g. in the middle of a round."""
        learner = self.learner(name)
        if down is not None:
            network.set_rate(learner.host_if, down, replace=True)
            learner.profile["down_rate"] = down
        if up is not None:
            network.set_rate(learner.ns_if, up, netns=learner.netns, replace=True)
            learner.profile["up_rate"] = up
        self._save()

    def agent_running(self, name: str) -> bool:
        """Whether learner `name`'s agent process exists (running or paused)."""
        learner = self.learner(name)
        return processes.alive(learner.pid, learner.start_ticks)

    def kill_agent(self, name: str) -> None:
        """SIGKILL learner `name`'s agent and everything in its cgroup (a crash, not a stop)."""
        learner = self.learner(name)
        # Only a pid that still has its recorded start time is ours to signal.
        ours = learner.pid is not None and processes.alive(learner.pid, learner.start_ticks)
        if ours and learner.pid is not None:
            processes.signal_group(learner.pid, signal.SIGKILL)
        cgroups.signal_all(self._leaves(learner), signal.SIGKILL)
        if ours and learner.pid is not None:
            self._reap(learner.pid, learner.start_ticks)

    def restart_agent(self, name: str) -> None:
        """Kill learner `name`'s agent if it runs, then start it again with the same command."""
        learner = self.learner(name)
        if processes.alive(learner.pid, learner.start_ticks):
            self.kill_agent(name)
        if not learner.command:
            raise StateError(f"learner {name!r} has no agent command recorded")
        self._start_agent(learner)

    def pause(self, name: str, *, timeout: float = 5.0) -> None:
        """SIGSTOP every process of learner `name` (it holds its sockets but answers nothing).

        Returns once the kernel shows each of them stopped: a signal is delivered
        asynchronously, so a caller that checks right away must not see it still running.
        """
        sent = cgroups.signal_all(self._leaves(self.learner(name)), signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        for pid in sent:
            while processes.state(pid) not in ("T", "t", None):
                if time.monotonic() > deadline:
                    raise TestbedError(
                        f"learner {name!r}: process {pid} did not stop within "
                        f"{timeout:g} s of SIGSTOP"
                    )
                time.sleep(0.01)

    def resume(self, name: str) -> None:
        """SIGCONT every process of learner `name`."""
        cgroups.signal_all(self._leaves(self.learner(name)), signal.SIGCONT)

    def _reap(self, pid: int, ticks: int | None) -> None:
        processes.wait_gone(pid, ticks, 5.0)
        child = self._children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1.0)

    # ------------------------------------------------------------------ status and teardown
    def status(self) -> list[dict[str, Any]]:
        """One row per learner: link state, measured caps read back from tc and cgroups, agent."""
        rows = []
        for learner in self.state.learners:
            cpu, memory = cgroups.read_limits([Path(p) for p in learner.cgroups])
            proc_state = (
                processes.state(learner.pid)
                if learner.pid is not None and processes.alive(learner.pid, learner.start_ticks)
                else None
            )
            rows.append(
                {
                    "name": learner.name,
                    "profile": learner.profile["name"],
                    "ip": learner.ip,
                    "link": network.link_state(learner.host_if),
                    "down_rate": network.read_rate(learner.host_if),
                    "up_rate": network.read_rate(learner.ns_if, netns=learner.netns),
                    "cpu": cpu,
                    "memory_bytes": memory,
                    "agent": "paused"
                    if proc_state == "T"
                    else ("running" if proc_state else "stopped"),
                    "pid": learner.pid,
                }
            )
        return rows

    def orchestrator_running(self) -> bool:
        """Whether the orchestrator this testbed started is still alive."""
        return processes.alive(self.state.orchestrator_pid, self.state.orchestrator_ticks)

    def down(self) -> dict[str, list[str]]:
        """Remove this testbed (see module-level `down`): SIGTERM first, SIGKILL after 2 s."""
        removed = down(self.state.prefix, state_root=self.state_dir.parent)
        # `down` stopped them; collect their exit status so none lingers as a zombie.
        # No signal here: once reaped, a pid may already belong to someone else.
        for child in self._children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5.0)
        self._children.clear()
        return removed


def leftovers(prefix: str) -> dict[str, list[str]]:
    """What exists on this host under the prefix: namespaces, links, cgroups, processes."""
    procs: set[int] = set()
    namespaces = network.list_netns(prefix)
    for ns in namespaces:
        procs.update(network.netns_pids(ns))
    found_cgroups: list[str] = []
    with contextlib.suppress(TestbedError):
        backend = cgroups.detect()
        dirs = cgroups.find_leftovers(backend, prefix)
        found_cgroups = [str(d) for d in dirs]
        procs.update(cgroups.pids(dirs))
    return {
        "netns": namespaces,
        "links": network.list_links(prefix),
        "cgroups": found_cgroups,
        "processes": [str(p) for p in sorted(procs)],
    }


def _summary(found: dict[str, list[str]]) -> str:
    parts = [f"{len(v)} {k}" for k, v in found.items() if v]
    return ", ".join(parts) if parts else "only a state file"


def down(prefix: str = DEFAULT_PREFIX, *, state_root: Path | None = None) -> dict[str, list[str]]:
    """Remove every process, namespace, link, qdisc and cgroup of the testbed `prefix`.

    Works from the state file when there is one and, whatever it says, also removes anything on
    the host named `<prefix>-...`, so it cleans up after a crash of `up` or of the machine's
    previous run. Returns what was removed, by kind.
    """
    require_root()
    state_dir = state_dir_for(prefix, state_root)
    removed: dict[str, list[str]] = {"processes": [], "netns": [], "links": [], "cgroups": []}
    path = state_dir / "state.json"
    state: TestbedState | None = None
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, TypeError):
        state = TestbedState.from_json(json.loads(path.read_text()))
    # 1. Processes: recorded agents and orchestrator (only if the pid still names the same
    #    process), then anything still inside our namespaces or cgroups.
    if state is not None:
        recorded = [(lr.pid, lr.start_ticks) for lr in state.learners]
        recorded.append((state.orchestrator_pid, state.orchestrator_ticks))
        live = [
            (pid, ticks)
            for pid, ticks in recorded
            if pid is not None and processes.alive(pid, ticks)
        ]
        processes.terminate_all(live, grace=2.0)
        removed["processes"].extend(str(pid) for pid, _ in live)
    found = leftovers(prefix)
    for pid_text in found["processes"]:
        pid = int(pid_text)
        ticks = processes.start_ticks(pid)
        processes.signal_group(pid, signal.SIGKILL)
        processes.wait_gone(pid, ticks, 5.0)
        removed["processes"].append(pid_text)
    # 2. Namespaces (their veth ends and qdiscs go with them), then root-namespace links.
    for ns in found["netns"]:
        network.delete_netns(ns)
        removed["netns"].append(ns)
    for link in network.list_links(prefix):
        network.delete_link(link)
        removed["links"].append(link)
    # 3. Cgroups, deepest first (they are empty now, or emptied by cgroups.remove).
    dirs = [Path(d) for d in found["cgroups"]]
    if state is not None:
        dirs.extend(Path(d) for lr in state.learners for d in lr.cgroups)
    unique = sorted(set(dirs), key=lambda p: len(p.parts), reverse=True)
    cgroups.remove(unique)
    removed["cgroups"] = [str(d) for d in unique if str(d) in found["cgroups"]]
    # 4. The orchestrator's data (its database and model files): the next `up` of this prefix
    # starts a fresh orchestrator, so no task of an earlier run resumes beside a new one.
    shutil.rmtree(state_dir / "orchestrator", ignore_errors=True)
    # 5. The state file last: if anything above failed, the next `down` still knows the plan.
    for leftover in (path, state_dir / "join-token"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    return removed
