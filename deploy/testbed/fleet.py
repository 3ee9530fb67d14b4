"""Fleet descriptions: which emulated learners to create, read from YAML (or a dict)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.errors import FleetError
from deploy.testbed.profiles import PROFILES, DeviceProfile, parse_rate, parse_size

# The prefix names every namespace, link and cgroup the testbed makes, so `down` can find
# leftovers after a crash. Interface names are limited to 15 bytes: "<prefix>-h<index>" fits.
PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9]{1,5}$")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,23}$")
DEFAULT_PREFIX = "pxtb"
DEFAULT_SUBNET = "10.213.0.0/24"
DEFAULT_PORT = 8700
MAX_LEARNERS = 200

_TOP_KEYS = {"prefix", "subnet", "cpu_scale", "orchestrator", "agent", "learners"}
_LEARNER_KEYS = {"name", "profile", "count", "cpu", "memory", "down_rate", "up_rate", "rate"}
_ORCH_KEYS = {"start", "url", "port", "join_token", "command"}
_AGENT_KEYS = {"start", "command", "relay", "env"}


@dataclass(frozen=True)
class FleetLearner:
    """One emulated learner after expanding `count`: its unique name and resources."""

    name: str
    profile: DeviceProfile


@dataclass(frozen=True)
class OrchestratorSpec:
    """Where the agents find the orchestrator, and whether the testbed starts one.

    start: run `plexus orchestrator serve` on the bridge address (root namespace).
    url: an orchestrator the user runs; it must listen on the bridge address, because learner
    namespaces have no route anywhere else.
    """

    start: bool = True
    url: str | None = None
    port: int = DEFAULT_PORT
    join_token: str | None = None
    command: list[str] | None = None


@dataclass(frozen=True)
class AgentSpec:
    """How each learner's agent is started.

    command: argv template; `{python}`, `{url}`, `{token}`, `{name}`, `{ip}` are filled in.
    The default runs `plexus agent run` with the orchestrator URL, join token and name.
    """

    start: bool = True
    command: list[str] | None = None
    relay: bool = False
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fleet:
    """A whole fleet: naming prefix, subnet, orchestrator, agent command and learners."""

    learners: list[FleetLearner]
    prefix: str = DEFAULT_PREFIX
    subnet: str = DEFAULT_SUBNET
    orchestrator: OrchestratorSpec = field(default_factory=OrchestratorSpec)
    agent: AgentSpec = field(default_factory=AgentSpec)

    @property
    def network(self) -> ipaddress.IPv4Network:
        """The learners' subnet; the bridge takes the first host address."""
        return ipaddress.IPv4Network(self.subnet)


