"""The chaos matrix (issue 13): every mode under every fault, nothing acknowledged lost.

Modes: ``dab`` (a synchronous DAB task), ``med`` (a multi-task MED job of two tasks), ``spin``
and ``fedbuff`` (async tasks; the agents run SPIN's client) and ``fedbuff_relay`` (FedBuff with
one learner behind the orchestrator's relay, ``plexus agent run --relay``).

Faults (the victim is one learner: the relayed one where there is one):

* ``none`` — the fault-free run of the mode, the accuracy reference;
* ``agent_kill_round`` — SIGKILL the victim's agent mid-run, restart it after 2 × D;
* ``agent_kill_upload`` — SIGKILL the victim right as it starts sending a result (sync: the
  agent logged "trained", its answer is on the wire; async: it logged "uploading"); restart
  after 2 × D;
* ``orch_kill_round`` — SIGKILL the orchestrator D / 2 into a round, restart it at once on
  the same data directory;
* ``orch_kill_agg`` — SIGKILL the orchestrator right after the results of a round are in
  (sync: every agent logged "trained" for the current round; async: right after an
  acknowledged update, which may fill the buffer) — approximately mid-aggregation;
* ``link_down`` — the victim's veth down for 2 × D, then up (testbed only);
* ``link_down_long`` — the victim's veth down for ALIVE_AFTER_S + 5 s, longer than the
  orchestrator's ``alive_after_s``: the learner is declared gone (seen not alive in
  ``GET /v1/learners``) and must come back by itself (alive again without a restart) and be
  used again by the same task (sync: a round trained after the link came up; async: an
  update acknowledged after it). The cell runs the longer setting (``long=True``: 36 rounds,
  or GUCs per job task; async up to "no further progress"), so its accuracy is not compared
  (testbed only);
* ``bandwidth_cut`` — the victim's link caps cut to 10 % for the rest of the run (testbed
  only);
* ``sigstop`` — SIGSTOP the victim's agent for 2 × D, then SIGCONT;
* ``disk_full`` — the orchestrator's RLIMIT_FSIZE lowered to 256 KiB (prlimit) for
  max(3 s, 2 × D): model and update files cannot be written.

Per cell: did the task (job) finish; acknowledged updates lost (every id an agent logged as
acknowledged — ``acknowledged task T update_id N`` — must be a row of ``async_updates``, and
merged into a committed version); rounds lost or repeated (sync and job: round rows 0..R−1
once each and model versions 1..R; async: model versions contiguous from 1, each update merged
into one version); time to recover (from the end of the fault to the next committed round or
version); final accuracy against the mode's fault-free runs, on a fixed number of merges: a
sync task (or each task of a job) runs ROUNDS rounds, an async task ends once ``max_updates`` =
ASYNC_MERGES updates are merged (its partitions arrive slowly enough, λ = ARRIVAL_RATE, that
data does not run out first even when every client stalls for several seconds; a cell that
still ended short says so in ``merges``). "Within noise" is one-sided: no more than
max(ACC_NOISE, spread of the mode's fault-free runs) below their mean; ``--baselines``
(default 3) fault-free runs per mode.

Two rigs run the same cells: ``--rig local`` (loopback, no root: orchestrator.local.fleet's
LocalFleet; no link faults) and ``--rig testbed`` (root: network namespaces, veth, htb rate caps
and cgroups from deploy/testbed, fleet file deploy/testbed/fleets/chaos.yaml, prefix pxch;
``plexus testbed down --prefix pxch`` clears a crashed run).

    sudo .venv/bin/python benchmarks/chaos.py --rig testbed          # the full matrix
    .venv/bin/python benchmarks/chaos.py --rig local --quick         # one cell per mode
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from outdir import add_out_dir, results_dir

ROOT = Path(__file__).resolve().parents[1]
FLEET_FILE = ROOT / "deploy" / "testbed" / "fleets" / "chaos.yaml"
MODES = ["dab", "med", "spin", "fedbuff", "fedbuff_relay"]
FAULTS = ["none", "agent_kill_round", "agent_kill_upload", "orch_kill_round", "orch_kill_agg",
          "link_down", "link_down_long", "bandwidth_cut", "sigstop", "disk_full"]
LINK_FAULTS = {"link_down", "link_down_long", "bandwidth_cut"}
LONG_FAULTS = {"link_down_long"}  # cells that run the longer setting (accuracy not compared)
# The testbed's orchestrator runs `plexus orchestrator serve` with the default heartbeat of
# 5 s, so alive_after_s = max(4 × 5 s, 10 s) = 20 s (orchestrator/cli/serve.py).
ALIVE_AFTER_S = 20.0
LONG_DOWN_S = ALIVE_AFTER_S + 5.0
AGENTS = ("a1", "a2", "a3")
RELAYED = "a3"
# --quick: one cell per mode (the ones the default-tier tests run too).
QUICK = {"dab": "orch_kill_round", "med": "agent_kill_round", "spin": "disk_full",
         "fedbuff": "agent_kill_upload", "fedbuff_relay": "sigstop"}
DISK_LIMIT_BYTES = 256 * 1024
ACC_NOISE = 0.05  # the least noise band: accuracy no more than this below the fault-free mean
ASYNC_MERGES = 20  # async tasks end once this many updates are merged (max_updates)
ARRIVAL_RATE = 8.0  # λ, samples/s: a 400-sample partition arrives over 50 s
ASYNC_SHARD = 400  # samples per async client (3 × 400 of digits' 1438 training samples)
ASYNC_EPOCHS = 5  # E: each update trains 5 epochs over what its client holds

ACK = re.compile(r"acknowledged task\s+(\d+)\s+update_id\s+(\d+)")
TRAINED = re.compile(r"trained task\s+(\d+)\s+round\s+(\d+)")
UPLOADING = re.compile(r"uploading task\s+(\d+)\s+update")


# ---------------------------------------------------------------------------- accounting


@dataclass
class Accounting:
    """What a cell lost or repeated, from the agents' logs and the store."""

    acked: int = 0  # acknowledged update ids the agents logged
    acked_lost: int = 0  # of those, not a row of async_updates
    acked_unmerged: int = 0  # a row, but never merged into a committed version
    rounds_lost: int = 0  # sync/job: indices missing from 0..R−1; async: gaps in versions
    rounds_repeated: int = 0  # sync/job: an index stored twice; async: a version twice
    versions_bad: int = 0  # sync/job: model versions not 1..R in round order
    updates_merged_twice: int = 0  # async: an update counted by two versions' rows


