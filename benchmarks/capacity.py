"""Capacity of one orchestrator: N emulated learners at the protocol level (issue 18, part 2).

Two measurements in one run:

* **Live curve.** The real orchestrator (`plexus orchestrator serve`, a subprocess, SQLite or
  the PostgreSQL of `--db-url` / `PLEXUS_TEST_DB_URL`) serves N emulated learners driven from
  this process: each enrolls (`POST /v1/learners/enroll`, with an RPC endpoint), heartbeats
  every `--heartbeat-s` s (`POST /v1/learners/{id}/heartbeat`), and a running async SPIN task
  of LeNet-5 on MNIST-5k gets `--push-rate` pull/push pairs per second of a real LeNet-5
  update (`POST /v1/tasks/{id}/pull`, `/updates`). The learners' RPC endpoint is one real
  `rpc.Worker` in this process whose procedures are a fake agent: `join_async` /
  `leave_async` / `status` answer at once, `plan` / `benchmark` answer fixed figures, and
  `train` returns a valid update (the task's parameters plus noise) after `--train-delay-s`.
  N grows step by step (100, 1,000, 5,000, 10,000; learners are added, not restarted); each
  step reports per route the requests/s, p50/p99 latency and errors, the orchestrator's CPU
  (% of one core) and RSS (psutil on its pid), and the knee: the first N where a route's p99
  passes `--p99-goal-ms` or the achieved rate falls under 90 % of the offered one.
* **Sync overhead.** A synchronous round's orchestrator-side work, in-process on the real code
  paths (`allocation.get_allocator(...).allocate`, `assign_shard_ids`, `runs.sync.cap_samples`,
  `runs.rounds.close_round` = check + FedAvg + evaluate + write model + keep every update,
  `Store.record_round`), with L fake LeNet-5 answers for L = 100 .. 1,000 learners.

* **2 tiers vs flat** (`--tiers 0 2 4`, instead of the two above): for each k a fresh
  orchestrator and k `plexus aggregator serve --upstream` processes; `--tier-learners` learners
  enrol with the edges (k = 0: with the orchestrator) and heartbeat, 10 probe learners heartbeat
  at the orchestrator every second; enrol / heartbeat latency at the orchestrator and at the
  edges, CPU and RSS of every process, and a sync round's overhead in-process: the orchestrator
  with L learners flat vs k, plus one edge's own work for its L/k children.

Why an asyncio + httpx generator and not locust: the load is **open-loop** (every request has a
scheduled send time, and its latency counts from then, so a slow server cannot slow the
generator down and hide its own queueing, the coordinated omission of closed-loop users);
10,000 learners are 10,000 timers in one event loop here, not 10,000 locust users (greenlets,
each a closed loop, plus a locust master) competing with the orchestrator for 2 cores; the
learners must also *serve* the orchestrator's RPC calls (join_async, train), which our own
`rpc.Worker` does in the same process; and it needs no new dependency (locust pins its own
Flask / gevent stack). The generator's own lag (how late timers fire) is reported, so a
saturated generator is visible rather than mistaken for a slow server.

`--quick` runs 40 and 120 learners with short windows (a smoke test, < 1 min); the full run
is `python benchmarks/capacity.py` (< 8 min). JSON + PNG go to `benchmarks/results/`
(`--out-dir`); a quick run writes `benchmarks/results/quick/`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from outdir import add_out_dir, results_dir

ROUTES = ("enroll", "heartbeat", "pull", "updates", "learners")
LENET_TASK: dict[str, Any] = {
    "name": "capacity-lenet5", "model": "lenet5", "seed": 0,
    "dataset": {"name": "mnist5k", "test_fraction": 0.1},
    "partition": {"kind": "dirichlet", "alpha": 1.0, "shard_size": 250},
    "training": {"optimizer": "sgd", "lr": 0.05, "batch_size": 32, "iterations": 1},
}


# -- the fake agent: what the orchestrator's RPC calls reach ----------------------------------

@dataclass
class FakeTrainer:
    """Answers a `train` call with a valid update after `delay_s` seconds: the task's
    parameters (`params`, set once the model is known) plus small noise."""

    delay_s: float = 0.5
    params: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def update(self, rng: np.random.Generator) -> dict[str, np.ndarray[Any, Any]]:
        """A LeNet-5 update: the parameters plus N(0, 1e-3) noise, float32."""
        return {k: (v + rng.normal(0.0, 1e-3, v.shape)).astype(v.dtype)
                for k, v in self.params.items()}

    def registry(self) -> Any:
        """An `rpc.Registry` with every agent procedure of docs/protocol.md, faked."""
        import rpc

        reg = rpc.Registry()
        rng = np.random.default_rng(0)

        @reg.procedure(name="status")
        def status() -> dict[str, Any]:
            self.count("status")
            return {"name": "fake", "busy": False, "state": "idle", "facts": {}, "async": []}

        @reg.procedure(name="plan")
        def plan(task: dict[str, Any], task_id: int) -> dict[str, int]:
            self.count("plan")
            return {"a_k": 1}

        @reg.procedure(name="benchmark")
        def benchmark(task: dict[str, Any], task_id: int, state: str | None = None
                      ) -> dict[str, Any]:
            self.count("benchmark")
            return {"bandwidth": 1e7, "compute": 1e3, "state": state or "idle"}

        @reg.procedure(name="train")
        async def train(task: dict[str, Any], task_id: int, round: int, shards: list[int],
                        deadline_s: float, state: str | None = None) -> dict[str, Any]:
            self.count("train")
            await asyncio.sleep(self.delay_s)  # the emulated training time
            n = len(shards) * 250
            return {"params": self.update(rng), "model_version": round,
                    "samples_trained": n, "samples_allocated": n, "loss": 1.0,
                    "download_s": 0.0, "train_s": self.delay_s, "halted": False}

        @reg.procedure(name="round_state")
        def round_state(distribution: dict[str, float], reveal: bool = False
                        ) -> dict[str, Any]:
            self.count("round_state")
            return {"state": "idle" if reveal else None}

        @reg.procedure(name="join_async")
        def join_async(task: dict[str, Any], task_id: int, client: int) -> dict[str, Any]:
            self.count("join_async")
            return {"task_id": task_id, "client": client, "joined": True}

        @reg.procedure(name="leave_async")
        def leave_async(task_id: int) -> dict[str, bool]:
            self.count("leave_async")
            return {"left": True}

        return reg


def start_fake_agents(trainer: FakeTrainer) -> tuple[Any, str]:
    """One `rpc.Worker` serving every emulated learner at `<url>/l/<name>`; (server, url)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    import rpc

    worker = rpc.Worker(trainer.registry(), tokens=None, max_threads=8)
    app = Starlette(routes=[Mount("/l/{name}", app=worker.app)])
    server = rpc.ServerThread(app, "127.0.0.1", 0).start()
    return server, str(server.url)


