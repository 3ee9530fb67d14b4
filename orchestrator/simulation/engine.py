"""The virtual-clock driver: an event queue feeding simulated clients' events to a core.

Time is virtual; everything else is real. Each simulated client follows SPIN's client algorithm
(alg. 1): samples arrive one at a time (Poisson, λ samples/s); once it holds at least D it
pulls; it downloads the model (model bytes / bandwidth), trains E epochs over everything it
holds (E·|D_k| / compute seconds, with real SGD on its real samples), uploads, and a sample
that arrived meanwhile triggers the next pull. FedBuff and PORT clients do the same, except that
their pull only tells the server they hold unused data and they train when the server picks
them. The aggregator core is the very object the live service uses.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from orchestrator.aggregation import (
    Aggregated,
    AsyncAggregator,
    Decision,
    Dispatch,
    StopTraining,
    build_aggregator,
)
from orchestrator.aggregation.inversion import Net
from orchestrator.aggregation.robust import RobustRule
from orchestrator.simulation.adversary import Attackers
from orchestrator.simulation.config import SimulationConfig
from orchestrator.simulation.population import (
    DeviceProfile,
    draw_devices,
    poisson_arrivals,
)
from orchestrator.simulation.population import dirichlet_partition as _partition
from orchestrator.simulation.trainer import Job, TrainBackend, train_jobs

_ARRIVAL, _PUSH, _TICK = 0, 1, 2


@dataclass
class SimClient:
    """One simulated client and where it stands."""

    cid: str
    index: int
    device: DeviceProfile
    stream: np.ndarray = field(repr=False)  # sample indices, in arrival order
    arrivals: np.ndarray = field(repr=False)  # arrival times (s) of stream[:len(arrivals)]
    held: int = 0
    trained_upto: int = 0
    busy: bool = False
    job: Job | None = None
    base_version: int = -1
    train_start: float = 0.0
    train_end: float = 0.0
    token: int = 0
    trainings: int = 0


@dataclass
class World:
    """What every run over the same config and seed shares: data, clients, pretrained model.

    Building it once and handing it to several :class:`Simulation` runs gives SPIN, FedBuff
    and PORT the same arrival traces, device profiles, partitions and starting model.
    """

    config: SimulationConfig
    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    initial_state: dict[str, torch.Tensor]
    initial_accuracy: float
    devices: list[DeviceProfile]
    streams: list[np.ndarray]
    arrivals: list[np.ndarray]
    model_bytes: int

    def mean_round_time(self) -> float:
        """Mean seconds a client round takes (download + E·|D| / compute + upload) at the pull
        threshold D, over all clients: the reference for π (SPIN V-B4: π ≈ 0.6 × this)."""
        cfg = self.config
        d = cfg.arrivals.pull_threshold
        times = [
            2 * self.model_bytes / dev.bandwidth + cfg.training.epochs * d / dev.compute
            for dev in self.devices
        ]
        return float(np.mean(times))


def _seed_for(*parts: int) -> int:
    digest = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _deployed_model(
    config: SimulationConfig,
    ds: Any,
    pre_idx: np.ndarray,
    n_pre: int,
    pretrained: dict[str, torch.Tensor] | None,
) -> torch.nn.Module:
    """The model every client starts from: `pretrained`, or trained on the pretraining split."""
    from plexus.models import build_model
    from plexus.training import train

    torch.manual_seed(config.seed)
    model = build_model(config.model, ds.input_shape, ds.num_classes)
    if pretrained is not None:
        model.load_state_dict(pretrained)
    elif n_pre > 0 and config.pretrain.epochs > 0:
        train(
            model,
            ds.train_x[pre_idx],
            ds.train_y[pre_idx],
            passes=config.pretrain.epochs,
            batch_size=config.pretrain.batch_size,
            optimizer=config.pretrain.optimizer,
            lr=config.pretrain.lr,
            seed=config.seed,
        )
    return model


def build_world(
    config: SimulationConfig, pretrained: dict[str, torch.Tensor] | None = None
) -> World:
    """Load the data, pretrain the deployed model, draw devices, partitions and arrivals.

    ``pretrained`` skips pretraining and deploys that state instead (worlds that differ only
    in λ or devices can then share one deployed model).
    """
    from plexus.datasets import load_dataset
    from plexus.training import evaluate

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    ds = load_dataset(config.dataset, seed=config.seed)
    seeds = np.random.SeedSequence(config.seed).spawn(4)
    rng_split, rng_dev, rng_arr = (np.random.default_rng(s) for s in seeds[:3])
    order = rng_split.permutation(len(ds.train_y))
    n_pre = min(config.pretrain.samples, len(order) - config.clients)
    pre_idx, pool_idx = order[:n_pre], order[n_pre:]

    model = _deployed_model(config, ds, pre_idx, n_pre, pretrained)
    initial = {n: t.detach().clone() for n, t in model.state_dict().items()}
    n_eval = config.eval_samples or len(ds.test_y)
    eval_x = torch.from_numpy(ds.test_x[:n_eval])
    eval_y = torch.from_numpy(ds.test_y[:n_eval])
    _, acc0 = evaluate(model, eval_x, eval_y)

    pool_y = ds.train_y[pool_idx]
    parts = _partition(pool_y, config.clients, config.arrivals.alpha, rng_split)
    streams = [pool_idx[p] for p in parts]
    devices = draw_devices(config.devices, config.clients, rng_dev)
    arrivals = [
        poisson_arrivals(len(s), config.arrivals.rate, config.stop.max_time_s, rng_arr)
        for s in streams
    ]
    model_bytes = sum(t.numel() * t.element_size() for t in initial.values())
    return World(
        config=config,
        train_x=torch.from_numpy(ds.train_x),
        train_y=torch.from_numpy(ds.train_y),
        eval_x=eval_x,
        eval_y=eval_y,
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        initial_state=initial,
        initial_accuracy=float(acc0),
        devices=devices,
        streams=streams,
        arrivals=arrivals,
        model_bytes=model_bytes,
    )


def make_core(config: SimulationConfig, initial_state: dict[str, torch.Tensor],
              net: Net | None = None) -> AsyncAggregator:
    """The aggregator core a config names, with its parameters (each aggregator takes its own).

    ``net`` (model, input shape, classes) is for ``staleness: inversion``, which then inverts
    inline (``workers = 0``), with the clients' local training settings, so runs repeat.
    """
    a = config.aggregator
    settings = a.model_dump(
        exclude={"name", "staleness", "poly_a", "dcasgd_c", "aggregation", "server_lr"})
    settings["seed"] = _seed_for(config.seed, 7)  # FedBuff / PORT draws
    params: dict[str, float] = {"a": a.poly_a, "c": a.dcasgd_c}
    if a.staleness == "inversion":
        t = config.training
        params.update(local_lr=t.lr, local_epochs=t.epochs, batch_size=t.batch_size, workers=0,
                      seed=_seed_for(config.seed, 8))
    core = build_aggregator(a.name, initial_state, staleness=a.staleness,
                            staleness_params=params, net=net,
                            rule=RobustRule.from_spec(a.aggregation), **settings)
    core.server_lr = a.server_lr
    return core


class Simulation:
    """One run of one aggregator over a :class:`World`, on a virtual clock."""

    def __init__(
        self,
        world: World,
        config: SimulationConfig | None = None,
        trainer: TrainBackend | None = None,
    ) -> None:
        from plexus.models import build_model

        self.world = world
        self.config = config or world.config
        # Where local training runs (this process by default, or a Ray cluster); the event
        # loop, and so the order of events, stays here either way.
        self.trainer: TrainBackend = trainer or train_jobs
        self.model = build_model(self.config.model, world.input_shape, world.num_classes)
        net = Net(self.model, world.input_shape, world.num_classes)
        self.core = make_core(self.config, world.initial_state, net)
        self.eval_model = build_model(self.config.model, world.input_shape, world.num_classes)
        self.clients = [
            SimClient(f"c{i}", i, world.devices[i], world.streams[i], world.arrivals[i])
            for i in range(self.config.clients)
        ]
        self._by_id = {c.cid: c for c in self.clients}
        # Experiments only: malicious clients (config `adversary`). Label flippers train on a
        # second copy of the data whose labels are flipped (indices offset by its length).
        self.attackers = Attackers(self.config.adversary, self.config.clients,
                                   _seed_for(self.config.seed, 11))
        self.train_x, self.train_y = world.train_x, world.train_y
        if self.attackers.flips_labels:
            from plexus.attacks import flip_labels

            self.train_x = torch.cat([world.train_x, world.train_x])
            self.train_y = torch.cat([world.train_y, flip_labels(world.train_y,
                                                                  world.num_classes)])
        for c in self.clients:
            self.core.register(c.cid)
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self._live = 0  # arrivals and pushes still in the queue
        self._tick_at: float | None = None
        self.trace: list[dict[str, Any]] = []
        self.accuracy = world.initial_accuracy
        self.time_to_target: float | None = None
        self.stops = 0
        self.now = 0.0
        self._next_eval = 0.0  # eval_interval_s: no score before this virtual time

    # -- event queue -------------------------------------------------------------------------

    def _schedule(self, t: float, kind: int, client: int = -1, token: int = 0) -> None:
        heapq.heappush(self._heap, (t, self._seq, kind, client, token))
        self._seq += 1
        if kind != _TICK:
            self._live += 1

    def _schedule_tick(self, now: float) -> None:
        deadline = self.core.next_deadline()
        if deadline is not None and deadline != self._tick_at:
            self._tick_at = deadline
            self._schedule(max(deadline, now), _TICK)

    # -- the run -----------------------------------------------------------------------------

    def run(self, progress: Callable[[float], None] | None = None) -> dict[str, Any]:
        """Run to the stop condition; return the summary (the trace is in ``self.trace``).

        ``progress(t)`` is called with the virtual time (seconds) as the run advances.
        """
        cfg = self.config
        wall0 = time.perf_counter()
        target = cfg.stop.target_accuracy
        if target is not None and self.accuracy >= target:
            self.time_to_target = 0.0
        for c in self.clients:
            if len(c.arrivals):
                self._schedule(float(c.arrivals[0]), _ARRIVAL, c.index)
        self._schedule_tick(0.0)
        while self._heap:
            t, _, kind, ci, token = heapq.heappop(self._heap)
            if t > cfg.stop.max_time_s:
                break
            self.now = t
            self._event(t, kind, ci, token)
            self._schedule_tick(t)
            if progress is not None:
                progress(t)
            if self._done():
                break
            if self._live == 0 and not self.core.queue and not getattr(self.core, "holding", {}):
                break  # no sample will arrive and nothing is in flight or waiting
        return self.summary(time.perf_counter() - wall0)

    def _event(self, t: float, kind: int, ci: int, token: int) -> None:
        """Handle one event popped from the queue at virtual time t."""
        if kind != _TICK:
            self._live -= 1
        if kind == _ARRIVAL:
            self._arrival(t, self.clients[ci])
        elif kind == _PUSH:
            c = self.clients[ci]
            if token == c.token and c.busy:
                self._push(t, c)
        else:
            self._tick_at = None if self._tick_at == t else self._tick_at
            self._handle(t, self.core.tick(t))

    def _done(self) -> bool:
        cfg = self.config.stop
        if cfg.max_aggregations is not None and self.core.version >= cfg.max_aggregations:
            return True
        return cfg.stop_at_target and self.time_to_target is not None

    # -- client side (SPIN alg. 1) -----------------------------------------------------------

    def _arrival(self, t: float, c: SimClient) -> None:
        c.held += 1
        if c.held < len(c.arrivals):
            self._schedule(float(c.arrivals[c.held]), _ARRIVAL, c.index)
        self._maybe_pull(t, c)

    def _maybe_pull(self, t: float, c: SimClient) -> None:
        if c.busy or c.held < self.config.arrivals.pull_threshold or c.held <= c.trained_upto:
            return
        self.trace.append({"t": t, "event": "pull", "client": c.cid, "held": c.held})
        self._handle(t, self.core.pull(t, c.cid, c.held))

    def _start(self, t: float, d: Dispatch) -> None:
        c = self._by_id[d.client]
        cfg = self.config.training
        c.busy = True
        c.trainings += 1
        c.base_version = d.version
        c.trained_upto = c.held
        indices = c.stream[: c.held]
        if self.attackers.flips_labels and self.attackers.is_malicious(c.index):
            indices = indices + len(self.world.train_y)
        c.job = Job(
            base=d.state,
            indices=indices,
            epochs=cfg.epochs,
            seed=_seed_for(self.config.seed, c.index, c.trainings),
        )
        transfer = self.world.model_bytes / c.device.bandwidth
        c.train_start = t + transfer
        c.train_end = c.train_start + cfg.epochs * c.held / c.device.compute
        c.token += 1
        self._schedule(c.train_end + transfer, _PUSH, c.index, c.token)
        self.trace.append(
            {"t": t, "event": "dispatch", "client": c.cid, "version": d.version, "held": c.held}
        )

    def _stop(self, t: float, s: StopTraining) -> None:
        c = self._by_id[s.client]
        if not c.busy or c.job is None or t >= c.train_end:
            return  # already uploading: it sends the full update anyway
        cfg = self.config.training
        # Samples stepped by now; a client still downloading steps one batch first.
        done = math.floor(max(0.0, t - c.train_start) * c.device.compute)
        done = min(max(done, cfg.batch_size), cfg.epochs * len(c.job.indices))
        c.job.budget = done
        c.job.result = None
        c.train_end = c.train_start + done / c.device.compute
        c.token += 1
        transfer = self.world.model_bytes / c.device.bandwidth
        self._schedule(max(t, c.train_end) + transfer, _PUSH, c.index, c.token)
        self.stops += 1
        self.trace.append(
            {"t": t, "event": "stop", "client": c.cid, "staleness": s.staleness, "samples": done}
        )

    def _push(self, t: float, c: SimClient) -> None:
        job = c.job
        assert job is not None
        if job.result is None:
            self._train_pending()
        assert job.result is not None
        c.busy = False
        c.job = None
        n = len(job.indices)
        if job.budget is not None:
            n = max(1, min(n, job.samples_trained))
        n = self.attackers.samples(c.index, n)
        self.trace.append(
            {
                "t": t,
                "event": "push",
                "client": c.cid,
                "base_version": c.base_version,
                "server_version": self.core.version,
                "samples": n,
            }
        )
        self._handle(t, self.core.push(t, c.cid, job.result, c.base_version, n))
        self._maybe_pull(t, c)

    def _train_pending(self) -> None:
        # Every job in flight is already fixed, so train them all together now.
        pending = [c for c in self.clients if c.job is not None and c.job.result is None]
        jobs = [c.job for c in pending if c.job is not None]
        cfg = self.config.training
        self.trainer(
            self.model,
            jobs,
            self.train_x,
            self.train_y,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            chunk=self.config.chunk,
            batched=self.config.batched_training,
        )
        if self.attackers.malicious:
            trained = [(c.index, dict(j.base), j.result) for c, j in zip(pending, jobs, strict=True)
                       if j.result is not None]
            for index, state in self.attackers.apply(trained).items():
                job = self.clients[index].job
                assert job is not None
                job.result = state

    # -- server decisions --------------------------------------------------------------------

    def _handle(self, t: float, decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Dispatch):
                self._start(t, d)
            elif isinstance(d, StopTraining):
                self._stop(t, d)
            elif isinstance(d, Aggregated):
                self._aggregated(t, d)

    def _aggregated(self, t: float, rec: Aggregated) -> None:
        from plexus.training import evaluate

        event: dict[str, Any] = {
            "t": t,
            "event": "aggregate",
            "version": rec.version,
            "trigger": rec.trigger,
            "clients": list(rec.clients),
            "staleness": list(rec.staleness),
            "weights": [round(w, 6) for w in rec.weights],
        }
        interval = self.config.eval_interval_s
        if interval is not None and t < self._next_eval:
            self.trace.append(event)  # not scored (no "accuracy"): between two grid points
            return
        if interval is not None:
            self._next_eval = t + interval
        self.eval_model.load_state_dict(self.core.model)
        loss, acc = evaluate(self.eval_model, self.world.eval_x, self.world.eval_y)
        self.accuracy = float(acc)
        target = self.config.stop.target_accuracy
        if target is not None and self.time_to_target is None and acc >= target:
            self.time_to_target = t
        self.trace.append({**event, "accuracy": self.accuracy, "loss": float(loss)})

    # -- results -----------------------------------------------------------------------------

    def summary(self, wall_s: float) -> dict[str, Any]:
        """Headline numbers of the run: time to target (virtual s), accuracy, staleness."""
        stal = [s for r in self.core.aggregations for s in r.staleness]
        aggs = [e for e in self.trace if e["event"] == "aggregate" and "accuracy" in e]
        return {
            "aggregator": self.config.aggregator.name,
            "clients": self.config.clients,
            "seed": self.config.seed,
            "target_accuracy": self.config.stop.target_accuracy,
            "time_to_target_s": self.time_to_target,
            "initial_accuracy": self.world.initial_accuracy,
            "final_accuracy": self.accuracy,
            "best_accuracy": max([self.world.initial_accuracy] + [a["accuracy"] for a in aggs]),
            "virtual_time_s": self.now,
            "aggregations": self.core.version,
            "updates": len(stal),
            "mean_staleness": float(np.mean(stal)) if stal else 0.0,
            "max_staleness": max(stal) if stal else 0,
            "pulls": sum(1 for e in self.trace if e["event"] == "pull"),
            "trainings": sum(1 for e in self.trace if e["event"] == "dispatch"),
            "stops": self.stops,
            "skipped_selections": getattr(self.core, "skipped", 0),
            "rejected_updates": self.core.rejected,
            "rule": self.config.aggregator.aggregation.rule,
            "attack": self.config.adversary.attack,
            "malicious": sorted(self.attackers.malicious),
            "wall_s": wall_s,
        }

    def to_json(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The trace document: config, summary and every event in time order."""
        return {
            "config": self.config.model_dump(mode="json"),
            "summary": summary,
            "events": self.trace,
        }


def simulate(
    config: SimulationConfig,
    progress: Callable[[float], None] | None = None,
    trainer: TrainBackend | None = None,
) -> tuple[dict[str, Any], Simulation]:
    """Build the world for ``config``, run it once, return ``(summary, simulation)``.

    ``trainer`` is where local training runs (default: this process; see ``ray_backend``).
    """
    sim = Simulation(build_world(config), trainer=trainer)
    return sim.run(progress), sim