def account_sync(indices: list[int], versions: list[int], rounds: int) -> Accounting:
    """Round rows of a sync task (or one task of a job) against 0..R−1 and versions 1..R."""
    acc = Accounting()
    expected = set(range(rounds))
    acc.rounds_lost = len(expected - set(indices))
    acc.rounds_repeated = len(indices) - len(set(indices))
    acc.versions_bad = sum(1 for i, v in enumerate(versions) if v != i + 1)
    acc.versions_bad += abs(len(versions) - rounds) if len(versions) != rounds else 0
    return acc


def account_async(acked: set[int], rows: dict[int, int | None], versions: list[int],
                  per_version: dict[int, int]) -> Accounting:
    """An async task: `acked` ids the agents logged; `rows` update id -> consumed version
    (None: never merged); `versions` of the round rows in order; `per_version` version ->
    updates its round row counts."""
    acc = Accounting(acked=len(acked))
    acc.acked_lost = len(acked - set(rows))
    acc.acked_unmerged = sum(1 for i in acked & set(rows) if rows[i] is None)
    acc.rounds_repeated = len(versions) - len(set(versions))
    if versions:
        acc.rounds_lost = len(set(range(1, max(versions) + 1)) - set(versions))
    named: dict[int, int] = {}
    for v in rows.values():
        if v is not None:
            named[v] = named.get(v, 0) + 1
    acc.updates_merged_twice = sum(max(0, named.get(v, 0) - n) for v, n in per_version.items())
    return acc


def merge(parts: list[Accounting]) -> Accounting:
    out = Accounting()
    for p in parts:
        for k, v in asdict(p).items():
            setattr(out, k, getattr(out, k) + v)
    return out


def acked_ids(logs: list[str], task_ids: set[int]) -> set[int]:
    """Update ids the agents logged as acknowledged for these tasks."""
    return {int(m[2]) for text in logs for m in ACK.finditer(text) if int(m[1]) in task_ids}


# ---------------------------------------------------------------------------- rigs


class Unsupported(Exception):
    """The rig cannot inject this fault (link faults on loopback)."""


class NotInjected(Exception):
    """The run ended before the fault's trigger came: the cell tested nothing."""


class Rig(Protocol):
    data_dir: Path

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def client(self) -> Any: ...
    def agent_log(self, name: str) -> str: ...
    def kill_agent(self, name: str) -> None: ...
    def restart_agent(self, name: str) -> None: ...
    def pause(self, name: str) -> None: ...
    def resume(self, name: str) -> None: ...
    def kill_orchestrator(self) -> None: ...
    def start_orchestrator(self) -> None: ...
    def orchestrator_pid(self) -> int: ...
    def link(self, name: str, up: bool) -> None: ...
    def cut_rate(self, name: str, factor: float | None) -> None: ...