# -- recording ---------------------------------------------------------------------------------

@dataclass
class Recorder:
    """Latencies (ms, from each request's *scheduled* time), errors and counts per route, for
    the current measurement window only; `lag_ms` is how late the generator's timers fired."""

    start: float = float("inf")  # monotonic seconds: requests scheduled in [start, end] count
    end: float = float("inf")
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    # From the moment the generator called httpx (after its own lag), per route.
    sent_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)
    lag_ms: list[float] = field(default_factory=list)

    def open(self) -> None:
        """Start a window now: forget what was recorded before."""
        self.latency_ms, self.sent_ms, self.errors, self.lag_ms = {}, {}, {}, []
        self.start, self.end = time.monotonic(), float("inf")

    def counts(self, scheduled: float) -> bool:
        """Whether a request scheduled at `scheduled` belongs to the window."""
        return self.start <= scheduled <= self.end

    def done(self, route: str, scheduled: float, sent: float, ok: bool, why: str = "") -> None:
        if not self.counts(scheduled):
            return
        now = time.monotonic()
        self.latency_ms.setdefault(route, []).append(1000 * (now - scheduled))
        self.sent_ms.setdefault(route, []).append(1000 * (now - sent))
        if not ok:
            per = self.errors.setdefault(route, {})
            per[why] = per.get(why, 0) + 1

    def summary(self, seconds: float) -> dict[str, dict[str, Any]]:
        """Per route: requests/s, p50 / p99 / max latency (ms), errors by cause."""
        out: dict[str, dict[str, Any]] = {}
        for route in [*ROUTES, *sorted(set(self.latency_ms) - set(ROUTES))]:
            lat = self.latency_ms.get(route, [])
            if not lat:
                continue
            q = np.percentile(np.asarray(lat), [50, 99, 100])
            qs = np.percentile(np.asarray(self.sent_ms[route]), [50, 99])
            out[route] = {"count": len(lat), "per_s": len(lat) / seconds,
                          "p50_ms": float(q[0]), "p99_ms": float(q[1]), "max_ms": float(q[2]),
                          "sent_p50_ms": float(qs[0]), "sent_p99_ms": float(qs[1]),
                          "errors": self.errors.get(route, {})}
        return out


# Requests in flight at once: as many as the client's connections. httpx queues the excess
# in its pool, whose assignment scans every queued request on each event (quadratic, and the
# generator, not the server, saturates); queued here instead, the wait still counts in the
# latency from the scheduled time.
CONNECTIONS = 64
_gate: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def gate() -> asyncio.Semaphore:
    """The in-flight limit of the running loop."""
    loop = asyncio.get_running_loop()
    return _gate.setdefault(loop, asyncio.Semaphore(CONNECTIONS))


async def timed(rec: Recorder, route: str, scheduled: float,
                send: Callable[[], Awaitable[httpx.Response]], ok: tuple[int, ...] = (200,)
                ) -> httpx.Response | None:
    """Send one request; record its latency from `scheduled` and whether it failed."""
    async with gate():
        return await _timed(rec, route, scheduled, send, ok)


async def _timed(rec: Recorder, route: str, scheduled: float,
                 send: Callable[[], Awaitable[httpx.Response]], ok: tuple[int, ...]
                 ) -> httpx.Response | None:
    sent = time.monotonic()
    try:
        resp = await send()
    except httpx.HTTPError as exc:
        rec.done(route, scheduled, sent, False, type(exc).__name__)
        return None
    good = resp.status_code in ok
    rec.done(route, scheduled, sent, good, "" if good else str(resp.status_code))
    return resp if good else None


# -- the emulated learners ---------------------------------------------------------------------

@dataclass
class Learner:
    """One emulated learner: its name, id and token, and whether a pull/push is in flight."""

    name: str
    id: int = 0
    token: str = ""
    busy: bool = False


def device_facts(rng: random.Random) -> dict[str, Any]:
    """Facts as an agent sends them at enrolment and with every heartbeat (docs/protocol.md)."""
    return {"cores": 4, "memory_bytes": 4 * 1024**3, "load_1m": round(rng.random() * 2, 2),
            "platform": "Linux-6.1-aarch64", "machine": "aarch64", "cuda": False,
            "model_factories": []}


class Fleet:
    """N emulated learners against one orchestrator: enrol, heartbeat, pull and push."""

    def __init__(self, url: str, join_token: str, agents_url: str, heartbeat_s: float,
                 rec: Recorder, prefix: str = "cap", where: str = "") -> None:
        self.url, self.join_token, self.agents_url = url, join_token, agents_url
        # Learner names `<prefix>-<i>`; routes recorded as `enroll<where>`, `heartbeat<where>`
        # (e.g. "@edge" for learners enrolled with an edge aggregator).
        self.prefix, self.where = prefix, where
        self.heartbeat_s = heartbeat_s
        self.rec = rec
        self.learners: list[Learner] = []
        self.rng = random.Random(0)
        self.http = httpx.AsyncClient(base_url=url, timeout=120.0, limits=httpx.Limits(
            max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS))
        self._due: list[tuple[float, int]] = []  # (next heartbeat, learner index), a heap
        self.enroll_failures = 0
        self._inflight: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def enroll_one(self, lr: Learner) -> None:
        body = {"join_token": self.join_token, "name": lr.name,
                "facts": device_facts(self.rng), "endpoint": f"{self.agents_url}/l/{lr.name}"}
        t = time.monotonic()
        for _attempt in range(3):  # an enrolment refused under load is tried again
            resp = await timed(self.rec, f"enroll{self.where}", t,
                               lambda: self.http.post("/v1/learners/enroll", json=body),
                               (200, 201))  # an edge aggregator answers 200
            if resp is not None:
                break
            self.enroll_failures += 1
        else:
            raise RuntimeError(f"enrolment of {lr.name} failed three times")
        answer = resp.json()
        lr.id, lr.token = int(answer["learner_id"]), str(answer["token"])

    async def grow(self, n: int, timeout_s: float, concurrency: int = 48) -> float:
        """Enroll learners until there are `n` (or `timeout_s` passed); each starts
        heartbeating at a random phase. Returns the enrolment rate (learners/s)."""
        import heapq

        new = [Learner(f"{self.prefix}-{i:06d}") for i in range(len(self.learners), n)]
        gate = asyncio.Semaphore(concurrency)
        t0 = time.monotonic()

        async def one(lr: Learner) -> None:
            async with gate:
                await self.enroll_one(lr)
            self.learners.append(lr)
            heapq.heappush(self._due, (time.monotonic() + self.rng.random() * self.heartbeat_s,
                                       len(self.learners) - 1))

        jobs = [asyncio.ensure_future(one(lr)) for lr in new]
        _done, late = await asyncio.wait(jobs, timeout=timeout_s)
        for job in late:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        return (len(new) - len(late)) / max(time.monotonic() - t0, 1e-9)

    def rephase(self) -> None:
        """Every learner's next heartbeat at a random phase of one interval from now."""
        import heapq

        now = time.monotonic()
        self._due = [(now + self.rng.random() * self.heartbeat_s, i)
                     for i in range(len(self.learners))]
        heapq.heapify(self._due)

    async def heartbeat(self, lr: Learner, scheduled: float) -> None:
        body = {"facts": device_facts(self.rng)}
        headers = {"Authorization": f"Bearer {lr.token}"}
        await timed(self.rec, f"heartbeat{self.where}", scheduled, lambda: self.http.post(
            f"/v1/learners/{lr.id}/heartbeat", json=body, headers=headers))

    async def heartbeats(self) -> None:
        """Open loop: every learner heartbeats every `heartbeat_s`, whatever the answers."""
        import heapq

        while True:
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                due, i = heapq.heappop(self._due)
                if self.rec.counts(due):
                    self.rec.lag_ms.append(1000 * (now - due))
                self.spawn(self.heartbeat(self.learners[i], due))
                heapq.heappush(self._due, (due + self.heartbeat_s, i))
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        await self.http.aclose()