def _check_keys(where: str, data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise FleetError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _learner_entries(entry: dict[str, Any], index: int, cpu_scale: float) -> list[FleetLearner]:
    where = f"learners[{index}]"
    if not isinstance(entry, dict):
        raise FleetError(f"{where}: expected a mapping with name and profile, got {entry!r}")
    _check_keys(where, entry, _LEARNER_KEYS)
    profile_name = entry.get("profile")
    if profile_name not in PROFILES:
        raise FleetError(
            f"{where}: unknown profile {profile_name!r}; known profiles: {sorted(PROFILES)}"
        )
    base = PROFILES[profile_name]
    name = str(entry.get("name", profile_name.replace("-", "_")))
    if not NAME_PATTERN.match(name):
        raise FleetError(
            f"{where}: name {name!r} must be lower-case letters, digits or _ "
            f"(at most 24, starting with a letter)"
        )
    count = entry.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise FleetError(f"{where}: count must be a positive integer, got {count!r}")
    cpu = entry.get("cpu")
    if cpu is not None and (not isinstance(cpu, (int, float)) or not 0.05 <= cpu <= 64):
        raise FleetError(f"{where}: cpu must be a share of one core in [0.05, 64], got {cpu!r}")
    rate = entry.get("rate")
    down = entry.get("down_rate", rate)
    up = entry.get("up_rate", rate)
    profile = base.with_overrides(
        cpu=None if cpu is None else float(cpu),
        memory_bytes=None if entry.get("memory") is None else parse_size(entry["memory"]),
        down_rate=None if down is None else parse_rate(down),
        up_rate=None if up is None else parse_rate(up),
    )
    profile = profile.with_overrides(cpu=round(profile.cpu * cpu_scale, 4))
    if profile.cpu < 0.05:
        raise FleetError(
            f"{where}: cpu share {profile.cpu:g} after cpu_scale is below 0.05 of a core, the "
            f"smallest quota the kernel allows at a 20 ms period; raise cpu or cpu_scale"
        )
    if count == 1:
        return [FleetLearner(name, profile)]
    return [FleetLearner(f"{name}{i}", profile) for i in range(1, count + 1)]


def _fleet_network(data: dict[str, Any]) -> tuple[str, ipaddress.IPv4Network]:
    """The fleet's interface prefix and private subnet."""
    prefix = str(data.get("prefix", DEFAULT_PREFIX))
    if not PREFIX_PATTERN.match(prefix):
        raise FleetError(
            f"prefix {prefix!r} must be 2-6 lower-case letters or digits starting with a letter "
            f"(it names interfaces, which Linux limits to 15 bytes)"
        )
    subnet = str(data.get("subnet", DEFAULT_SUBNET))
    try:
        network = ipaddress.IPv4Network(subnet)
    except ValueError as exc:
        raise FleetError(f"subnet {subnet!r} is not an IPv4 network: {exc}") from exc
    if not network.is_private:
        raise FleetError(f"subnet {subnet} is not private; use e.g. {DEFAULT_SUBNET}")
    return prefix, network


def _fleet_learners(data: dict[str, Any], network: ipaddress.IPv4Network) -> list[FleetLearner]:
    """Every learner of the fleet, with distinct names and addresses in `network`."""
    cpu_scale = data.get("cpu_scale", 1.0)
    if not isinstance(cpu_scale, (int, float)) or cpu_scale <= 0:
        raise FleetError(f"cpu_scale must be a positive number, got {cpu_scale!r}")
    entries = data.get("learners")
    if not isinstance(entries, list) or not entries:
        raise FleetError("fleet: `learners` must be a non-empty list of {name, profile, count}")
    learners: list[FleetLearner] = []
    for index, entry in enumerate(entries):
        learners.extend(_learner_entries(entry, index, float(cpu_scale)))
    names = [learner.name for learner in learners]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FleetError(
            f"fleet: learner names {duplicates} appear twice; give entries distinct names"
        )
    # Bridge takes host 1; learners take hosts 10, 11, ...
    capacity = min(MAX_LEARNERS, network.num_addresses - 12)
    if len(learners) > capacity:
        subnet = str(data.get("subnet", DEFAULT_SUBNET))  # as the user wrote it
        raise FleetError(
            f"fleet: {len(learners)} learners do not fit in {subnet} (at most {capacity}); "
            f"use a larger subnet"
        )
    return learners


def _orchestrator_spec(data: dict[str, Any]) -> OrchestratorSpec:
    orch_data = data.get("orchestrator") or {}
    _check_keys("orchestrator", orch_data, _ORCH_KEYS)
    port = orch_data.get("port", DEFAULT_PORT)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise FleetError(f"orchestrator.port must be a TCP port number, got {port!r}")
    url = orch_data.get("url")
    return OrchestratorSpec(
        start=bool(orch_data.get("start", url is None)),
        url=None if url is None else str(url),
        port=port,
        join_token=None if orch_data.get("join_token") is None else str(orch_data["join_token"]),
        command=None
        if orch_data.get("command") is None
        else [str(a) for a in orch_data["command"]],
    )


def _agent_spec(data: dict[str, Any]) -> AgentSpec:
    agent_data = data.get("agent") or {}
    _check_keys("agent", agent_data, _AGENT_KEYS)
    return AgentSpec(
        start=bool(agent_data.get("start", True)),
        command=None
        if agent_data.get("command") is None
        else [str(a) for a in agent_data["command"]],
        relay=bool(agent_data.get("relay", False)),
        env={str(k): str(v) for k, v in (agent_data.get("env") or {}).items()},
    )


def parse_fleet(data: dict[str, Any]) -> Fleet:
    """Validate a fleet description given as a dict (the parsed YAML)."""
    if not isinstance(data, dict):
        raise FleetError(
            f"a fleet must be a mapping with a `learners` list, got {type(data).__name__}"
        )
    _check_keys("fleet", data, _TOP_KEYS)
    prefix, network = _fleet_network(data)
    learners = _fleet_learners(data, network)
    return Fleet(
        learners=learners,
        prefix=prefix,
        subnet=str(network),
        orchestrator=_orchestrator_spec(data),
        agent=_agent_spec(data),
    )


def load_fleet(source: str | Path | dict[str, Any]) -> Fleet:
    """Load a fleet from a YAML file path or an already parsed dict."""
    if isinstance(source, dict):
        return parse_fleet(source)
    import yaml  # lazily: the CLI module imports this file's module only inside commands

    path = Path(source)
    try:
        text = path.read_text()
    except OSError as exc:
        raise FleetError(f"cannot read fleet file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FleetError(f"fleet file {path} is not valid YAML: {exc}") from exc
    return parse_fleet(data)