class LocalRig:
    """Loopback: one orchestrator and three agent processes (LocalFleet)."""

    def __init__(self, data_dir: Path, relayed: bool) -> None:
        from orchestrator.local.fleet import LocalFleet

        self.data_dir = data_dir
        self.fleet = LocalFleet(data_dir, speeds=dict.fromkeys(AGENTS, 1.0),
                                relayed={RELAYED} if relayed else set())

    def start(self) -> None:
        self.fleet.start()

    def stop(self) -> None:
        self.fleet.stop()

    def client(self) -> Any:
        return self.fleet.client()

    def agent_log(self, name: str) -> str:
        return _read(self.data_dir / f"agent-{name}.log")

    def kill_agent(self, name: str) -> None:
        self.fleet.kill_agent(name, signal.SIGKILL)

    def restart_agent(self, name: str) -> None:
        self.fleet.agents[name].stop(timeout_s=1.0)
        self.fleet.start_agent(name)

    def pause(self, name: str) -> None:
        os.killpg(self.fleet.agents[name].popen.pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.killpg(self.fleet.agents[name].popen.pid, signal.SIGCONT)

    def kill_orchestrator(self) -> None:
        self.fleet.kill_orchestrator(signal.SIGKILL)

    def start_orchestrator(self) -> None:
        self.fleet.start_orchestrator()

    def orchestrator_pid(self) -> int:
        assert self.fleet.orchestrator is not None
        return self.fleet.orchestrator.popen.pid

    def link(self, name: str, up: bool) -> None:
        raise Unsupported("link faults need the testbed (--rig testbed)")

    def cut_rate(self, name: str, factor: float | None) -> None:
        raise Unsupported("link faults need the testbed (--rig testbed)")


class TestbedRig:
    """The emulated testbed (root): namespaces, veth, htb caps, cgroups; prefix pxch."""

    __test__ = False

    def __init__(self, fleet_file: Path, relayed: bool) -> None:
        from deploy.testbed.fleet import load_fleet

        self.spec = load_fleet(fleet_file)
        self.relayed = relayed
        self.bed: Any = None
        self.data_dir = Path("/nonexistent")
        self.rates: dict[str, tuple[float, float]] = {}

    def start(self) -> None:
        import shutil

        from deploy.testbed.testbed import Testbed, state_dir_for

        # `down` keeps the logs and the orchestrator's data directory; a fresh start must not
        # resume the previous run's tasks or read its agent logs (task ids start at 1 again).
        old = state_dir_for(self.spec.prefix)
        if old.is_dir() and not (old / "state.json").exists():
            shutil.rmtree(old)
        self.bed = Testbed.up(self.spec)
        self.data_dir = self.bed.state_dir / "orchestrator"
        if self.relayed:
            lr = self.bed.learner(RELAYED)
            if "--relay" not in lr.command:
                lr.command = [*lr.command, "--relay"]
            self.bed.restart_agent(RELAYED)
        for lr in self.bed.learners:
            self.rates[lr.name] = (lr.profile["down_rate"], lr.profile["up_rate"])
        self._wait_enrolled(set(AGENTS))

    def _wait_enrolled(self, names: set[str], timeout_s: float = 180.0) -> None:
        end = time.monotonic() + timeout_s
        with self.client() as c:
            while not names <= {lr["name"] for lr in c.learners() if lr["alive"]}:
                if time.monotonic() > end:
                    raise TimeoutError(f"agents {sorted(names)} did not enroll")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.bed is not None:
            self.bed.down()
            self.bed = None

    def client(self) -> Any:
        from orchestrator.client import Client

        token = (self.data_dir / "admin_token").read_text().strip()
        return Client(self.bed.url, token)

    def agent_log(self, name: str) -> str:
        return _read(self.bed.log_path(name))

    def kill_agent(self, name: str) -> None:
        self.bed.kill_agent(name)

    def restart_agent(self, name: str) -> None:
        self.bed.restart_agent(name)
        self._wait_enrolled({name})

    def pause(self, name: str) -> None:
        self.bed.pause(name)

    def resume(self, name: str) -> None:
        self.bed.resume(name)

    def kill_orchestrator(self) -> None:
        from deploy.testbed import processes

        st = self.bed.state
        processes.signal_group(st.orchestrator_pid, signal.SIGKILL)
        self.bed._reap(st.orchestrator_pid, st.orchestrator_ticks)

    def start_orchestrator(self) -> None:
        from deploy.testbed import processes
        from deploy.testbed.testbed import _wait_http

        st = self.bed.state
        with open(self.bed.state_dir / "logs" / "orchestrator.log", "ab") as log:
            child = processes.spawn(st.orchestrator_command, netns=None, cgroups=[],
                                    stdout=log)
        self.bed._children[child.pid] = child
        st.orchestrator_pid = child.pid
        st.orchestrator_ticks = processes.start_ticks(child.pid)
        self.bed._save()
        _wait_http(f"{st.url}/healthz", 60.0)

    def orchestrator_pid(self) -> int:
        return int(self.bed.state.orchestrator_pid)

    def link(self, name: str, up: bool) -> None:
        if up:
            self.bed.link_up(name)
        else:
            self.bed.link_down(name)

    def cut_rate(self, name: str, factor: float | None) -> None:
        down, up = self.rates[name]
        f = 1.0 if factor is None else factor
        self.bed.set_rate(name, down=down * f, up=up * f)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


# ---------------------------------------------------------------------------- modes


@dataclass
class Mode:
    name: str
    body: Callable[[str, int, bool], dict[str, Any]]  # (task name, seed, long) -> body
    is_job: bool = False
    is_async: bool = False
    rounds: int = 0
    deadline_s: float = 1.0  # D


ROUNDS = 4
LONG_ROUNDS = 36  # link_down_long: the task must outlast the outage and use the learner again
D = 1.0


def sync_task(name: str, seed: int, long: bool = False, allocator: str = "dab") -> dict[str, Any]:
    rounds = LONG_ROUNDS if long else ROUNDS
    return {"name": name, "model": "twonn", "seed": seed, "dataset": {"name": "digits"},
            "partition": {"shard_size": 50}, "training": {"lr": 0.1, "iterations": 1},
            "sync": {"deadline_s": D, "grace_s": 2.0, "rounds": rounds,
                     "benchmark_shards": 1, "total_shards": 6, "allocator": allocator,
                     "max_empty_rounds": rounds}}


# MED gives each learner a few shards per GUC (3 × 50 samples here), not "train until the
# deadline" as DAB: one pass at lr 0.1 left both tasks near chance (0.18–0.23 after 4 GUCs),
# so the job's tasks take 10 passes at lr 0.3.
MED_TRAINING = {"lr": 0.3, "iterations": 10}


def med_job(name: str, seed: int, long: bool = False) -> dict[str, Any]:
    gucs = LONG_ROUNDS if long else 4
    sync = {**sync_task(name, seed)["sync"], "rounds": gucs}
    return {"allocator": "med", "seed": seed,
            "tasks": [{**sync_task(f"{name}-a", seed), "sync": sync,
                       "training": MED_TRAINING},
                      {**sync_task(f"{name}-b", seed + 1), "sync": sync,
                       "training": MED_TRAINING}]}


def async_task(aggregator: str) -> Callable[[str, int, bool], dict[str, Any]]:
    def body(name: str, seed: int, long: bool = False) -> dict[str, Any]:
        # long: no max_updates in reach, the task ends when every client has used its data
        # (the victim's too, once it is back), so it outlasts the outage.
        agg: dict[str, Any] = {"aggregator": aggregator, "k": 2, "pi_s": 0.5,
                               "pull_threshold": 50, "epochs": ASYNC_EPOCHS,
                               "arrival_rate": ARRIVAL_RATE,
                               "max_updates": 1000 if long else ASYNC_MERGES}
        return {"name": name, "model": "twonn", "seed": seed, "dataset": {"name": "digits"},
                "partition": {"kind": "dirichlet", "alpha": 1.0, "shard_size": ASYNC_SHARD},
                "training": {"lr": 0.3, "batch_size": 16}, "mode": "async", "async": agg}
    return body


MODE_TABLE = {
    "dab": Mode("dab", lambda n, s, long: sync_task(n, s, long), rounds=ROUNDS),
    "med": Mode("med", med_job, is_job=True, rounds=4),
    "spin": Mode("spin", async_task("spin"), is_async=True),
    "fedbuff": Mode("fedbuff", async_task("fedbuff"), is_async=True),
    "fedbuff_relay": Mode("fedbuff_relay", async_task("fedbuff"), is_async=True),
}


# ---------------------------------------------------------------------------- one cell


@dataclass
class Cell:
    mode: str
    fault: str
    finished: bool = False
    state: str = ""
    reason: str | None = None
    seconds: float = 0.0
    recover_s: float | None = None
    accuracy: float | None = None
    accuracy_delta: float | None = None  # vs the fault-free run of the mode (filled later)
    accounting: dict[str, int] = field(default_factory=dict)
    note: str = ""
    skipped: bool = False
    noise: float = ACC_NOISE  # the mode's accuracy noise band (see fill_deltas)
    injected: bool = True  # False: the run ended before the fault's trigger
    merges: int | None = None  # rounds (sync; a job: summed over its tasks) / updates merged
    merges_target: int | None = None  # what the setting asks for (None: long setting)
    # link_down_long: seen not alive during the outage; alive again by itself after it
    # (seconds from the link's return); used again by the task after it.
    declared_gone: bool | None = None
    back_s: float | None = None
    used_again: bool | None = None

    def goal_met(self) -> bool:
        a = self.accounting
        noise = self.accuracy_delta is None or self.accuracy_delta >= -self.noise
        came_back = self.fault not in LONG_FAULTS or bool(
            self.declared_gone and self.back_s is not None and self.used_again)
        return (self.finished and came_back and a.get("acked_lost", 0) == 0
                and a.get("acked_unmerged", 0) == 0 and a.get("rounds_repeated", 0) == 0
                and a.get("rounds_lost", 0) == 0 and a.get("versions_bad", 0) == 0
                and a.get("updates_merged_twice", 0) == 0 and noise)


class Run:
    """One submitted task or job and how to read its progress."""

    def __init__(self, rig: Rig, mode: Mode, seed: int, long: bool = False) -> None:
        self.rig, self.mode = rig, mode
        self.facts: dict[str, Any] = {}  # what a fault's action observed (link_down_long)
        with rig.client() as c:
            body = mode.body(f"chaos-{mode.name}-{time.time_ns() % 10**9}", seed, long)
            self.id = int(c.submit_job(body)["id"] if mode.is_job else c.submit(body)["id"])

    def get(self) -> dict[str, Any]:
        with self.rig.client() as c:
            return dict(c.job(self.id) if self.mode.is_job else c.task(self.id))

    def progress(self) -> int:
        """Committed rounds (sync, job) or model versions (async); -1 while unreachable."""
        try:
            x = self.get()
        except Exception:  # the orchestrator is down: no progress seen
            return -1
        return int(x["model_version"] if self.mode.is_async else x["rounds_done"])

    def running(self) -> bool:
        """Pending or running (or the orchestrator unreachable, so not known to have ended)."""
        try:
            return self.get()["state"] in ("pending", "running")
        except Exception:
            return True

    def task_ids(self) -> list[int]:
        if not self.mode.is_job:
            return [self.id]
        return [int(t["id"]) for t in self.get()["tasks"]]


def wait(predicate: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.1
         ) -> Any:
    end = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(poll_s)
    return value


def trigger(run: Run, predicate: Callable[[], Any], timeout_s: float, what: str,
            poll_s: float = 0.1) -> None:
    """Wait for a fault's trigger; NotInjected if the run ends first (checked every second)."""
    end, check = time.monotonic() + timeout_s, 0.0
    while not predicate():
        now = time.monotonic()
        if now > check:
            if not run.running():
                raise NotInjected(f"not injected: the run ended before {what}")
            check = now + 1.0
        if now > end:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(poll_s)


def victim(mode: Mode) -> str:
    return RELAYED if mode.name == "fedbuff_relay" else "a1"


def _count(rig: Rig, name: str, pattern: re.Pattern[str], task_ids: set[int]) -> int:
    return sum(1 for m in pattern.finditer(rig.agent_log(name)) if int(m[1]) in task_ids)


def _kill_agent_now(rig: Rig, run: Run, ids: set[int]) -> None:
    who = victim(run.mode)
    rig.kill_agent(who)
    time.sleep(2 * D)
    rig.restart_agent(who)


def _kill_agent_uploading(rig: Rig, run: Run, ids: set[int]) -> None:
    who = victim(run.mode)
    pattern = UPLOADING if run.mode.is_async else TRAINED
    n0 = _count(rig, who, pattern, ids)
    trigger(run, lambda: _count(rig, who, pattern, ids) > n0, 120.0, "the victim's upload",
            poll_s=0.01)
    _kill_agent_now(rig, run, ids)


def _kill_orchestrator_mid_round(rig: Rig, run: Run, ids: set[int]) -> None:
    p0 = run.progress()
    trigger(run, lambda: run.progress() > p0, 120.0, "a round to start")
    time.sleep(D / 2)
    rig.kill_orchestrator()
    rig.start_orchestrator()


def _kill_orchestrator_mid_aggregation(rig: Rig, run: Run, ids: set[int]) -> None:
    if run.mode.is_async:
        n0 = sum(_count(rig, a, ACK, ids) for a in AGENTS)
        trigger(run, lambda: sum(_count(rig, a, ACK, ids) for a in AGENTS) > n0, 120.0,
                "an acknowledged update", poll_s=0.01)
    else:
        p0 = run.progress()

        def all_in() -> bool:
            rounds = [int(m[2]) for a in AGENTS
                      for m in TRAINED.finditer(rig.agent_log(a)) if int(m[1]) in ids]
            return sum(1 for r in rounds if r == p0) >= len(AGENTS) - 1

        with contextlib.suppress(TimeoutError):  # MED may not use every learner
            wait(all_in, D + 6.0, "a round's results", poll_s=0.01)
    rig.kill_orchestrator()
    rig.start_orchestrator()


def _link_down(rig: Rig, run: Run, ids: set[int]) -> None:
    rig.link(victim(run.mode), up=False)
    time.sleep(2 * D)
    rig.link(victim(run.mode), up=True)


def _link_down_long(rig: Rig, run: Run, ids: set[int]) -> None:
    """Down for longer than alive_after_s: watch the victim be declared gone, bring the link
    back, wait (up to 90 s, no restart) for it to be alive again by itself."""
    who = victim(run.mode)
    rig.link(who, up=False)
    gone, end = False, time.monotonic() + LONG_DOWN_S
    while time.monotonic() < end:
        with contextlib.suppress(Exception):  # the orchestrator answers; be safe anyway
            gone = gone or who not in _alive(rig)
        time.sleep(0.5)
    rig.link(who, up=True)
    up_at = time.monotonic()
    pattern = ACK if run.mode.is_async else TRAINED
    run.facts.update(declared_gone=gone, mark=_count(rig, who, pattern, ids), pattern=pattern)
    with contextlib.suppress(TimeoutError):
        wait(lambda: who in _alive(rig), 90.0, f"{who} alive again", poll_s=0.2)
        run.facts["back_s"] = round(time.monotonic() - up_at, 2)


def _bandwidth_cut(rig: Rig, run: Run, ids: set[int]) -> None:
    rig.cut_rate(victim(run.mode), 0.1)


def _sigstop(rig: Rig, run: Run, ids: set[int]) -> None:
    rig.pause(victim(run.mode))
    time.sleep(2 * D)
    rig.resume(victim(run.mode))


def _disk_full(rig: Rig, run: Run, ids: set[int]) -> None:
    pid = rig.orchestrator_pid()
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (DISK_LIMIT_BYTES, resource.RLIM_INFINITY))
    try:
        time.sleep(max(3.0, 2 * D))
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