class Pusher:
    """Open-loop async training traffic: `rate` pull → push pairs per second of a real LeNet-5
    update, spread over the first `width` learners (one pair in flight per learner)."""

    def __init__(self, fleet: Fleet, task_id: int, trainer: FakeTrainer, rate: float,
                 width: int = 200, n_samples: int = 50) -> None:
        self.fleet, self.task_id, self.trainer = fleet, task_id, trainer
        self.rate, self.width, self.n_samples = rate, width, n_samples
        self.rng = np.random.default_rng(1)
        self.skipped = 0  # scheduled pairs with every pushing learner still busy
        self.accepted = 0
        # While the fleet grows (enrolment, join sweep) no pairs are sent: a step measures
        # the steady state of N learners, not N learners plus their arrival.
        self.paused = False

    async def pull_push(self, lr: Learner, scheduled: float) -> None:
        from plexus.tensors import encode_state

        http, rec = self.fleet.http, self.fleet.rec
        headers = {"Authorization": f"Bearer {lr.token}"}
        try:
            resp = await timed(rec, "pull", scheduled, lambda: http.post(
                f"/v1/tasks/{self.task_id}/pull", json={"n_samples": self.n_samples},
                headers=headers), (200, 204))
            if resp is None or resp.status_code == 204:
                return
            version = int(resp.headers["X-Model-Version"])
            body = encode_state(self.trainer.update(self.rng),
                                {"base_version": version, "n_samples": self.n_samples})
            sent = time.monotonic()
            pushed = await timed(rec, "updates", sent, lambda: http.post(
                f"/v1/tasks/{self.task_id}/updates", content=body,
                headers={**headers, "content-type": "application/octet-stream"}))
            if pushed is not None and rec.counts(scheduled):
                self.accepted += 1
        finally:
            lr.busy = False

    async def run(self) -> None:
        t0, j, turn = time.monotonic(), 0, 0
        while True:
            if self.paused:
                await asyncio.sleep(0.05)
                t0, j = time.monotonic(), 0  # resume on schedule, with no backlog
                continue
            due = t0 + j / self.rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                continue
            pool = self.fleet.learners[:self.width]
            for _ in range(len(pool)):
                lr = pool[turn % len(pool)]
                turn += 1
                if not lr.busy:
                    lr.busy = True  # now, not when the coroutine starts: a late generator
                    # catching up spawns many pairs before any of them runs
                    self.fleet.spawn(self.pull_push(lr, due))
                    break
            else:
                self.skipped += 1
            j += 1


