"""Staleness handling for any asynchronous aggregator: none, polynomial, DC-ASGD, inversion.

The three options are the baselines of section 5 of ``001_2b8873d72fd74cfd.txt``: direct
aggregation, weighted aggregation whose weight decays with staleness, and first-order
compensation as in DC-ASGD (Zheng et al. 2017). Each handler answers two questions for an update
of staleness ``τ`` (versions):

* ``scale(τ)`` — a factor in (0, 1] that multiplies the update's FedAvg weight; whatever weight
  is taken away stays with the current global model (see ``base.py``);
* ``adjust(w_k, w_base, w_now)`` — a model to aggregate in place of ``w_k``.

Handlers that need to know who sent what (``inversion``, 001 §4) also get the push itself
(``received``, when it arrives) and the update with its client and base version at
aggregation (``adjust_update``); the default ``adjust_update`` is ``adjust``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

import torch

from orchestrator.aggregation.errors import UnknownAggregator
from orchestrator.aggregation.inversion import (
    InlineWorker,
    InversionCost,
    InversionWorker,
    Job,
    Net,
    Recipe,
    Recovered,
    invert,
    rec_size,
    recompute,
)

State = Mapping[str, torch.Tensor]


class StalenessHandler(ABC):
    """How an aggregator treats an update computed from an older global model."""

    name: str = ""

    @abstractmethod
    def scale(self, staleness: int) -> float:
        """Weight factor in (0, 1] for an update ``staleness`` versions old."""

    def adjust(self, update: State, base: State, current: State) -> State:
        """The model to aggregate for ``update`` trained from ``base`` while ``current`` holds."""
        return update

    def received(self, client: str, update: State, base: State, current: State, version: int,
                 base_version: int, n_samples: int) -> None:
        """A push from ``client`` (trained from ``base_version``) joined the buffer while the
        server holds ``version``; handlers that work ahead start here (never blocking)."""
        return None

    def adjust_update(self, client: str, update: State, base: State, current: State,
                      version: int, base_version: int) -> State:
        """The model to aggregate for ``client``'s update at aggregation (``adjust`` unless
        the handler needs the client)."""
        return self.adjust(update, base, current)

    def summary(self) -> dict[str, Any] | None:
        """What the handler did (shown in the task view), or None when there is nothing."""
        return None

    def close(self) -> None:
        """Stop background work (the live task ended)."""
        return None


class NoStaleness(StalenessHandler):
    """Direct aggregation: a stale update counts like a fresh one (001 §5, first baseline)."""

    name = "none"

    def scale(self, staleness: int) -> float:
        return 1.0


class PolynomialStaleness(StalenessHandler):
    """Weight ``(1 + τ)^(-a)``: the polynomial decay of FedAsync / FedBuff (001 §5, second).

    ``a`` (dimensionless, ≥ 0) sets how fast stale updates fade; 0.5 is FedBuff's choice.
    """

    name = "poly"

    def __init__(self, a: float = 0.5) -> None:
        if a < 0:
            raise ValueError(f"polynomial staleness exponent must be ≥ 0, got {a}")
        self.a = a

    def scale(self, staleness: int) -> float:
        return float((1.0 + max(0, staleness)) ** (-self.a))


class DCASGDStaleness(StalenessHandler):
    """First-order delay compensation of DC-ASGD (001 §5, third baseline).

    DC-ASGD corrects a gradient ``g`` computed at stale weights ``w_base`` for use at
    ``w_now`` by the Taylor term with the diagonal Hessian approximation ``λ g ⊙ g``:
    ``g̃ = g + λ g ⊙ g ⊙ (w_now − w_base)``. A client's update is ``Δ = w_k − w_base ≈ −η S g``
    after ``S`` local steps of rate ``η``; substituting ``g = −Δ/(ηS)`` gives

        Δ̃ = Δ − c · Δ ⊙ Δ ⊙ (w_now − w_base),   c = λ / (η S),

    and the compensated model ``w_now + Δ̃`` is what gets aggregated (the update is replayed
    on the current model rather than on the one it was computed from). ``c`` is the single
    parameter here (units 1/parameter). With ``τ = 0``, ``w_now = w_base`` and nothing changes.
    """

    name = "dcasgd"

    def __init__(self, c: float = 1.0) -> None:
        if c < 0:
            raise ValueError(f"DC-ASGD compensation strength c must be ≥ 0, got {c}")
        self.c = c

    def scale(self, staleness: int) -> float:
        return 1.0

    def adjust(self, update: State, base: State, current: State) -> State:
        out: dict[str, torch.Tensor] = {}
        for name, w_k in update.items():
            if not w_k.is_floating_point():
                out[name] = w_k
                continue
            delta = w_k - base[name]
            drift = current[name] - base[name]
            out[name] = current[name] + delta - self.c * delta * delta * drift
        return out


class InversionStaleness(StalenessHandler):
    """Gradient-inversion staleness handling (001 §4): make a stale update fresh.

    Decision and blend (this class; the compute is ``inversion.py``):

    * an update of staleness ``τ ≥ threshold`` versions starts an inversion when it arrives
      (``received``): D_rec (``fraction`` of the client's reported |D_k|, warm-started from the
      client's previous D_rec) is recovered from (w_base, w_k) and replayed on the current
      model, giving ŵ (§4.1–4.2); below the threshold the update is used as it came;
    * at aggregation ``α·ŵ + (1−α)·w_k`` is aggregated in place of ``w_k``; an inversion
      not finished by its deadline (``budget_s`` seconds after the push) or refused by a
      full queue leaves ``w_k`` as it came, so a push never waits longer than ``budget_s``;
    * switching back (§4.3): when a client's update trained from version ``v`` arrives and
      an estimate ŵ made at ``v`` for that client is kept, ``E1 = |Δ̂ − Δ|₁`` and
      ``E2 = |Δ_stale − Δ|₁`` are compared (Δ the true update at ``v``); once the mean E1
      over the last ``min_checks`` comparisons exceeds the mean E2, α falls linearly from 1
      to 0 over ``switch_span`` versions (the smooth switch) and inversion stops.

    ``local_lr``, ``local_epochs`` and ``batch_size`` describe the clients' local training
    (the replayed full-batch ``LocalUpdate``); ``iterations`` and ``inversion_lr`` the
    inversion's Adam loop; ``workers = 0`` runs inversions inline (the simulator: results do
    not depend on timing), 1 in a worker thread with a queue of ``queue_size`` jobs.
    ``net`` (a model of the task's architecture, its input shape and class count) is given by
    the builder; without it the handler aggregates updates as they come.
    """

    name = "inversion"

    def __init__(
        self,
        threshold: int = 1,
        fraction: float = 0.5,
        budget_s: float = 1.0,
        iterations: int = 50,
        inversion_lr: float = 0.1,
        switch_span: int = 10,
        min_checks: int = 5,
        local_lr: float = 0.01,
        local_epochs: int = 1,
        batch_size: int = 16,
        workers: int = 1,
        queue_size: int = 8,
        seed: int = 0,
        *,
        net: Net | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if threshold < 1 or switch_span < 1 or min_checks < 1 or iterations < 1:
            raise ValueError("inversion threshold, switch_span, min_checks and iterations "
                             f"must be ≥ 1, got {threshold}, {switch_span}, {min_checks}, "
                             f"{iterations}")
        if not 0 < fraction <= 4 or budget_s <= 0 or workers not in (0, 1):
            raise ValueError(f"inversion needs 0 < fraction ≤ 4 (got {fraction}), budget_s > 0 "
                             f"(got {budget_s}) and workers 0 or 1 (got {workers})")
        self.threshold, self.fraction, self.budget_s = int(threshold), fraction, budget_s
        self.iterations, self.inversion_lr = int(iterations), inversion_lr
        self.switch_span, self.min_checks = int(switch_span), int(min_checks)
        self.local = (local_lr, int(local_epochs), int(batch_size))
        self.seed = int(seed)
        self.net = net.copy() if net is not None else None
        self.clock = clock
        self.worker: InlineWorker | InversionWorker = (
            InversionWorker(int(queue_size), clock) if workers else InlineWorker(clock))
        self.switch_version: int | None = None
        # (client, base version, id of the update's state): a client may push twice from the
        # same version before an aggregation; the state object is the one the buffer holds.
        self._jobs: dict[tuple[str, int, int], Job] = {}
        self._recs: dict[str, Recovered] = {}
        self._estimates: OrderedDict[tuple[str, int], tuple[State, State]] = OrderedDict()
        self._checks: deque[tuple[float, float]] = deque(maxlen=self.min_checks)
        self.costs: deque[dict[str, object]] = deque(maxlen=256)
        self.totals = {"inverted": 0, "late": 0, "dropped": 0, "seconds": 0.0, "iterations": 0}

    def scale(self, staleness: int) -> float:
        return 1.0

    def alpha(self, version: int) -> float:
        """Weight of ŵ in the blend at ``version``: 1 until the switch, then down to 0."""
        if self.switch_version is None:
            return 1.0
        return min(1.0, max(0.0, 1.0 - (version - self.switch_version) / self.switch_span))

    def wants(self, staleness: int, version: int) -> bool:
        """Whether an update ``staleness`` versions old is inverted at ``version``."""
        return self.net is not None and staleness >= self.threshold and self.alpha(version) > 0

    def received(self, client: str, update: State, base: State, current: State, version: int,
                 base_version: int, n_samples: int) -> None:
        self._check_switch(client, update, base, version, base_version)
        if not self.wants(version - base_version, version):
            return
        job = Job((client, base_version, id(update)),
                  self._task(client, update, base, current, n_samples),
                  self.clock() + self.budget_s, made_at=version)
        if self.worker.submit(job):
            self._jobs[job.key] = job
        else:
            self.totals["dropped"] += 1

    def _task(self, client: str, update: State, base: State, current: State,
              n_samples: int) -> Callable[[float], object]:
        assert self.net is not None
        net, warm = self.net, self._recs.get(client)
        lr, epochs, batch = self.local
        recipe = Recipe.for_client(lr, epochs, batch, n_samples)
        size = rec_size(n_samples, self.fraction)
        seed = self.seed + len(self._recs)

        def run(deadline: float) -> object:
            rec, cost = invert(net.model, base, update, n_rec=size, recipe=recipe,
                               input_shape=net.input_shape, classes=net.classes,
                               max_iters=self.iterations, deadline=deadline, warm=warm,
                               lr=self.inversion_lr, seed=seed, clock=self.clock)
            self._recs[client] = rec
            return recompute(net.model, current, rec, recipe, update), cost

        return run

    def adjust_update(self, client: str, update: State, base: State, current: State,
                      version: int, base_version: int) -> State:
        job = self._jobs.pop((client, base_version, id(update)), None)
        if job is None:
            return update
        job.done.wait(max(0.0, job.deadline - self.clock()))
        if not job.done.is_set() or job.result is None:
            self.totals["late"] += 1
            self.costs.append({"client": client, "staleness": version - base_version,
                               "outcome": "late"})
            return update
        estimate: State
        cost: InversionCost
        estimate, cost = job.result  # type: ignore[misc]
        self._record(client, version - base_version, cost)
        self._remember(client, job.made_at, _delta(estimate, current), _delta(update, base))
        return _blend(estimate, update, self.alpha(version))

    def _record(self, client: str, staleness: int, cost: InversionCost) -> None:
        self.totals["inverted"] += 1
        self.totals["seconds"] += cost.seconds
        self.totals["iterations"] += cost.iterations
        self.costs.append({"client": client, "staleness": staleness, "outcome": "inverted",
                           "seconds": round(cost.seconds, 4), "iterations": cost.iterations,
                           "loss": round(cost.loss, 4), "warm": cost.warm})

    def _remember(self, client: str, version: int, est: State, stale: State) -> None:
        self._estimates[(client, version)] = (est, stale)
        while len(self._estimates) > 64:  # bounded: one model delta pair per entry
            self._estimates.popitem(last=False)

    def _check_switch(self, client: str, update: State, base: State, version: int,
                      base_version: int) -> None:
        kept = self._estimates.pop((client, base_version), None)
        if kept is None or self.switch_version is not None:
            return
        est, stale = kept
        true = _delta(update, base)
        self._checks.append((_l1(est, true), _l1(stale, true)))
        if len(self._checks) >= self.min_checks:
            e1 = sum(c[0] for c in self._checks) / len(self._checks)
            e2 = sum(c[1] for c in self._checks) / len(self._checks)
            if e1 > e2:
                self.switch_version = version

    def summary(self) -> dict[str, Any]:
        done = max(1, int(self.totals["inverted"]))
        return {**self.totals,
                "mean_seconds": float(self.totals["seconds"]) / done,
                "mean_iterations": float(self.totals["iterations"]) / done,
                "dropped": int(self.totals["dropped"]) + self.worker.dropped,
                "switch_version": self.switch_version, "recent": list(self.costs)[-10:]}

    def close(self) -> None:
        self.worker.close()


def _delta(a: State, b: State) -> dict[str, torch.Tensor]:
    return {n: a[n].float() - b[n].float() for n in a if a[n].is_floating_point()}


def _l1(a: State, b: State) -> float:
    return float(sum(float((a[n] - b[n]).abs().sum()) for n in a))


def _blend(estimate: State, update: State, alpha: float) -> dict[str, torch.Tensor]:
    """α·ŵ + (1−α)·w_k on floating-point entries (001 §4.3, the smooth switch)."""
    return {n: (alpha * estimate[n] + (1 - alpha) * w).to(w.dtype) if w.is_floating_point()
            else w for n, w in update.items()}


HANDLERS: dict[str, type[StalenessHandler]] = {
    NoStaleness.name: NoStaleness,
    PolynomialStaleness.name: PolynomialStaleness,
    DCASGDStaleness.name: DCASGDStaleness,
    InversionStaleness.name: InversionStaleness,
}

STALENESS_NAMES: tuple[str, ...] = tuple(HANDLERS)


def create_staleness(name: str, **params: float) -> StalenessHandler:
    """Build the staleness handler ``name`` (``none``, ``poly``, ``dcasgd``, ``inversion``)."""
    try:
        cls = HANDLERS[name]
    except KeyError:
        raise UnknownAggregator(
            f"unknown staleness handler {name!r}; choose one of {', '.join(STALENESS_NAMES)}"
        ) from None
    return cls(**params)