ACTIONS: dict[str, Callable[[Rig, Run, set[int]], None]] = {
    "agent_kill_round": _kill_agent_now,
    "agent_kill_upload": _kill_agent_uploading,
    "orch_kill_round": _kill_orchestrator_mid_round,
    "orch_kill_agg": _kill_orchestrator_mid_aggregation,
    "link_down": _link_down,
    "link_down_long": _link_down_long,
    "bandwidth_cut": _bandwidth_cut,
    "sigstop": _sigstop,
    "disk_full": _disk_full,
}


def inject(rig: Rig, run: Run, fault: str) -> float | None:
    """Wait for the trigger (the first committed round or version), inject `fault`, end it;
    the monotonic time the fault ended (None: no fault)."""
    if fault == "none":
        return None
    if fault in LINK_FAULTS and isinstance(rig, LocalRig):
        raise Unsupported("link faults need the testbed (--rig testbed)")
    action = ACTIONS[fault]
    trigger(run, lambda: run.progress() >= 1, 180.0, "the first committed round or version")
    action(rig, run, set(run.task_ids()))
    return time.monotonic()


def restore(rig: Rig, mode: Mode, fault: str) -> None:
    """Put the victim back as it was (after a failed cell too)."""
    who = victim(mode)
    with contextlib.suppress(Exception):
        if fault == "sigstop":
            rig.resume(who)
        if fault == "link_down":
            rig.link(who, up=True)
        if fault == "bandwidth_cut":
            rig.cut_rate(who, None)


