"""The asynchronous aggregator core: events in, decisions out, time passed in by the driver.

An aggregator is a state machine shaped after Flower's strategy ABC. A driver (the live REST
service or the virtual-clock simulator) feeds it four kinds of event and acts on what comes back:

* ``register(client)`` — a client exists (FedBuff and PORT draw their random subsets from these);
* ``pull(t, client, n_samples)`` — the client holds at least the pull threshold of unused
  samples and asks for work (SPIN alg. 1, line 4);
* ``push(t, client, state, base_version, n_samples)`` — a trained model arrives;
* ``tick(t)`` — time has moved on; ``next_deadline()`` says when a tick next matters.

Decisions are :class:`Dispatch` (send model ``version`` to a client, who trains on it),
:class:`StopTraining` (PORT: stop now and push what you have) and :class:`Aggregated` (a new
global version exists). The cores never read a clock, never sleep and never do I/O, so a test
can script event times and check decisions, and the simulator and the service run the same code.

Aggregation of a buffer ``Q`` into the current model ``w`` (versions are integers, ``τ_k`` =
current version − the version client k trained from, SPIN's staleness):

    p_k   = ω_k / Σ_j ω_j            ω_k = |D_k| by default (FedAvg, SPIN alg. 2 line 10)
    ŵ_k   = handler.adjust(w_k, w_base_k, w)      (identity unless DC-ASGD or inversion)
    s_k   = handler.scale(τ_k) ∈ (0, 1]           (1 unless polynomial down-weighting)
    w_new = w + Σ_k p_k s_k (ŵ_k − w)

With ``s_k = 1`` and no adjustment this is exactly FedAvg of the buffered models,
``Σ_k p_k w_k``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from orchestrator.aggregation.errors import BadUpdate, UnknownVersion
from orchestrator.aggregation.fedavg import weighted_average
from orchestrator.aggregation.robust import RobustRule, aggregate
from orchestrator.aggregation.staleness import StalenessHandler, create_staleness

State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Dispatch:
    """Send global model ``version`` (``state``) to ``client``, who trains on it and pushes."""

    time: float
    client: str
    version: int
    state: State = field(repr=False)


@dataclass(frozen=True)
class StopTraining:
    """Ask ``client`` to stop local training now and push what it has (PORT)."""

    time: float
    client: str
    staleness: int


@dataclass(frozen=True)
class Aggregated:
    """A new global model: ``version`` made from the updates of ``clients`` at ``time``.

    ``staleness[i]`` is the server version the update was merged into minus the version
    ``clients[i]`` trained from; ``weights[i]`` is the normalised weight ``p_k·s_k`` it got.
    """

    time: float
    version: int
    trigger: str
    clients: tuple[str, ...]
    base_versions: tuple[int, ...]
    staleness: tuple[int, ...]
    n_samples: tuple[int, ...]
    weights: tuple[float, ...]
    # The driver's ids of the merged updates (its durable record), in ``clients``' order.
    update_ids: tuple[int, ...] = ()


Decision = Dispatch | StopTraining | Aggregated


@dataclass(frozen=True)
class Update:
    """One buffered model update."""

    time: float
    client: str
    state: State = field(repr=False)
    base_version: int
    n_samples: int
    uid: int = -1  # the driver's id of the update (its durable record); -1 when it has none


class AsyncAggregator(ABC):
    """Common bookkeeping of the asynchronous aggregators: versions, buffer, history.

    ``initial_state`` is version 0 (the deployed, pretrained model). ``k`` is the buffer size
    that triggers aggregation. ``staleness`` is a handler name (``none``, ``poly``,
    ``dcasgd``) or a :class:`StalenessHandler`. ``history_limit`` bounds how many old versions
    are kept for staleness handling; a push from a version older than that is refused with
    :class:`UnknownVersion`. ``start_time`` (seconds, the driver's clock) is when the
    aggregator starts. ``rule`` is the robust aggregation rule the buffer is combined with
    (default plain FedAvg, the formula above); any other rule combines the staleness-scaled
    updates ``s_k (ŵ_k − w)`` (``robust.aggregate``).
    """

    name: str = ""
    # Server learning rate η_g (FedOpt's server step; Reddi et al. 2021): the model moves by
    # η_g × the combined buffer's step. 1.0 = plain replacement by the aggregate (the papers'
    # servers); the simulator sets it from `aggregator.server_lr`.
    server_lr: float = 1.0

    def __init__(
        self,
        initial_state: State,
        *,
        k: int = 10,
        staleness: str | StalenessHandler = "none",
        history_limit: int = 256,
        start_time: float = 0.0,
        rule: RobustRule | None = None,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1 update per aggregation, got {k}")
        if history_limit < 1:
            raise ValueError(f"history_limit must be at least 1 version, got {history_limit}")
        self.k = k
        self.rule = rule or RobustRule()
        self.handler = create_staleness(staleness) if isinstance(staleness, str) else staleness
        self.history_limit = history_limit
        self.version = 0
        self.model: dict[str, torch.Tensor] = {
            n: t.detach().clone() for n, t in initial_state.items()
        }
        self._history: dict[int, State] = {0: self.model}
        self.queue: list[Update] = []
        self.outstanding: dict[str, int] = {}
        # Gone clients' slots that were freed (release) → the version each was sent: kept, so
        # the update such a client pushes once it is back can still be taken.
        self.released: dict[str, int] = {}
        self.clients: list[str] = []
        self._known: set[str] = set()
        self.pinned: set[int] = set()  # versions a driver keeps for pushes it will replay
        self.last_aggregation = float(start_time)
        self.rejected = 0
        self.aggregations: list[Aggregated] = []

    # -- events ------------------------------------------------------------------------------

    def register(self, client: str) -> None:
        """Make ``client`` known to the server (selection-based aggregators draw from these)."""
        if client not in self._known:
            self._known.add(client)
            self.clients.append(client)

    @abstractmethod
    def pull(self, t: float, client: str, n_samples: int) -> list[Decision]:
        """``client`` holds ``n_samples`` unused samples and asks for work at time ``t`` (s)."""

    def push(
        self,
        t: float,
        client: str,
        state: State,
        base_version: int,
        n_samples: int,
        uid: int = -1,
    ) -> list[Decision]:
        """A trained model from ``client`` arrives at time ``t`` (seconds).

        ``base_version`` is the version the client trained from; ``n_samples`` is |D_k|, the
        number of samples it trained on; ``uid`` is the driver's id of the update, handed
        back in :attr:`Aggregated.update_ids`. A bad update raises :class:`BadUpdate` or
        :class:`UnknownVersion`, is counted in ``rejected`` and never reaches the buffer.
        """
        try:
            self.check_update(state, base_version, n_samples)
        except (BadUpdate, UnknownVersion):
            self.rejected += 1
            raise
        self.register(client)
        if self.outstanding.get(client) == base_version:
            del self.outstanding[client]
        if self.released.get(client) == base_version:
            del self.released[client]
        self.queue.append(Update(t, client, state, base_version, int(n_samples), uid))
        self.handler.received(client, state, self._history[base_version], self.model,
                              self.version, base_version, int(n_samples))
        return self._after_push(t)

    def tick(self, t: float) -> list[Decision]:
        """Time ``t`` (seconds) has come; act on any timer that has expired."""
        return []

    def release(self, t: float, client: str) -> list[Decision]:
        """``client`` is gone (the orchestrator no longer sees it alive) at time ``t``: free the
        training slot it holds, so rounds go on without it. An update it pushes later from the
        model it was sent is still taken (as long as that version is held)."""
        version = self.outstanding.pop(client, None)
        if version is not None:
            self.released[client] = version
        return []

    def next_deadline(self) -> float | None:
        """The earliest time (seconds) at which ``tick`` would do something, if any."""
        return None

    def flush(self, t: float) -> list[Decision]:
        """Merge whatever the buffer holds now (the task is ending): nothing accepted is left
        unapplied. An empty buffer changes nothing."""
        return [self._aggregate(t, "final")] if self.queue else []

    # -- durable state (save at every event, restore after a restart) ------------------------

    def snapshot(self) -> dict[str, Any]:
        """The core's state besides its models and buffer, JSON-ready. Times (seconds on the
        driver's clock) are under ``times``, so a driver can carry them across clocks."""
        return {"version": self.version, "times": {"last_aggregation": self.last_aggregation},
                "outstanding": dict(self.outstanding), "clients": list(self.clients),
                "released": dict(self.released), "rejected": self.rejected}

    def restore(self, snap: dict[str, Any], models: Mapping[int, State],
                queue: list[Update]) -> None:
        """Take back a :meth:`snapshot` (times already on this driver's clock), the kept
        model versions (``models[snap["version"]]`` is the current one) and the buffer."""
        self.version = int(snap["version"])
        self.model = {n: t.detach().clone() for n, t in models[self.version].items()}
        self._history = {int(v): (self.model if int(v) == self.version else dict(m))
                         for v, m in models.items()}
        self.last_aggregation = float(snap["times"]["last_aggregation"])
        self.outstanding = {str(c): int(v) for c, v in snap.get("outstanding", {}).items()}
        self.released = {str(c): int(v) for c, v in snap.get("released", {}).items()}
        self.clients, self._known = [], set()
        for c in snap.get("clients", []):
            self.register(str(c))
        self.rejected = int(snap.get("rejected", 0))
        self.queue = list(queue)
        for u in self.queue:
            self.register(u.client)
            if u.base_version in self._history:  # a handler that works ahead starts again
                self.handler.received(u.client, u.state, self._history[u.base_version],
                                      self.model, self.version, u.base_version, u.n_samples)

    # -- hooks -------------------------------------------------------------------------------

    @abstractmethod
    def _after_push(self, t: float) -> list[Decision]:
        """Decide what follows a buffered push."""

    def _raw_weights(self, updates: list[Update]) -> list[float]:
        """ω_k before normalisation; FedAvg uses |D_k| (SPIN alg. 2, line 10)."""
        return [float(u.n_samples) for u in updates]

    # -- shared machinery --------------------------------------------------------------------

    def check_update(self, state: State, base_version: int, n_samples: int) -> None:
        """Refuse an update whose tensors or version do not fit the global model."""
        if base_version not in self._history:
            raise UnknownVersion(
                f"update trained from version {base_version}, which this server does not hold "
                f"(current version {self.version}, oldest kept {min(self._history)}); "
                "pull the current model and train again"
            )
        if not isinstance(n_samples, int) or n_samples < 1:
            raise BadUpdate(f"n_samples must be a positive integer, got {n_samples!r}")
        missing = sorted(set(self.model) - set(state))
        extra = sorted(set(state) - set(self.model))
        if missing or extra:
            raise BadUpdate(
                f"update tensors do not match the model: missing {missing}, unexpected {extra}"
            )
        for name, ref in self.model.items():
            got = state[name]
            if not isinstance(got, torch.Tensor):
                raise BadUpdate(f"tensor {name!r} is a {type(got).__name__}, not a tensor")
            if got.dtype != ref.dtype or tuple(got.shape) != tuple(ref.shape):
                raise BadUpdate(
                    f"tensor {name!r} is {got.dtype} {tuple(got.shape)}, "
                    f"the model has {ref.dtype} {tuple(ref.shape)}"
                )
            if got.is_floating_point() and not bool(torch.isfinite(got).all()):
                raise BadUpdate(f"tensor {name!r} holds NaN or infinite values")

    def _dispatch(self, t: float, client: str) -> Dispatch:
        self.register(client)
        self.outstanding[client] = self.version
        return Dispatch(t, client, self.version, self.model)

    def _aggregate(self, t: float, trigger: str) -> Aggregated:
        """Merge the whole buffer into the model, bump the version and record staleness."""
        updates, self.queue = self.queue, []
        raw = self._raw_weights(updates)
        total = math.fsum(raw)
        if total <= 0:
            # Every update was weighted out (e.g. PORT with all similarities ≤ 0): fall back
            # to plain sample counts rather than dropping the data.
            raw = [float(u.n_samples) for u in updates]
            total = math.fsum(raw)
        staleness = [self.version - u.base_version for u in updates]
        states: list[State] = [self.model]
        weights: list[float] = []
        for u, w, tau in zip(updates, raw, staleness, strict=True):
            base = self._history[u.base_version]
            states.append(self.handler.adjust_update(u.client, u.state, base, self.model,
                                                     self.version, u.base_version))
            weights.append((w / total) * self.handler.scale(tau))
        if self.rule.rule == "fedavg":
            keep_current = max(0.0, 1.0 - math.fsum(weights))
            new_model = weighted_average(states, [keep_current, *weights])
        else:
            scales = [self.handler.scale(tau) for tau in staleness]
            new_model = aggregate(self.rule, self.model, states[1:],
                                  [w / total for w in raw], scales)
        if self.server_lr != 1.0:
            new_model = _server_step(self.model, new_model, self.server_lr)
        self.version += 1
        self.model = new_model
        self._history[self.version] = new_model
        self.last_aggregation = t
        self._prune_history()
        record = Aggregated(
            time=t,
            version=self.version,
            trigger=trigger,
            clients=tuple(u.client for u in updates),
            base_versions=tuple(u.base_version for u in updates),
            staleness=tuple(staleness),
            n_samples=tuple(u.n_samples for u in updates),
            weights=tuple(weights),
            update_ids=tuple(u.uid for u in updates),
        )
        self.aggregations.append(record)
        return record

    def _prune_history(self) -> None:
        # Keep the versions someone may still push from, but never more than history_limit.
        floor = self.version - self.history_limit + 1
        needed = {self.version}
        needed.update(v for v in self.outstanding.values() if v >= floor)
        needed.update(u.base_version for u in self.queue if u.base_version >= floor)
        needed.update(v for v in self.pinned if v >= floor)
        needed.update(v for v in self.released.values() if v >= floor)
        for v in list(self._history):
            if v not in needed:
                del self._history[v]

    def base_state(self, version: int) -> State:
        """The global model of ``version``, if still kept (raises :class:`UnknownVersion`)."""
        try:
            return self._history[version]
        except KeyError:
            raise UnknownVersion(f"version {version} is not kept") from None


A = TypeVar("A", bound=type[AsyncAggregator])

AGGREGATORS: dict[str, type[AsyncAggregator]] = {}


def register_aggregator(name: str) -> Callable[[A], A]:
    """Class decorator that adds an aggregator to the registry under ``name``."""
    if not name.isidentifier():
        raise ValueError(f"aggregator name {name!r} must be an identifier")

    def deco(cls: A) -> A:
        if name in AGGREGATORS:
            raise ValueError(f"aggregator {name!r} is already registered")
        cls.name = name
        AGGREGATORS[name] = cls
        return cls

    return deco


def _server_step(current: State, aggregate: State, lr: float) -> dict[str, torch.Tensor]:
    """``current + lr · (aggregate − current)`` for floating tensors (in float64, cast back);
    other tensors (counters) take the aggregate's value."""
    out: dict[str, torch.Tensor] = {}
    for n, new in aggregate.items():
        cur = current[n]
        if new.is_floating_point():
            step = cur.double() + lr * (new.double() - cur.double())
            out[n] = step.to(new.dtype)
        else:
            out[n] = new.clone()
    return out