async def dashboard(fleet: Fleet, admin_token: str, every_s: float) -> None:
    """What the dashboard and `plexus learners` read: `GET /v1/learners`, every `every_s`."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    while True:
        t = time.monotonic()
        await timed(fleet.rec, "learners", t,
                    lambda: fleet.http.get("/v1/learners", headers=headers))
        await asyncio.sleep(max(0.0, every_s - (time.monotonic() - t)))


# -- one live run --------------------------------------------------------------------------------

@dataclass
class LiveOptions:
    """Knobs of the live curve (seconds, learners, requests/s)."""

    steps: list[int]
    heartbeat_s: float
    push_rate: float
    window_s: float
    join_timeout_s: float
    dashboard_every_s: float
    db_url: str | None
    train_delay_s: float = 0.5
    k: int = 50
    profile_dir: Path | None = None  # py-spy record of the orchestrator in every window
    budget_s: float = 400.0  # no enrolment goes on past this many seconds of the run


def async_task(k: int) -> dict[str, Any]:
    """The async SPIN task of LeNet-5 the pushes train (never finishes during the run)."""
    return {**LENET_TASK, "mode": "async",
            "async": {"aggregator": "spin", "k": k, "pi_s": 30.0, "pull_threshold": 50,
                      "epochs": 1, "arrival_rate": 1.0, "staleness": "none",
                      "max_updates": 10**9}}


class CpuMeter:
    """CPU (% of one core) and peak RSS (bytes) of one process over a window (psutil)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.rss_peak = 0
        self._cpu0 = 0.0
        self._t0 = 0.0

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def start(self) -> None:
        self._cpu0, self._t0, self.rss_peak = self._cpu(), time.monotonic(), 0

    def sample(self) -> None:
        self.rss_peak = max(self.rss_peak, int(self.proc.memory_info().rss))

    def result(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        return {"cpu_percent": 100 * (self._cpu() - self._cpu0) / wall,
                "rss_mb": self.rss_peak / 2**20}


async def wait_joined(trainer: FakeTrainer, n: int, timeout_s: float) -> float:
    """Seconds until the orchestrator's join sweep has called `join_async` on `n` learners
    (or `timeout_s` passed; then the count so far is what the step reports)."""
    t0 = time.monotonic()
    while trainer.calls.get("join_async", 0) < n and time.monotonic() - t0 < timeout_s:
        await asyncio.sleep(0.2)
    return time.monotonic() - t0


async def measure(fleet: Fleet, pusher: Pusher, meter: CpuMeter, window_s: float,
                  drain_s: float = 5.0) -> dict[str, Any]:
    """One measurement window: per-route figures, CPU and RSS, the generator's lag."""
    rec = fleet.rec
    rec.open()
    pusher.accepted = pusher.skipped = 0
    meter.start()
    while time.monotonic() - rec.start < window_s:
        meter.sample()
        await asyncio.sleep(0.5)
    rec.end = time.monotonic()
    seconds = rec.end - rec.start
    cpu = meter.result()
    # Requests scheduled in the window may still be on their way: give them a moment.
    await asyncio.sleep(drain_s)
    lag = rec.lag_ms or [0.0]
    return {"routes": rec.summary(seconds), **cpu, "window_s": seconds,
            "pushes_accepted_per_s": pusher.accepted / seconds,
            "pushes_skipped": pusher.skipped,
            "generator_lag_p99_ms": float(np.percentile(np.asarray(lag), 99))}


def fresh_database(server_url: str) -> tuple[str, Callable[[], None]]:
    """A new empty database on the PostgreSQL server `server_url` names; (url, drop)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    name = f"plexus_capacity_{secrets.token_hex(4)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()

    return server.set(database=name).render_as_string(False), drop


def lenet_params(url: str, admin_token: str, task_id: int) -> dict[str, np.ndarray[Any, Any]]:
    """The task's model v0 as numpy arrays: what a fake update is built from."""
    from orchestrator.client import Client
    from plexus.tensors import decode_state

    with Client(url, admin_token) as c:
        state, _meta = decode_state(c.model(task_id, 0))
    return {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in state.items()}


async def drive(opts: LiveOptions, url: str, join_token: str, admin_token: str, pid: int,
                trainer: FakeTrainer, agents_url: str) -> list[dict[str, Any]]:
    """Grow the fleet step by step and measure each step; the figures per step."""
    from orchestrator.client import Client

    with Client(url, admin_token) as c:
        task_id = int(c.submit(async_task(opts.k))["id"])
    trainer.params = await asyncio.to_thread(lenet_params, url, admin_token, task_id)
    fleet = Fleet(url, join_token, agents_url, opts.heartbeat_s, Recorder())
    pusher = Pusher(fleet, task_id, trainer, opts.push_rate)
    meter = CpuMeter(pid)
    steps: list[dict[str, Any]] = []
    t0 = time.monotonic()
    background = [asyncio.ensure_future(f) for f in (
        fleet.heartbeats(), pusher.run(), dashboard(fleet, admin_token, opts.dashboard_every_s))]
    try:
        for n in opts.steps:
            left = opts.budget_s - (time.monotonic() - t0)
            pusher.paused = True
            enroll_rate = await fleet.grow(n, max(left, 1.0))
            if len(fleet.learners) < n:
                steps.append({"learners": n, "enrolled": len(fleet.learners),
                              "failed": f"only {len(fleet.learners)} of {n} learners enrolled "
                                        f"within the run's budget ({opts.budget_s:.0f} s; "
                                        f"{fleet.enroll_failures} refused or failed "
                                        "requests)"})
                print(steps[-1]["failed"], flush=True)
                break
            join_s = await wait_joined(trainer, n, opts.join_timeout_s)
            pusher.paused = False
            spy = profile(pid, opts, n)
            step = await measure(fleet, pusher, meter, opts.window_s)
            if spy is not None:
                await asyncio.to_thread(spy.wait)
            step.update(learners=n, enroll_per_s=enroll_rate, join_s=join_s,
                        enroll_failures=fleet.enroll_failures,
                        joined=trainer.calls.get("join_async", 0),
                        offered_heartbeats_per_s=n / opts.heartbeat_s,
                        offered_pushes_per_s=opts.push_rate)
            steps.append(step)
            print(one_line(step), flush=True)
    finally:
        for b in background:
            b.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await fleet.close()
    return steps


def profile(pid: int, opts: LiveOptions, n: int) -> subprocess.Popen[bytes] | None:
    """With `profile_dir`: py-spy samples the orchestrator through the coming window and
    writes collapsed stacks to `<profile_dir>/profile-<n>.txt` (py-spy is in the dev extra)."""
    if opts.profile_dir is None:
        return None
    opts.profile_dir.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--duration", str(int(opts.window_s)),
         "--format", "raw", "--nonblocking", "--threads", "--rate", "50",
         "--output", str(opts.profile_dir / f"profile-{n}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_ms_per_request(step: dict[str, Any]) -> float:
    """Orchestrator CPU milliseconds per request answered in a window: what a loaded host
    changes least (latency there is mostly waiting for a core), and what bounds throughput
    on dedicated cores (1000 / this = requests/s per fully used core)."""
    answered = sum(r["count"] for r in step["routes"].values())
    return float(10 * step["cpu_percent"] * step["window_s"] / max(answered, 1))


def one_line(step: dict[str, Any]) -> str:
    """A step as one printed line."""
    routes = step["routes"]
    parts = [f"N={step['learners']}", f"cpu {step['cpu_percent']:.0f}%",
             f"{cpu_ms_per_request(step):.1f} cpu-ms/request",
             f"rss {step['rss_mb']:.0f} MB", f"lag p99 {step['generator_lag_p99_ms']:.0f} ms"]
    for route, r in routes.items():
        parts.append(f"{route} {r['per_s']:.1f}/s p50 {r['p50_ms']:.0f} p99 {r['p99_ms']:.0f} "
                     f"(sent {r['sent_p99_ms']:.0f}) ms"
                     + (f" err {sum(r['errors'].values())}" if r["errors"] else ""))
    return "; ".join(parts)


def run_live(opts: LiveOptions, work: Path) -> dict[str, Any]:
    """Start the orchestrator and the fake agents, drive the steps, stop everything."""
    from orchestrator.local.fleet import LocalFleet

    db_url, drop = (opts.db_url, None) if opts.db_url is None else fresh_database(opts.db_url)
    trainer = FakeTrainer(delay_s=opts.train_delay_s)
    server, agents_url = start_fake_agents(trainer)
    orch = LocalFleet(work / "orchestrator", heartbeat_s=opts.heartbeat_s, db_url=db_url)
    try:
        orch.start_orchestrator()
        assert orch.orchestrator is not None
        steps = asyncio.run(drive(opts, orch.url, orch.join_token, orch.admin_token,
                                  orch.orchestrator.popen.pid, trainer, agents_url))
    finally:
        orch.stop()
        server.stop()
        if drop is not None:
            drop()
    return {"db": "sqlite" if opts.db_url is None else "postgresql", "steps": steps,
            "rpc_calls": dict(trainer.calls)}


# -- a sync round's orchestrator-side overhead, in-process ------------------------------------

def _sync_task(store: Any, learners: int) -> tuple[Any, Any]:
    """A DAB task of LeNet-5 on MNIST-5k in `store` (shards of 50 samples); (row, spec)."""
    from orchestrator.runs.taskdata import prepare_task, resolve_spec
    from plexus.spec import parse_spec

    spec = parse_spec({**LENET_TASK, "partition": {"kind": "iid", "shard_size": 50},
                       "mode": "sync", "sync": {"allocator": "dab", "deadline_s": 20.0,
                                                "rounds": 1}})
    spec, data = resolve_spec(spec)
    row = store.create_task(spec.to_dict(),
                            lambda tid, _d: prepare_task(spec, tid, store.layout, data),
                            time.time())
    return row, spec


def sync_round(work: Path, learners: int, trainer: FakeTrainer) -> dict[str, float]:
    """Seconds of one sync round's orchestrator-side work with `learners` fake answers."""
    import torch

    from orchestrator.allocation import get_allocator
    from orchestrator.allocation.base import LearnerReport, assign_shard_ids
    from orchestrator.metrics import Metrics
    from orchestrator.runs.gateway import Reply
    from orchestrator.runs.rounds import close_round
    from orchestrator.runs.sync import _context, cap_samples
    from orchestrator.runs.taskdata import load_test_split, read_state
    from orchestrator.store import Store

    store = Store(work / f"sync-{learners}")
    task, spec = _sync_task(store, learners)
    rows = [store.enroll(f"s{i}", {}, None, time.time()) for i in range(learners)]
    store.set_state(task.id, "running", None, time.time())
    state = read_state(store.layout.model(task.id, 0))
    test = load_test_split(store.layout, task.id)
    trainer.params = {k: v.numpy() for k, v in state.items()}
    rng = np.random.default_rng(0)
    reports = [LearnerReport(str(r.id), a_k=1 + i % 3) for i, r in enumerate(rows)]
    t0 = time.perf_counter()
    counts = get_allocator("dab").allocate(reports, _context(task, spec))
    shard_ids = assign_shard_ids(counts, task.num_shards, seed=0, round_index=0)
    t1 = time.perf_counter()
    replies = [Reply(r, value={"params": {k: torch.from_numpy(v) for k, v in
                                          trainer.update(rng).items()},
                               "samples_trained": 50 * counts[str(r.id)]}) for r in rows]
    t2 = time.perf_counter()
    replies = cap_samples(replies, shard_ids, task.shard_samples, lambda code: None)
    closed = asyncio.run(close_round(store, Metrics(lambda: 0), task.id, spec, 0, state,
                                     replies, test, {}, keep_updates=True))
    t3 = time.perf_counter()
    store.record_round(task.id, {
        "index": 0, "started_at": time.time(), "allocation": counts, "shards": shard_ids,
        "samples": closed.samples, "left_out": closed.left_out, "plan_s": 0.0,
        "round_time_s": 0.0, "truancy": 0.0, "loss": closed.loss, "accuracy": closed.accuracy,
        "model_version": closed.version, "times": {}}, closed.model_path, time.time())
    t4 = time.perf_counter()
    store.close()
    return {"learners": learners, "allocation_s": t1 - t0, "close_round_s": t3 - t2,
            "commit_s": t4 - t3, "total_s": (t1 - t0) + (t4 - t2)}


def sync_curve(work: Path, sizes: list[int]) -> list[dict[str, float]]:
    """`sync_round` for each learner count, printed as it goes."""
    out = []
    for n in sizes:
        r = sync_round(work, n, FakeTrainer())
        print(f"sync round, {n} learners: {r['total_s']:.2f} s (allocation "
              f"{r['allocation_s']:.3f}, close_round {r['close_round_s']:.2f}, commit "
              f"{r['commit_s']:.3f})", flush=True)
        out.append(r)
    return out


# -- the cost of one learner's RPC stub, before and after the shared TLS context -------------

def stub_cost(count: int = 200) -> dict[str, Any]:
    """CPU ms and RSS KB per learner stub, side by side: what `rpc.Remote` built per stub
    before the fix (an `httpx.Client` and an `httpx.AsyncClient`, each with `verify=True`,
    each loading the CA bundle) and what `rpc.connect` builds now (its first `acall` client
    included)."""
    import psutil

    import rpc

    proc = psutil.Process()

    def per_stub(make: Callable[[], Any]) -> dict[str, float]:
        rss0, cpu0 = proc.memory_info().rss, sum(proc.cpu_times()[:2])
        keep = [make() for _ in range(count)]
        cpu1, rss1 = sum(proc.cpu_times()[:2]), proc.memory_info().rss
        del keep
        return {"cpu_ms": 1000 * (cpu1 - cpu0) / count, "rss_kb": (rss1 - rss0) / count / 1024}

    def old() -> Any:
        return httpx.Client(verify=True), httpx.AsyncClient(verify=True)

    async def new_stubs() -> dict[str, float]:
        def make() -> Any:
            remote = rpc.connect("http://127.0.0.1:9/l/x", duplex=True, timeout=1.0)
            return remote, remote._aclients.get()
        return per_stub(make)

    before = per_stub(old)
    after = asyncio.run(new_stubs())
    print(f"stub per learner: before {before['cpu_ms']:.1f} cpu-ms {before['rss_kb']:.0f} KB, "
          f"now {after['cpu_ms']:.2f} cpu-ms {after['rss_kb']:.0f} KB", flush=True)
    return {"before": before, "now": after,
            "cpu_ratio": before["cpu_ms"] / max(after["cpu_ms"], 1e-6)}


# -- 2 tiers vs flat: learners enrolled with k edge aggregators --------------------------------

@dataclass
class TierOptions:
    """Knobs of the tier comparison (learners, seconds)."""

    learners: int
    edges: list[int]  # 0 = flat: every learner enrolled with the orchestrator
    heartbeat_s: float
    window_s: float
    budget_s: float
    sync_learners: int
    probes: int = 10  # learners enrolled with the orchestrator itself, heartbeating every 1 s


def start_edge(orch: Any, i: int, work: Path, heartbeat_s: float
               ) -> tuple[subprocess.Popen[bytes], str, str]:
    """`plexus aggregator serve --upstream <orchestrator>`, enrolled upstream; (proc, url,
    its learners' join token)."""
    from orchestrator.local.fleet import _die_with_parent, free_port

    port, token = free_port(), secrets.token_urlsafe(16)
    data = work / f"edge-{i}"
    data.mkdir(parents=True, exist_ok=True)
    log = open(data / "edge.log", "ab")  # noqa: SIM115 - kept open for the process's life
    proc = subprocess.Popen(
        [sys.executable, "-m", "plexus.cli", "aggregator", "serve", "--upstream", orch.url,
         "--port", str(port), "--data-dir", str(data), "--join-token", token,
         "--name", f"edge-{i}", "--heartbeat-s", str(heartbeat_s)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_die_with_parent,  # no edge outlives a killed benchmark
        env={**os.environ, "PLEXUS_UPSTREAM_JOIN_TOKEN": orch.join_token,
             "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 90.0
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"edge aggregator {i} exited: see {data / 'edge.log'}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).json().get("enrolled"):
                return proc, url, token
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"edge aggregator {i} did not enrol upstream within 90 s")


async def tier_windows(opts: TierOptions, k: int, orch: Any, edges: list[tuple[Any, str, str]],
                       agents_url: str) -> dict[str, Any]:
    """Enrol the fleet (through the edges, or flat), then a window of heartbeats; latency per
    route at the orchestrator and at the edges, CPU and RSS of each process."""
    rec = Recorder()
    top = Fleet(orch.url, orch.join_token, agents_url, 1.0, rec, prefix="probe")
    fleets = ([Fleet(url, token, agents_url, opts.heartbeat_s, rec, prefix=f"e{i}",
                     where="@edge") for i, (_p, url, token) in enumerate(edges)] if k else
              [Fleet(orch.url, orch.join_token, agents_url, opts.heartbeat_s, rec)])
    meters = {"orchestrator": CpuMeter(orch.orchestrator.popen.pid),
              **{f"edge-{i}": CpuMeter(p.pid) for i, (p, _u, _t) in enumerate(edges)}}

    def usage() -> dict[str, dict[str, float]]:
        return {name: m.result() for name, m in meters.items()}

    async def sampling() -> None:
        while True:
            for m in meters.values():
                m.sample()
            await asyncio.sleep(0.5)

    out: dict[str, Any] = {"edges": k, "learners": opts.learners}
    sampler = asyncio.ensure_future(sampling())
    background: list[asyncio.Future[Any]] = []
    try:
        out["enrolment"] = await tier_enrol(opts, top, fleets, meters)
        enrolled = out["enrolment"]["enrolled"]
        print(f"tiers k={k}: {enrolled} enrolled in {out['enrolment']['seconds']:.0f} s",
              flush=True)
        for f in [top, *fleets]:  # heartbeats start now, each learner at a random phase:
            f.rephase()  # not a backlog of every beat due since its enrolment
        background = [asyncio.ensure_future(f.heartbeats()) for f in [top, *fleets]]
        background.append(asyncio.ensure_future(
            dashboard(top, orch.admin_token, 5.0)))
        await asyncio.sleep(min(opts.heartbeat_s, 10.0))  # every phase under way
        rec.open()
        for m in meters.values():
            m.start()
        await asyncio.sleep(opts.window_s)
        rec.end = time.monotonic()
        window = rec.end - rec.start
        await asyncio.sleep(3.0)
        out["window"] = {"seconds": window, "routes": rec.summary(window), "usage": usage(),
                         "offered_heartbeats_per_s": enrolled / opts.heartbeat_s}
        line = "; ".join(f"{r} p50 {v['p50_ms']:.0f} p99 {v['p99_ms']:.0f} ms"
                         for r, v in out["window"]["routes"].items())
        print(f"tiers k={k}: {line}; orchestrator cpu "
              f"{out['window']['usage']['orchestrator']['cpu_percent']:.0f}%", flush=True)
    finally:
        for b in [*background, sampler]:
            b.cancel()
        await asyncio.gather(*background, sampler, return_exceptions=True)
        for f in [top, *fleets]:
            await f.close()
    return out


async def tier_enrol(opts: TierOptions, top: Fleet, fleets: list[Fleet],
                     meters: dict[str, CpuMeter]) -> dict[str, Any]:
    """Enrol the probes with the orchestrator and the fleet (split evenly over `fleets`);
    the enrolment window's figures."""
    rec = top.rec
    rec.open()
    for m in meters.values():
        m.start()
    t0 = time.monotonic()
    share = [opts.learners // len(fleets) + (i < opts.learners % len(fleets))
             for i in range(len(fleets))]
    await asyncio.gather(top.grow(opts.probes, opts.budget_s),
                         *[f.grow(n, opts.budget_s) for f, n in zip(fleets, share, strict=True)])
    seconds = time.monotonic() - t0
    rec.end = time.monotonic()
    enrolled = sum(len(f.learners) for f in fleets)
    return {"seconds": seconds, "enrolled": enrolled, "per_s": enrolled / seconds,
            "routes": rec.summary(seconds),
            "usage": {name: m.result() for name, m in meters.items()}}


def edge_round(work: Path, children: int, trainer: FakeTrainer) -> dict[str, float]:
    """Seconds of an edge aggregator's own work in one sync round with `children` answers,
    on its real code paths: check each update (`validate_state`), keep it on disk
    (`write_atomic`, fsync), FedAvg of the subtree (`hierarchy.combine.combine`)."""
    import torch

    from orchestrator.hierarchy.combine import combine
    from orchestrator.store import write_atomic
    from plexus.tensors import encode_state, validate_state

    rng = np.random.default_rng(0)
    reference = {k: torch.from_numpy(v) for k, v in trainer.params.items()}
    answers = [{k: torch.from_numpy(v) for k, v in trainer.update(rng).items()}
               for _ in range(children)]
    where = work / f"edge-round-{children}-{secrets.token_hex(3)}"
    t0 = time.perf_counter()
    updates: dict[str, tuple[Any, int]] = {}
    for i, params in enumerate(answers):
        validate_state(params, reference)
        write_atomic(where / f"c{i}.safetensors", encode_state(params, {"samples": "50"}))
        updates[f"c{i}"] = (params, 50)
    part = combine(updates)
    t1 = time.perf_counter()
    assert part.state is not None
    return {"children": children, "seconds": t1 - t0}


def tier_sync(work: Path, opts: TierOptions) -> list[dict[str, Any]]:
    """A sync round's orchestrator-side overhead with L learners flat vs k edges (the
    orchestrator then sees k learners), plus one edge's own work for its L/k children."""
    out = []
    for k in opts.edges:
        trainer = FakeTrainer()
        top = sync_round(work, k if k else opts.sync_learners, trainer)
        row: dict[str, Any] = {"edges": k, "learners": opts.sync_learners,
                               "orchestrator_s": top["total_s"], "orchestrator": top}
        if k:
            row["edge"] = edge_round(work, -(-opts.sync_learners // k), trainer)
        out.append(row)
        print(f"tiers k={k}: sync round of {opts.sync_learners} learners: orchestrator "
              f"{top['total_s']:.2f} s" + (f", each edge {row['edge']['seconds']:.2f} s"
                                          if k else ""), flush=True)
    return out


def run_tiers(opts: TierOptions, work: Path) -> dict[str, Any]:
    """Flat and k = 2, 4 edge aggregators side by side, each on a fresh orchestrator."""
    from orchestrator.local.fleet import LocalFleet

    trainer = FakeTrainer()
    server, agents_url = start_fake_agents(trainer)
    cases = []
    try:
        for k in opts.edges:
            orch = LocalFleet(work / f"tiers-{k}" / "orchestrator", heartbeat_s=opts.heartbeat_s)
            edges: list[tuple[Any, str, str]] = []
            try:
                orch.start_orchestrator()
                edges = [start_edge(orch, i, work / f"tiers-{k}", opts.heartbeat_s)
                         for i in range(k)]
                cases.append(asyncio.run(tier_windows(opts, k, orch, edges, agents_url)))
            finally:
                for proc, _u, _t in edges:
                    proc.terminate()
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                orch.stop()
    finally:
        server.stop()
    return {"cases": cases, "sync": tier_sync(work, opts)}


def plot_tiers(tiers: dict[str, Any], path: Path) -> None:
    """p99 per route at the orchestrator and the edges, and CPU, per k (0 = flat)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.5))
    cases = tiers["cases"]
    labels = ["flat" if c["edges"] == 0 else f"k={c['edges']}" for c in cases]
    routes = sorted({r for c in cases for part in ("enrolment", "window")
                     for r in c.get(part, {}).get("routes", {})})
    width = 0.8 / max(len(routes), 1)
    for j, route in enumerate(routes):
        part = "enrolment" if route.startswith("enroll") else "window"
        ys = [c[part]["routes"].get(route, {}).get("p99_ms", np.nan) for c in cases]
        ax[0].bar(np.arange(len(cases)) + j * width, ys, width, label=route)
    ax[0].set_xticks(np.arange(len(cases)) + 0.4 - width / 2, labels)
    ax[0].set_yscale("log")
    ax[0].set_title(f"p99 (ms), {tiers['cases'][0]['learners']} learners")
    ax[0].legend(fontsize=7)
    for c, lab in zip(cases, labels, strict=True):
        usage = c["window"]["usage"]
        ax[1].bar(lab, usage["orchestrator"]["cpu_percent"], color="C0")
        edges = [v["cpu_percent"] for n, v in usage.items() if n != "orchestrator"]
        if edges:
            ax[1].bar(lab, sum(edges), bottom=usage["orchestrator"]["cpu_percent"], color="C1")
    ax[1].set_title("CPU % in the heartbeat window (blue: orchestrator, orange: edges)")
    sync = tiers["sync"]
    ax[2].bar([("flat" if r["edges"] == 0 else f"k={r['edges']}") for r in sync],
              [r["orchestrator_s"] for r in sync], label="orchestrator")
    ax[2].bar([("flat" if r["edges"] == 0 else f"k={r['edges']}") for r in sync],
              [r.get("edge", {}).get("seconds", 0.0) for r in sync],
              bottom=[r["orchestrator_s"] for r in sync], label="one edge (in parallel)")
    ax[2].set_title(f"sync round overhead (s), {sync[0]['learners'] if sync else 0} learners")
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- analysis, plot, command line --------------------------------------------------------------

def knee(steps: list[dict[str, Any]], p99_goal_ms: float) -> dict[str, Any]:
    """The first step that misses: a route's p99 over the goal, errors above 1 %, or an
    achieved heartbeat or push rate under 90 % of the offered one. None if every step held."""
    for step in steps:
        if "failed" in step:
            return {"learners": step["learners"], "why": [step["failed"]]}
        why = []
        for route, r in step["routes"].items():
            if r["p99_ms"] > p99_goal_ms:
                why.append(f"{route} p99 {r['p99_ms']:.0f} ms > {p99_goal_ms:.0f} ms")
            if sum(r["errors"].values()) > 0.01 * r["count"]:
                why.append(f"{route} errors {r['errors']}")
        hb = step["routes"].get("heartbeat", {}).get("per_s", 0.0)
        if hb < 0.9 * step["offered_heartbeats_per_s"]:
            why.append(f"heartbeats {hb:.0f}/s of {step['offered_heartbeats_per_s']:.0f}/s")
        if step["pushes_accepted_per_s"] < 0.9 * step["offered_pushes_per_s"]:
            why.append(f"pushes {step['pushes_accepted_per_s']:.1f}/s of "
                       f"{step['offered_pushes_per_s']:.0f}/s")
        if why:
            return {"learners": step["learners"], "why": why}
    return {"learners": None, "why": []}


def _curve_axes(ax: Any, steps: list[dict[str, Any]], label: str, style: str,
                goal_ms: float) -> None:
    steps = [s for s in steps if "routes" in s]  # a step that failed to enrol has no figures
    ns = [s["learners"] for s in steps]
    for route in ROUTES:
        ys = [s["routes"].get(route, {}).get("p99_ms", np.nan) for s in steps]
        ax[0].plot(ns, ys, style, marker="o", label=f"{route} ({label})")
    ax[0].axhline(goal_ms, color="grey", lw=0.8)
    ax[1].plot(ns, [s["routes"].get("heartbeat", {}).get("per_s", 0) for s in steps], style,
               marker="o", label=f"heartbeats/s ({label})")
    ax[1].plot(ns, [s["pushes_accepted_per_s"] for s in steps], style, marker="s",
               label=f"pushes/s ({label})")
    ax[2].plot(ns, [s["cpu_percent"] for s in steps], style, marker="o", label=f"CPU % ({label})")
    ax[2].plot(ns, [s["rss_mb"] for s in steps], style, marker="s", label=f"RSS MB ({label})")


def plot(result: dict[str, Any], baseline: dict[str, Any] | None, path: Path) -> None:
    """p99 per route, achieved rates, CPU / RSS vs learners; sync overhead vs learners."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = [axes[0][0], axes[0][1], axes[1][0]]
    goal = float(result["options"]["p99_goal_ms"])
    _curve_axes(ax, result["live"]["steps"], "this run", "-", goal)
    if baseline is not None:
        _curve_axes(ax, baseline["live"]["steps"], "baseline", ":", goal)
    titles = ("p99 latency per route (ms)", "achieved rates (/s)", "orchestrator CPU and RSS")
    for a, title in zip(ax, titles, strict=True):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("emulated learners")
        a.set_title(title)
        a.legend(fontsize=6)
    sync = result["sync"]
    s = axes[1][1]
    if not sync:
        s.set_axis_off()
    s.plot([r["learners"] for r in sync], [r["total_s"] for r in sync], "-o", label="total")
    s.plot([r["learners"] for r in sync], [r["close_round_s"] for r in sync], "-s",
           label="close_round (check, FedAvg, evaluate, write)")
    s.axhline(2.0, color="grey", lw=0.8)
    s.set_xlabel("learners answering")
    s.set_ylabel("seconds")
    s.set_title("sync round orchestrator-side overhead")
    s.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smoke test: 40 and 120 learners")
    p.add_argument("--steps", type=int, nargs="+", default=None,
                   help="learner counts (default 100 1000 5000 10000)")
    p.add_argument("--heartbeat-s", type=float, default=None, help="heartbeat interval (30)")
    p.add_argument("--push-rate", type=float, default=None, help="pull+push pairs/s (50)")
    p.add_argument("--window-s", type=float, default=None, help="measurement window (35)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop growing the fleet after this many seconds (330; quick 120)")
    p.add_argument("--p99-goal-ms", type=float, default=250.0)
    p.add_argument("--sync-sizes", type=int, nargs="+", default=None,
                   help="learner counts of the sync overhead (default 100 250 500 1000)")
    p.add_argument("--db-url", default=os.environ.get("PLEXUS_TEST_DB_URL") or None,
                   help="PostgreSQL server URL: run on a fresh database there (default "
                        "$PLEXUS_TEST_DB_URL; unset: SQLite)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="an earlier capacity JSON to plot beside this run and compare with")
    p.add_argument("--name", default="capacity", help="file name stem of the JSON and PNG")
    p.add_argument("--no-sync", action="store_true", help="skip the sync overhead")
    p.add_argument("--tiers", type=int, nargs="+", default=None, metavar="K",
                   help="instead of the curve: 2 tiers vs flat, learners enrolled with K edge "
                        "aggregators (0 = flat), e.g. --tiers 0 2 4")
    p.add_argument("--tier-learners", type=int, default=None,
                   help="learners of the tier comparison (default 10000; quick 120)")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the orchestrator in every window (collapsed stacks beside "
                        "the JSON)")
    add_out_dir(p)
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> LiveOptions:
    """The live options, `--quick` giving small defaults."""
    quick = bool(args.quick)
    return LiveOptions(
        steps=args.steps or ([40, 120] if quick else [100, 1000, 5000, 10000]),
        heartbeat_s=args.heartbeat_s or (5.0 if quick else 30.0),
        push_rate=args.push_rate or (5.0 if quick else 50.0),
        window_s=args.window_s or (6.0 if quick else 35.0),
        join_timeout_s=30.0 if quick else 60.0, dashboard_every_s=5.0,
        budget_s=args.budget_s or (120.0 if quick else 330.0),
        db_url=args.db_url,
        profile_dir=results_dir(args) / f"{args.name}-profile" if args.profile else None)


def compare(result: dict[str, Any], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """Per learner count present in both: baseline p99 / this run's p99, per route."""
    before = {s["learners"]: s for s in baseline["live"]["steps"] if "routes" in s}
    out = []
    for step in result["live"]["steps"]:
        old = before.get(step["learners"])
        if old is None or "routes" not in step:
            continue
        ratios = {route: old["routes"][route]["p99_ms"] / max(r["p99_ms"], 1e-9)
                  for route, r in step["routes"].items() if route in old["routes"]}
        out.append({"learners": step["learners"], "p99_speedup": ratios,
                    "cpu_ms_per_request": [cpu_ms_per_request(old), cpu_ms_per_request(step)],
                    "rss_mb": [old["rss_mb"], step["rss_mb"]]})
    return out


def main_tiers(args: argparse.Namespace) -> int:
    """`--tiers`: the 2-tier vs flat comparison, JSON + PNG under `<name>.json`."""
    quick = bool(args.quick)
    opts = TierOptions(
        learners=args.tier_learners or (120 if quick else 10000), edges=args.tiers,
        heartbeat_s=args.heartbeat_s or (5.0 if quick else 30.0),
        window_s=args.window_s or (6.0 if quick else 30.0),
        budget_s=args.budget_s or (120.0 if quick else 330.0),
        sync_learners=(args.sync_sizes or [60 if quick else 1000])[-1])
    out = results_dir(args)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="plexus-tiers-") as tmp:
        tiers = run_tiers(opts, Path(tmp))
    result = {"benchmark": "capacity-tiers", "quick": quick, "argv": sys.argv[1:],
              "options": opts.__dict__, "tiers": tiers,
              "machine": {"cpus": os.cpu_count(), "load_1m_at_end": os.getloadavg()[0]},
              "seconds": time.monotonic() - t0}
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    plot_tiers(tiers, out / f"{args.name}.png")
    print(f"tiers: {out / args.name}.json", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tiers:
        return main_tiers(args)
    opts = options(args)
    out = results_dir(args)
    t0 = time.monotonic()
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    result: dict[str, Any] = {
        "benchmark": "capacity", "quick": bool(args.quick), "argv": sys.argv[1:],
        "options": {**opts.__dict__, "profile_dir": str(opts.profile_dir),
                    "p99_goal_ms": args.p99_goal_ms}, "sync": [], "stub_cost": stub_cost()}
    with tempfile.TemporaryDirectory(prefix="plexus-capacity-") as tmp:
        result["live"] = run_live(opts, Path(tmp))
        result["knee"] = knee(result["live"]["steps"], args.p99_goal_ms)
        if baseline is not None:
            result["versus_baseline"] = compare(result, baseline)
        write(result, baseline, out, args.name, t0)  # the live curve is kept whatever follows
        sizes = args.sync_sizes or ([20, 60] if args.quick else [100, 250, 500, 1000])
        result["sync"] = [] if args.no_sync else sync_curve(Path(tmp), sizes)
    write(result, baseline, out, args.name, t0)
    sync = result["sync"]
    measured = [s for s in result["live"]["steps"] if "routes" in s]
    last: dict[str, Any] = measured[-1] if measured else {"learners": 0, "routes": {}}
    worst = max((r["p99_ms"] for r in last["routes"].values()), default=0.0)
    print(f"capacity: {last['learners']} learners, worst p99 {worst:.0f} ms, knee at "
          f"{result['knee']['learners']}, sync at {sync[-1]['learners'] if sync else 0} "
          f"learners {sync[-1]['total_s'] if sync else 0:.2f} s; {out / args.name}.json")
    return 0


def write(result: dict[str, Any], baseline: dict[str, Any] | None, out: Path, name: str,
          t0: float) -> None:
    """The JSON and the PNG of what has been measured so far."""
    result["machine"] = {"cpus": os.cpu_count(), "load_1m_at_end": os.getloadavg()[0]}
    result["seconds"] = time.monotonic() - t0
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    plot(result, baseline, out / f"{name}.png")


if __name__ == "__main__":
    raise SystemExit(main())