def account(rig: Rig, run: Run) -> tuple[Accounting, float | None, int]:
    """The cell's accounting, its final accuracy (mean over a job's tasks) and its merges
    (sync: rounds committed; async: updates merged into committed versions)."""
    from orchestrator.store import Store

    logs = [rig.agent_log(a) for a in AGENTS]
    store = Store(rig.data_dir)
    try:
        parts, accs, merges = [], [], 0
        for tid in run.task_ids():
            rounds = store.rounds(tid)
            merges += (sum(sum(r.allocation.values()) for r in rounds) if run.mode.is_async
                       else len(rounds))
            if rounds and rounds[-1].accuracy is not None:
                accs.append(float(rounds[-1].accuracy))
            if run.mode.is_async:
                rows = {r.id: r.consumed_version for r in store.async_updates(tid)}
                parts.append(account_async(
                    acked_ids(logs, {tid}), rows, [r.model_version for r in rounds],
                    {r.model_version: sum(r.allocation.values()) for r in rounds}))
            else:
                expected = int(store.task(tid).spec["sync"]["rounds"])
                parts.append(account_sync([r.index for r in rounds],
                                          [r.model_version for r in rounds], expected))
        return merge(parts), (sum(accs) / len(accs) if accs else None), merges
    finally:
        store.close()


def run_cell(rig: Rig, mode_name: str, fault: str, seed: int, timeout_s: float = 300.0
             ) -> Cell:
    """Submit the mode's task (job), inject the fault, wait for the end, account."""
    mode = MODE_TABLE[mode_name]
    cell = Cell(mode_name, fault)
    if fault in LINK_FAULTS and isinstance(rig, LocalRig):
        cell.skipped, cell.note = True, "link faults need the testbed"
        return cell
    t0 = time.monotonic()
    long = fault in LONG_FAULTS
    run = Run(rig, mode, seed, long=long)
    if not long:
        cell.merges_target = (ASYNC_MERGES if mode.is_async
                              else mode.rounds * (2 if mode.is_job else 1))
    try:
        ended_at = inject(rig, run, fault)
        if ended_at is not None:
            p = wait(lambda: run.progress(), 60.0, "the orchestrator back", poll_s=0.05)
            with contextlib.suppress(TimeoutError):
                wait(lambda: run.progress() > p or run.get()["state"] != "running", 120.0,
                     "progress after the fault", poll_s=0.05)
                cell.recover_s = round(time.monotonic() - ended_at, 2)
        final = wait(lambda: (x := run.get())["state"] not in ("pending", "running") and x,
                     timeout_s, "the end", poll_s=0.3)
        cell.state, cell.reason = str(final["state"]), final.get("reason")
        cell.finished = cell.state == "finished"
    except NotInjected as exc:
        cell.injected, cell.note = False, str(exc)
        final = run.get()
        cell.state, cell.reason = str(final["state"]), final.get("reason")
        cell.finished = cell.state == "finished"
    except (TimeoutError, Unsupported) as exc:
        cell.note = str(exc)
        with contextlib.suppress(Exception), rig.client() as c:
            if mode.is_job:
                c.cancel_job(run.id)
            else:
                c.cancel(run.id)
    finally:
        restore(rig, mode, fault)
    cell.seconds = round(time.monotonic() - t0, 1)
    acc, cell.accuracy, cell.merges = account(rig, run)
    cell.accounting = asdict(acc)
    if long and "mark" in run.facts:
        cell.declared_gone = bool(run.facts["declared_gone"])
        cell.back_s = run.facts.get("back_s")
        cell.used_again = _count(rig, victim(mode), run.facts["pattern"],
                                 set(run.task_ids())) > int(run.facts["mark"])
    _ensure_agents(rig)
    return cell


def _alive(rig: Rig) -> set[str]:
    with rig.client() as c:
        return {str(lr["name"]) for lr in c.learners() if lr["alive"]}


def _ensure_agents(rig: Rig) -> None:
    """Every agent alive and enrolled again before the next cell (a restarted one may take a
    few seconds to show; one still missing after 20 s is restarted)."""
    for a in AGENTS:
        try:
            wait(lambda a=a: a in _alive(rig), 20.0, f"agent {a} back")  # type: ignore[misc]
        except TimeoutError:
            rig.restart_agent(a)


def fill_deltas(cells: list[Cell]) -> None:
    """Accuracy against the mean of the mode's fault-free runs; the noise band is the larger
    of ACC_NOISE and the spread (max − min) of those runs. Cells of the long setting
    (LONG_FAULTS) ran more rounds / merges than the fault-free runs: not compared."""
    base: dict[str, list[float]] = {}
    for c in cells:
        if c.fault == "none" and c.accuracy is not None:
            base.setdefault(c.mode, []).append(c.accuracy)
    for c in cells:
        ref = base.get(c.mode)
        if ref:
            c.noise = round(max(ACC_NOISE, max(ref) - min(ref)), 4)
        if c.accuracy is not None and ref and c.fault not in LONG_FAULTS:
            c.accuracy_delta = round(c.accuracy - sum(ref) / len(ref), 4)


# ---------------------------------------------------------------------------- the matrix


@contextlib.contextmanager
def make_rig(kind: str, mode: str, work: Path, fleet_file: Path) -> Iterator[Rig]:
    rig: Rig
    if kind == "local":
        rig = LocalRig(work / mode, relayed=mode == "fedbuff_relay")
    else:
        rig = TestbedRig(fleet_file, relayed=mode == "fedbuff_relay")
    try:
        rig.start()
        yield rig
    finally:
        rig.stop()


def matrix(args: argparse.Namespace) -> list[Cell]:
    cells: list[Cell] = []
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    for mode in args.modes:
        faults = [QUICK[mode]] if args.quick else args.faults
        faults = [f for f in faults if f != "none"]
        faults = ["none"] * args.baselines + faults
        with make_rig(args.rig, mode, work, args.fleet) as rig:
            for fault in faults:
                cell = run_cell(rig, mode, fault, args.seed)
                cells.append(cell)
                print(json.dumps(asdict(cell)), flush=True)
    fill_deltas(cells)
    return cells


METRICS = ["finished", "acked_lost", "acked_unmerged", "rounds_lost", "rounds_repeated",
           "recover_s", "accuracy_delta"]


def cell_metrics(c: Cell) -> dict[str, float | None]:
    if c.skipped:
        return dict.fromkeys(METRICS)
    a = c.accounting
    return {"finished": 1.0 if c.finished else 0.0,
            "acked_lost": float(a.get("acked_lost", 0)),
            "acked_unmerged": float(a.get("acked_unmerged", 0)),
            "rounds_lost": float(a.get("rounds_lost", 0) + a.get("versions_bad", 0)),
            "rounds_repeated": float(a.get("rounds_repeated", 0)
                                     + a.get("updates_merged_twice", 0)),
            "recover_s": c.recover_s, "accuracy_delta": c.accuracy_delta}


def plot(cells: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [f"{c.mode} / {c.fault}" for c in cells]
    data = np.full((len(cells), len(METRICS)), np.nan)
    bad = np.zeros((len(cells), len(METRICS)))
    for i, c in enumerate(cells):
        for j, (k, v) in enumerate(cell_metrics(c).items()):
            if v is None:
                continue
            data[i, j] = v
            if k == "finished":
                bad[i, j] = 0.0 if v else 1.0
            elif k == "recover_s":
                bad[i, j] = min(1.0, v / 30.0)
            elif k == "accuracy_delta":  # red only beyond the mode's band (the goal)
                drop = max(0.0, -v)
                bad[i, j] = 1.0 if drop > c.noise else 0.5 * drop / c.noise
            else:
                bad[i, j] = 1.0 if v else 0.0
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(cells) + 1.5))
    ax.imshow(np.where(np.isnan(data), np.nan, bad), cmap="RdYlGn_r", vmin=0, vmax=1,
              aspect="auto")
    for i in range(len(cells)):
        for j in range(len(METRICS)):
            v = data[i, j]
            text = "n/a" if np.isnan(v) else (f"{v:.2f}" if METRICS[j] in (
                "recover_s", "accuracy_delta") else f"{v:.0f}")
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(METRICS)), METRICS, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(cells)), rows, fontsize=7)
    ax.set_title("Chaos matrix: green = goal met (n/a: not run on this rig)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(cells: list[dict[str, Any]]) -> str:
    """The table docs/results.md shows, one row per cell of a result JSON."""
    lines = ["| mode | fault | finished | acked (lost) | rounds lost / repeated | recover s "
             "| merges | accuracy (Δ vs fault-free) | goal |", "|" + "---|" * 9]
    for c in cells:
        if c["skipped"]:
            lines.append(f"| {c['mode']} | {c['fault']} | n/a: {c['note']} | | | | | | n/a |")
            continue
        a = c["accounting"]
        lost = a["acked_lost"] + a["acked_unmerged"]
        acked = f"{a['acked']} ({lost})" if c["mode"] not in ("dab", "med") else "—"
        rl = a["rounds_lost"] + a["versions_bad"]
        rr = a["rounds_repeated"] + a["updates_merged_twice"]
        acc = "—" if c["accuracy"] is None else f"{c['accuracy']:.3f}"
        if c["accuracy_delta"] is not None and c["fault"] != "none":
            acc += f" ({c['accuracy_delta']:+.3f}, band {c.get('noise', ACC_NOISE):.3f})"
        rec = "—" if c["recover_s"] is None else f"{c['recover_s']:.1f}"
        merges = "—" if c.get("merges") is None else str(c["merges"])
        if c.get("merges_target") is not None and c["merges"] is not None \
                and c["merges"] < c["merges_target"]:
            merges += f" (**short of {c['merges_target']}**)"
        if c["fault"] in LONG_FAULTS:
            acc += " (long setting, not compared)"
            back = "—" if c.get("back_s") is None else f"{c['back_s']:.1f} s"
            rec += (f"; gone: {_yes(c.get('declared_gone'))}, back: {back}, used again: "
                    f"{_yes(c.get('used_again'))}")
        goal = ("not tested" if c["goal_met"] is None
                else "met" if c["goal_met"] else "**missed**")
        fin = "yes" if c["finished"] else f"**no** ({c['note'] or c['state']})"
        lines.append(f"| {c['mode']} | {c['fault']} | {fin} | {acked} | {rl} / {rr} | {rec} "
                     f"| {merges} | {acc} | {goal} |")
    return "\n".join(lines)


def _yes(v: bool | None) -> str:
    return "—" if v is None else "yes" if v else "**no**"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rig", choices=["local", "testbed"], default="testbed")
    p.add_argument("--fleet", type=Path, default=FLEET_FILE)
    p.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    p.add_argument("--faults", nargs="+", choices=FAULTS, default=FAULTS)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--table", type=Path, default=None,
                   help="print the markdown table of this result JSON and exit")
    p.add_argument("--replot", type=Path, default=None,
                   help="draw the PNG of this result JSON again (beside it) and exit")
    p.add_argument("--quick", action="store_true",
                   help="one fault cell per mode (plus the fault-free runs)")
    p.add_argument("--baselines", type=int, default=3,
                   help="fault-free runs per mode (their mean is the accuracy reference, "
                        "their spread the noise band)")
    add_out_dir(p)
    args = p.parse_args(argv)
    if args.table is not None:
        print(markdown(json.loads(args.table.read_text())["cells"]))
        return 0
    if args.replot is not None:
        names = {f.name for f in fields(Cell)}
        cells = [Cell(**{k: v for k, v in c.items() if k in names})
                 for c in json.loads(args.replot.read_text())["cells"]]
        plot(cells, args.replot.with_suffix(".png"))
        return 0
    if args.rig == "testbed" and os.geteuid() != 0:
        print("--rig testbed needs root", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    cells = matrix(args)
    load = os.getloadavg()
    result = {"rig": args.rig, "command": " ".join(["python", "benchmarks/chaos.py",
                                                    *(argv or sys.argv[1:])]),
              "load_average": [round(x, 2) for x in load],
              "wall_s": round(time.monotonic() - t0, 1), "acc_noise": ACC_NOISE,
              "cells": [{**asdict(c), "goal_met": None if c.skipped or not c.injected
                         else c.goal_met()}
                        for c in cells]}
    out = results_dir(args)
    stem = f"chaos-{args.rig}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(cells, out / f"{stem}.png")
    met = sum(1 for c in cells if not c.skipped and c.injected and c.goal_met())
    ran = sum(1 for c in cells if not c.skipped and c.injected)
    print(f"goal met in {met}/{ran} cells; wrote {out / stem}.json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
